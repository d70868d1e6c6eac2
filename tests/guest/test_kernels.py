"""Real boots of kernels other than linux.uml on PATH: their modules, their seccomp mode.

A kernel with UML's seccomp mode (Linux 6.15+) runs only where glibc is new
enough (Debian 13, Ubuntu 24.04): the seccomp tests take one from
PYTEST_FAKEMACHINE_TEST_SECCOMP_KERNEL or from where setup.sh --newer-kernel
unpacks it, and skip without one.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_fakemachine import Machine
from pytest_fakemachine.backend.uml import choice as _kernel_choice
from pytest_fakemachine.backend.uml import kernel as _kernel
from pytest_fakemachine.backend.uml.host import find_kernel
from pytest_fakemachine.backend.uml.kernel import SECCOMP_ENV, kernel_info, seccomp_used

MARKER = "fakemachine-test-marker"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def unpacked_copy(kernel: Path, modules: Path, root: Path) -> Path:
    """The kernel and its modules laid out as `dpkg -x` of its package lays them out."""
    version = kernel_info(kernel).version
    copy = root / "usr" / "bin" / "linux.uml"
    copy.parent.mkdir(parents=True)
    _link_or_copy(str(kernel.resolve()), str(copy))
    target = root / "usr" / "lib" / "uml" / "modules" / version
    shutil.copytree(modules / version, target, copy_function=_link_or_copy, symlinks=True)
    (target / MARKER).write_text("")
    return copy


def test_kernel_elsewhere_boots_with_the_modules_beside_it(tmp_path: Path) -> None:
    system = Path(shutil.which("linux.uml") or "linux.uml")
    modules = _kernel.modules_for(system)
    if modules is None:
        pytest.skip("linux.uml on PATH has no module support")
    kernel = unpacked_copy(system, modules, tmp_path / "uml")
    version = kernel_info(kernel).version
    result = Machine(kernel=kernel).run(
        f"test -e /usr/lib/modules/{version}/{MARKER} && echo beside; "
        "losetup -f >/dev/null && echo loop"  # the loop module loads from there
    )
    assert result.stdout.split() == ["beside", "loop"], result.console


def _seccomp_kernel() -> Path:
    named = os.environ.get("PYTEST_FAKEMACHINE_TEST_SECCOMP_KERNEL")
    candidates = [Path(named)] if named else []
    candidates += _kernel.installed_kernels(shutil.which("linux.uml"))
    for candidate in candidates:
        try:
            if kernel_info(candidate).seccomp:
                return candidate
        except Exception:
            continue
    pytest.skip("no UML kernel with the seccomp mode runs here (Linux 6.15+, glibc >= 2.38)")


# Runs the kernel under a seccomp filter that refuses seccomp() and
# prctl(PR_SET_SECCOMP), as a container's profile may: UML cannot install its own.
REFUSING_LAUNCHER = """\
#!{python}
# The probe takes this for a kernel with the mode: Invalid seccomp option
import ctypes, os, struct, sys
KERNEL = {kernel!r}
if sys.argv[1:2] in (["--version"], ["--showconfig"]):
    os.execv(KERNEL, [KERNEL, *sys.argv[1:]])
code = [(0x20, 0, 0, 0), (0x15, 3, 0, 317), (0x15, 0, 3, 157), (0x20, 0, 0, 16),
        (0x15, 0, 1, 22), (0x06, 0, 0, 0x00050001), (0x06, 0, 0, 0x7FFF0000)]
program = b"".join(struct.pack("HBBI", *insn) for insn in code)
buf = ctypes.create_string_buffer(program)
fprog = struct.pack("HxxxxxxQ", len(code), ctypes.addressof(buf))
fbuf = ctypes.create_string_buffer(fprog)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0) == 0, ctypes.get_errno()
os.execv(KERNEL, [KERNEL, *sys.argv[1:]])
"""


def test_seccomp_mode_is_used_where_the_host_allows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = _seccomp_kernel()
    monkeypatch.delenv(SECCOMP_ENV, raising=False)
    used = Machine(kernel=kernel).run("true", check=True)
    assert seccomp_used(used.console) is True, used.console
    monkeypatch.setenv(SECCOMP_ENV, "off")
    off = Machine(kernel=kernel).run("true", check=True)
    assert seccomp_used(off.console) is None, off.console  # UML did not even check


def test_seccomp_refused_by_the_host_falls_back_to_ptrace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = _seccomp_kernel()
    monkeypatch.delenv(SECCOMP_ENV, raising=False)
    modules = _kernel.modules_for(kernel)
    assert modules is not None
    launcher = tmp_path / "usr" / "bin" / "linux.uml"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(
        textwrap.dedent(REFUSING_LAUNCHER).format(python=sys.executable, kernel=str(kernel))
    )
    launcher.chmod(0o755)
    (tmp_path / "usr" / "lib" / "uml").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "uml" / "modules").symlink_to(modules)
    result = Machine(kernel=launcher).run("echo ran", check=True)
    assert result.stdout == "ran\n"
    assert seccomp_used(result.console) is False, result.console


def test_a_kernel_is_measured_in_the_cpu_of_a_real_guest() -> None:
    info = kernel_info(find_kernel(None))
    boot = _kernel_choice.guest_cpu(
        lambda kernel, command: Machine("uml", kernel=kernel).run(command, check=True)
    )
    (measured,) = _kernel_choice.measure([info], boot, rounds=1)
    assert measured.error is None
    # A boot, 40 program starts and a Python start: well over a tenth of a second
    # of CPU in any UML, and far from a minute on any machine that runs the suite.
    assert measured.cpu is not None and 0.1 < measured.cpu < 60, measured
