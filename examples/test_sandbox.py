"""A bubblewrap sandbox: a process with a read-only /usr, its own /tmp, no
network and a pid namespace of its own.

bubblewrap pivots into a new root, which the guest allows: its / is a mount
of its own, not the initramfs itself. As root, bwrap needs no user namespace
(on a Debian 12 host, where the guest covers /proc/cpuinfo for ps, a user
namespace could not mount its own /proc: see docs/guest.md). Needs the host's
bubblewrap (an optional package of scripts/setup.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.fakemachine(scope="module")

BASE = ["bwrap", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/sbin", "/sbin", "--proc", "/proc", "--dev", "/dev",
        "--tmpfs", "/tmp", "--unshare-pid", "--unshare-net", "--unshare-ipc",
        "--unshare-uts", "--die-with-parent"]  # fmt: skip


def sandboxed(command: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is missing: install the bubblewrap package")
    return subprocess.run([*BASE, "sh", "-c", command], capture_output=True, text=True, check=False)


def test_sandbox_sees_only_what_it_was_given(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for the sandbox")
    out = sandboxed(f"ls / && cat {secret} 2>/dev/null || echo no-secret")
    assert out.stdout.split() == ["bin", "dev", "lib", "lib64", "proc", "sbin", "tmp", "usr",
                                  "no-secret"]  # fmt: skip


def test_sandbox_cannot_write_usr_and_has_no_network() -> None:
    out = sandboxed("touch /usr/x 2>&1; ls /sys/class/net 2>/dev/null; ip -o link")
    assert "Read-only file system" in out.stdout
    links = [line.split(":")[1].strip() for line in out.stdout.splitlines() if ": " in line
             and "link/" in line]  # fmt: skip
    assert links == ["lo"]


def test_sandbox_has_its_own_pids() -> None:
    out = sandboxed("echo $$; ls /proc | grep -c '^[0-9]'")
    pid, count = out.stdout.split()
    assert int(pid) <= 2
    assert int(count) <= 4  # bwrap's init, sh, ls and grep: none of the guest's
