"""``pytest --fakemachine-doctor``: check what a guest needs and say how to fix it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .. import backend as backends
from .._errors import FakeMachineError
from .._machine import Machine
from .._session import console_tail
from ..backend.base import Check, Layout
from ..image import cache as _cache
from ..image import initramfs as _initramfs
from ..image.initramfs import initramfs
from .args import PROG, package_version

__all__ = ["run_doctor"]

_MIN_FREE_BYTES = 512 << 20
# The test boot asks the guest what it got: the kernel, and the systemd and
# util-linux of the host's /usr, which decide how the guest mounts and boots.
_VERSIONS = "uname -r; /lib/systemd/systemd --version | head -n 1; mount --version | head -n 1"
_TEST_BOOT_SECONDS = 60.0


def _backend_checks(machine: Machine) -> list[Check]:
    """Which backend the session gets (for auto: which one, and why), and the
    ``kvm:`` line: whether KVM really runs a guest here."""
    checks = []
    if machine.backend == "auto":
        name, why = backends.auto_choice()
        checks.append(Check(f"backend auto: {name} ({why})", None))
    if backends.get(machine.backend, machine.source, machine.kernel).name != "kvm":
        # QEMU's lines too: whether backend=qemu would run here is worth a line.
        kvm = backends.get("kvm", machine.source).doctor(None, print, _boot)
        if not any(c.name.startswith("kvm") for c in kvm):
            kvm.append(Check("kvm", f"no QEMU to run a KVM guest: {kvm[-1].problem}"))
        checks += [Check(c.name, c.problem, c.fix, required=False) for c in kvm]
    return checks


def _checks(machine: Machine, say: Callable[[str], None]) -> list[Check]:
    backend = backends.get(machine.backend, machine.source, machine.kernel)
    kernel = None if machine.kernel is None else os.fspath(machine.kernel)
    checks = _backend_checks(machine)
    checks += backend.doctor(kernel, say, _boot)
    if shutil.which("busybox") is None:
        checks.append(Check("busybox", "busybox is not on PATH", "sudo apt-get install busybox"))
    else:
        checks.append(Check("busybox", None))
    systemd = "/lib/systemd/systemd"
    checks.append(Check("systemd", None if os.access(systemd, os.X_OK) else f"{systemd} missing",
                        "sudo apt-get install systemd"))  # fmt: skip
    tmp = shutil.disk_usage(os.environ.get("TMPDIR", "/tmp")).free
    checks.append(Check("free space for work directories",
                        None if tmp >= _MIN_FREE_BYTES else f"only {tmp >> 20} MiB free",
                        "free some space in $TMPDIR (/tmp)"))  # fmt: skip
    try:  # the initramfs is the backend's kernel's: where there is none, its lines said why
        prepared = backend.prepare(machine.kernel, False, ())
    except FakeMachineError:
        return checks
    checks += _cache_checks(backend.layout(prepared))
    return checks


def _boot(kernel: Path, command: str) -> object:
    """Run ``command`` in a guest booted from ``kernel`` (the kernels' measurement)."""
    return Machine("uml", kernel=kernel, timeout=_TEST_BOOT_SECONDS * 2).run(command, check=True)


def _cache_checks(layout: Layout) -> list[Check]:
    """Where the archive cache is, and whether the archive for this host is intact."""
    fix = "set XDG_CACHE_HOME to a directory only you can write"
    try:
        directory = _cache.cache_dir()
        path = directory / f"initramfs-{_initramfs._collect_inputs(layout).fingerprint()}.cpio"
        before = _cache.archive_problem(path)
        built = initramfs(layout)  # verifies it, and rebuilds it if damaged
    except (FakeMachineError, OSError) as e:
        return [Check("initramfs cache", str(e), fix)]
    checks = []
    note = _cache.cache_note()
    if note is not None:
        checks.append(Check("initramfs cache directory", note, fix, required=False))
    if before in (None, "missing", _cache.NO_RECORD):
        checks.append(Check(f"initramfs ({built}, {'checked' if before is None else 'built'})",
                            None))  # fmt: skip
    else:
        checks.append(Check(f"initramfs ({built})", f"it {before}; rebuilt it",
                            "nothing more: the new one is checked", required=False))  # fmt: skip
    return checks


def _test_boot(machine: Machine) -> Check:
    """Boot a guest for real: every check above can pass while no guest boots."""
    if machine.timeout is None:
        machine.timeout = _TEST_BOOT_SECONDS
    try:
        result = machine.run(_VERSIONS)
    except FakeMachineError as e:
        return Check("test boot", f"{type(e).__name__}: {e}",
                     "see the guest's console above and docs/troubleshooting.md")  # fmt: skip
    if result.returncode != 0:
        return Check("test boot", f"the guest booted, but `{_VERSIONS}` exited with "
                     f"{result.returncode}: {result.stderr.strip()}\nlast console lines:\n"
                     f"{console_tail(result.console)}",
                     "see docs/troubleshooting.md")  # fmt: skip
    kernel, systemd, mount = [*result.stdout.splitlines(), "?", "?", "?"][:3]
    mount = mount.split(" (")[0].removeprefix("mount from ")  # "util-linux 2.38.1"
    name = f"test boot: kernel {kernel}, {systemd}, {mount}"
    backend = backends.get(machine.backend, machine.source, machine.kernel)
    return backend.boot_check(name, result.console)


def run_doctor(say: Callable[[str], None], machine: Machine | None = None) -> int:
    """Print one line per check, then boot a guest; 0 if it booted, 1 if not.

    ``machine`` carries the session's settings (kernel, memory); default ``Machine()``.
    """
    machine = Machine() if machine is None else machine
    say(f"{PROG} {package_version()}")
    checks = _checks(machine, say)
    failed = any(check.required and check.problem is not None for check in checks)
    if not failed:  # with something required missing, the boot would only fail again
        checks.append(_test_boot(machine))
    for check in checks:
        if check.problem is None:
            say(f"ok      {check.name}")
        else:
            failed = failed or check.required
            say(f"{'MISSING' if check.required else 'warning'} {check.name}: {check.problem}")
            say(f"        fix: {check.fix}")
    say("fakemachine doctor: " + ("a guest cannot boot here" if failed else "guests can boot here"))
    return 1 if failed else 0
