"""Services and sandboxes in the guest: the system bus, the journal, systemd-run,
a root that can be pivoted away from (bubblewrap, unshare + pivot_root), FUSE
as a user. One guest for all; no test starts anything by hand first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

in_guest = pytest.mark.fakemachine(scope="module", timeout=120)


def need(tool: str, package: str) -> None:
    if shutil.which(tool, path="/usr/sbin:/usr/bin") is None:
        pytest.skip(f"{tool} is missing: install the {package} package")


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["timeout", "60", "sh", "-ec", command], capture_output=True, text=True, check=False
    )


@in_guest
def test_system_bus_is_socket_activated() -> None:
    need("dbus-daemon", "dbus")
    active = sh("systemctl is-active dbus.service").stdout.strip()
    assert active == "inactive"  # cheap until used
    listed = sh("busctl list --no-pager")
    assert listed.returncode == 0, listed.stderr
    assert "org.freedesktop.systemd1" in listed.stdout
    assert sh("systemctl is-active dbus.service").stdout.strip() == "active"


@in_guest
def test_the_first_unit_started_keeps_what_tmp_holds(tmp_path: Path) -> None:
    """The first unit with default dependencies starts sysinit.target and
    local-fs.target, and one with PrivateTmp= requires the mount of /tmp: on
    Debian 13 (which mounts a tmpfs on /tmp at boot) either mounted an empty
    tmpfs over /tmp then, the test's tmp_path included."""
    (tmp_path / "kept").write_text("still here")
    ran = sh("systemd-run --wait -q -p PrivateTmp=yes sh -c 'test ! -e /tmp/mine && : >/tmp/mine'")
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "kept").read_text() == "still here"
    assert not os.path.exists("/tmp/mine")  # the unit had a /tmp of its own
    assert sh("systemctl is-active local-fs.target").stdout.strip() == "active"


@in_guest
def test_systemd_run_wait_and_journal_of_the_unit() -> None:
    ran = sh("systemd-run --wait -q -u fm-run echo from-a-transient-unit")
    assert ran.returncode == 0, ran.stderr
    # The journal is written asynchronously: wait for the line, boundedly.
    for _ in range(50):
        journal = sh("journalctl --no-pager -o cat -u fm-run").stdout
        if "from-a-transient-unit" in journal:
            break
        time.sleep(0.1)
    assert "from-a-transient-unit" in journal


@in_guest
def test_logger_reaches_the_journal() -> None:
    assert sh("logger -t fmtag hello-from-logger").returncode == 0
    for _ in range(50):
        if "hello-from-logger" in sh("journalctl --no-pager -o cat -t fmtag").stdout:
            return
        time.sleep(0.1)
    pytest.fail("logger's line never reached the journal")


@in_guest
def test_bubblewrap_sandbox() -> None:
    need("bwrap", "bubblewrap")
    out = sh(
        "bwrap --ro-bind /usr /usr --symlink usr/lib64 /lib64 --symlink usr/lib /lib"
        " --symlink usr/bin /bin --proc /proc --dev /dev --tmpfs /tmp --unshare-pid"
        " sh -c 'echo $$; ls /'"
    )
    assert out.returncode == 0, out.stderr
    pid, *root = out.stdout.split()
    assert pid in {"1", "2"}  # a pid namespace of its own
    assert set(root) == {"bin", "dev", "lib", "lib64", "proc", "tmp", "usr"}


@in_guest
def test_unshare_and_pivot_root_onto_a_tmpfs() -> None:
    out = sh(
        "unshare -m sh -ec 'mkdir -p /tmp/newroot && mount -t tmpfs none /tmp/newroot"
        " && mkdir /tmp/newroot/old && cd /tmp/newroot && pivot_root . old && echo /*'"
    )
    assert (out.returncode, out.stdout) == (0, "/old\n"), out.stderr


@in_guest
def test_fuse_as_a_guest_user(tmp_path: object) -> None:
    need("fusermount3", "fuse3")
    need("squashfuse", "squashfuse")  # a FUSE file system a user can mount
    need("mksquashfs", "squashfs-tools")
    out = sh(
        "id fmfuse >/dev/null 2>&1 || useradd -m fmfuse;"
        " runuser -u fmfuse -- sh -ec 'cd; mkdir -p src mnt; echo hi >src/f;"
        " mksquashfs src sq.img -quiet -no-progress -noappend; squashfuse sq.img mnt;"
        " cat mnt/f; fusermount3 -u mnt'"
    )
    assert (out.returncode, out.stdout) == (0, "hi\n"), out.stderr


@in_guest
def test_sysinit_leaves_out_its_costly_wants_which_can_still_be_started() -> None:
    assert sh("systemctl start sysinit.target").returncode == 0
    state = sh("systemctl is-active systemd-udev-trigger.service systemd-sysctl.service")
    assert state.stdout.split() == ["inactive", "inactive"]  # no coldplug, no sysctl
    # Left out as dependencies, not masked as units.
    started = sh("systemctl start systemd-sysctl.service && systemctl is-active systemd-sysctl")
    assert (started.returncode, started.stdout) == (0, "active\n"), started.stderr
