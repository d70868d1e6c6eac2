"""The guest's system (_guest_system): its /etc from the host's, without secrets.

The unit tests check what is copied; the marked tests, which share one guest,
check that real tools work there as on a booted Debian system.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pytest_fakemachine import Machine

in_guest = pytest.mark.fakemachine(scope="module")


def need(tool: str, package: str) -> str:
    found = shutil.which(tool, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.skip(f"{tool} is missing: install the {package} package")
    return found


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-ec", command], capture_output=True, text=True, check=False)


def test_guest_etc_is_the_hosts_writable_and_never_written_back(fakemachine: Machine) -> None:
    result = fakemachine.run(
        "cat /etc/nsswitch.conf && echo guest >>/etc/login.defs && touch /etc/fakemachine-test"
        " && head -1 /etc/shadow && ls /etc/sudoers",
    )
    host = Path("/etc/nsswitch.conf").read_text()
    assert result.stdout.startswith(host)
    assert "root:!*:" in result.stdout
    assert "/etc/sudoers': No such file" in result.stderr
    assert not Path("/etc/fakemachine-test").exists()
    assert not Path("/etc/login.defs").read_text().endswith("guest\n")


def test_a_pipeline_ends_quietly_as_in_a_login_shell(fakemachine: Machine) -> None:
    # With SIGPIPE ignored (systemd's default for a service), `yes` gets EPIPE
    # and complains; in a booted system's shell it dies of SIGPIPE, silently.
    result = fakemachine.run("yes | head -n 1")
    assert (result.returncode, result.stdout, result.stderr) == (0, "y\n", "")


# One guest for the rows below.


@in_guest
def test_guest_finds_libraries_like_the_host() -> None:
    assert ctypes.util.find_library("c") is not None
    assert Path("/etc/ld.so.cache").exists()


@in_guest
def test_guest_has_the_fhs_tree() -> None:
    assert os.readlink("/var/run") == "../run"
    assert os.path.realpath("/var/lock") == "/run/lock"
    for path in ("/var/log", "/var/lib", "/var/tmp", "/home", "/srv", "/opt", "/media"):
        assert os.path.isdir(path), path
    os.makedirs("/var/run/netns", exist_ok=True)  # where `ip netns` keeps its names
    assert sh("ip netns add fm && ip netns list").stdout.startswith("fm")


@in_guest
def test_guest_users_su_runuser_and_useradd() -> None:
    users = int(_getent("group", "users").split(":")[2])
    created = sh("useradd -m -G users fmuser && id -g fmuser && id -G fmuser")
    assert created.returncode == 0, created.stderr
    gid, groups = created.stdout.split("\n")[:2]
    assert gid != str(users)  # a group of its own (login.defs USERGROUPS_ENAB), not 100
    assert str(users) in groups.split()
    su = sh("su fmuser -c 'id -un'")
    assert (su.returncode, su.stdout) == (0, "fmuser\n"), su.stderr
    runuser = sh("runuser -u fmuser -- id -un")
    assert (runuser.returncode, runuser.stdout) == (0, "fmuser\n"), runuser.stderr


@in_guest
def test_guest_root_is_a_named_tmpfs_not_the_initramfs_rootfs() -> None:
    # Code that looks up the root file system's source and type must get what a
    # booted system with a tmpfs root gives, never the kernel's "rootfs".
    shown = sh("findmnt -n -o SOURCE,FSTYPE / && df --output=source / && stat -f -c %T /")
    assert shown.stdout.split() == ["tmpfs", "tmpfs", "Filesystem", "tmpfs", "tmpfs"], shown
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    roots = [line.split() for line in mountinfo if line.split()[4] == "/"]
    assert len(roots) == 1, roots
    fields = roots[0]
    assert fields[3] == "/"  # the whole file system, not a bind of part of one
    assert fields[fields.index("-") + 1 : fields.index("-") + 3] == ["tmpfs", "tmpfs"]
    assert stat.S_IMODE(os.stat("/").st_mode) == 0o755  # as a booted root, not 1777


@in_guest
def test_guest_ps_and_hostname() -> None:
    assert sh("hostname -f").stdout == "fakemachine\n"
    if shutil.which("ps") is None:
        pytest.skip("ps is not installed (procps)")
    ps = sh("ps -ef && ps aux")
    assert ps.returncode == 0, ps.stderr
    assert "/lib/systemd/systemd" in ps.stdout


@in_guest
def test_guest_static_nodes_load_modules_on_first_open(tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat("/dev/fuse").st_mode) == 0o666
    assert os.path.exists("/dev/net/tun")
    image = tmp_path / "fs.img"
    fmt = sh(
        f"truncate -s 8M {image} && mkfs.ext4 -q {image} && mkdir -p /mnt/loop"
        f" && mount -o loop {image} /mnt/loop && touch /mnt/loop/x && umount /mnt/loop"
    )
    assert fmt.returncode == 0, fmt.stderr
    assert sh("losetup -f").stdout.startswith("/dev/loop")
    # A tun device needs the tun module, loaded by opening /dev/net/tun.
    assert sh("ip tuntap add dev fmtun mode tun && ip link show fmtun").returncode == 0


@in_guest
def test_guest_squashfs_file_mount(tmp_path: Path) -> None:
    need("mksquashfs", "squashfs-tools")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_text("hi")
    made = sh(
        f"mksquashfs {src} {tmp_path}/sq.img -quiet -noappend -no-progress && mkdir -p /mnt/sq"
        f" && mount {tmp_path}/sq.img /mnt/sq && cat /mnt/sq/hello && umount /mnt/sq"
    )
    assert (made.returncode, made.stdout) == (0, "hi"), made.stderr


@in_guest
def test_guest_iptables_is_legacy() -> None:
    need("iptables-legacy", "iptables")
    version = sh("iptables --version && ip6tables --version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.count("(legacy)") == 2
    assert sh("iptables -A INPUT -p tcp --dport 9 -j DROP && iptables -S INPUT").returncode == 0


@in_guest
def test_guest_cpuinfo_is_a_one_socket_machine_with_one_core_per_cpu() -> None:
    from pytest_fakemachine.image.system import procps_needs_core_id  # noqa: PLC0415

    if not procps_needs_core_id():
        pytest.skip("the host's procps needs no copy of /proc/cpuinfo: the guest's is UML's own")
    blocks = [block for block in Path("/proc/cpuinfo").read_text().split("\n\n") if block.strip()]
    cpus = [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":")
                 for line in block.splitlines())) for block in blocks]  # fmt: skip
    count = str(len(cpus))
    assert len(cpus) == os.cpu_count() == int(sh("nproc").stdout)
    for number, cpu in enumerate(cpus):
        assert cpu["processor"] == str(number)
        assert (cpu["physical id"], cpu["siblings"], cpu["core id"], cpu["cpu cores"]) == (
            "0",
            count,
            str(number),
            count,
        )
        assert cpu["vendor_id"] == "User Mode Linux"  # what systemd-detect-virt reads
    assert sh("systemd-detect-virt").stdout == "uml\n"
    if shutil.which("lscpu"):
        lscpu = sh("lscpu").stdout
        assert re.search(r"^Socket\(s\):\s+1$", lscpu, re.MULTILINE), lscpu
        assert re.search(rf"^Core\(s\) per socket:\s+{count}$", lscpu, re.MULTILINE), lscpu


def _getent(database: str, key: str) -> str:
    return subprocess.run(
        ["getent", database, key], capture_output=True, text=True, check=True
    ).stdout.strip()
