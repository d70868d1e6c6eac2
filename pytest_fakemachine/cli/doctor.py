"""``pytest --fakemachine-doctor``: check what a guest needs and say how to fix it."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._config import DEFAULT_MEMORY_MIB
from .._errors import FakeMachineError
from .._machine import Machine
from .._session import console_tail
from ..backend.uml import host as _uml_host
from ..backend.uml.choice import ROUNDS, cached_measure, offer
from ..backend.uml.host import (
    SHM,
    apt_fix,
    find_kernel,
    free_in_shm,
    memory_dir,
    module_dir,
    modules_mountpoint,
)
from ..backend.uml.kernel import (
    SECCOMP_ENV,
    KernelInfo,
    installed_kernels,
    kernel_info,
    seccomp_setting,
    seccomp_used,
)
from ..image import cache as _cache
from ..image import initramfs as _initramfs
from ..image.initramfs import initramfs

__all__ = ["run_doctor"]

_MIN_FREE_BYTES = 512 << 20
# The test boot asks the guest what it got: the kernel, and the systemd and
# util-linux of the host's /usr, which decide how the guest mounts and boots.
_VERSIONS = "uname -r; /lib/systemd/systemd --version | head -n 1; mount --version | head -n 1"
_TEST_BOOT_SECONDS = 60.0


@dataclass(frozen=True)
class Check:
    name: str
    problem: str | None  # None: fine
    fix: str = ""
    required: bool = True


def _checks(kernel_setting: str | None, say: Callable[[str], None]) -> list[Check]:
    checks = []
    arch = platform.machine()
    checks.append(Check("x86-64 host", None if arch == "x86_64" else f"this host is {arch}",
                        "run on an x86-64 machine: UML guests exist only there"))  # fmt: skip
    try:
        kernel = find_kernel(kernel_setting)
        info = kernel_info(kernel)
        checks.append(Check(f"UML kernel ({kernel}): {info.summary()}", None))
        modules = module_dir(kernel)
        checks.append(Check(f"UML kernel modules ({modules or 'none'}"
                            + (f"/{info.version}, the kernel's version)" if modules else
                               ": the kernel has no module support)"), None))  # fmt: skip
        checks += _kernel_choice(info, say)
    except FakeMachineError as e:
        checks.append(Check("UML kernel and modules", str(e),
                            apt_fix("user-mode-linux")))  # fmt: skip
    try:
        checks.append(Check(f"mount point for the UML modules ({modules_mountpoint()})", None))
    except FakeMachineError as e:
        checks.append(Check("mount point for the UML modules", str(e),
                            f"sudo mkdir {_uml_host.MODULES_MOUNTPOINT}"))  # fmt: skip
    for tool, package, required in (("busybox", "busybox", True),
                                    ("libslirp-helper", "libslirp-helper", False)):  # fmt: skip
        found = shutil.which(tool)
        checks.append(Check(tool + ("" if required else " (for network=True)"),
                            None if found else f"{tool} is not on PATH",
                            apt_fix(package), required))  # fmt: skip
    systemd = "/lib/systemd/systemd"
    checks.append(Check("systemd", None if os.access(systemd, os.X_OK) else f"{systemd} missing",
                        "sudo apt-get install systemd"))  # fmt: skip
    checks.append(_guest_memory_check())
    tmp = shutil.disk_usage(os.environ.get("TMPDIR", "/tmp")).free
    checks.append(Check("free space for work directories",
                        None if tmp >= _MIN_FREE_BYTES else f"only {tmp >> 20} MiB free",
                        "free some space in $TMPDIR (/tmp)"))  # fmt: skip
    checks += _cache_checks()
    return checks


def _kernel_choice(info: KernelInfo, say: Callable[[str], None]) -> list[Check]:
    """What the kernel in use lacks, and, with other kernels here, which is
    fastest on this host (measured) among those that keep every fidelity row."""
    checks = []
    lacking = info.lacks(fidelity_only=True)
    if lacking:
        checks.append(Check("guest features", f"Linux {info.version} lacks "
                            + ", ".join(f.name for f in lacking)
                            + ": tests that need them fail in its guests",
                            "kernel= (or --fakemachine-kernel) a kernel that has them, such as "
                            "Debian 12's or 13's user-mode-linux", required=False))  # fmt: skip
    others = []
    for path in installed_kernels(shutil.which("linux.uml")):
        if path.resolve() == info.path:  # kernel_info() keeps the resolved path
            continue
        try:
            others.append(kernel_info(path))
        except FakeMachineError as e:  # not on offer; the message says why and what to run
            checks.append(Check(f"other UML kernel ({path})", str(e),
                                "scripts/setup.sh --newer-kernel unpacks it again",
                                required=False))  # fmt: skip
    if not others:
        return checks
    measured, when = cached_measure([info, *others])
    if when is None:
        say(f"fakemachine doctor: measured {len(others) + 1} UML kernels, {ROUNDS} guests each")
    else:
        taken = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
        say(
            f"fakemachine doctor: UML kernels as measured here on {taken} (kept in the cache "
            "directory while the kernel files stay the same)"
        )
    for m in measured:
        in_use = " (in use)" if m.info.path == info.path else ""
        cpu = f"{m.cpu:.2f} s of CPU per guest" if m.cpu is not None else "no guest ran"
        checks.append(Check(f"kernel {m.info.path}{in_use}: {m.label()}: {cpu}", m.error,
                            "see docs/troubleshooting.md", required=False))  # fmt: skip
    best, faster = offer(measured)
    current = measured[0]
    if best is not None and best is not current:
        now = f"{current.cpu:.2f} s" if current.cpu is not None else "no guest"
        why = ("keeps every guest feature, which the kernel in use does not" if lacking else
               "keeps every guest feature")  # fmt: skip
        checks.append(Check("kernel choice", f"{best.info.path} (Linux {best.info.version}) "
                            f"costs {best.cpu:.2f} s of CPU per guest here, against {now} for "
                            f"the kernel in use, and {why}",
                            f"--fakemachine-kernel={best.info.path} (or kernel=, or the "
                            "fakemachine_kernel ini value)", required=False))  # fmt: skip
    if faster is not None:
        checks.append(Check(f"fastest kernel here: {faster.info.path} ({faster.cpu:.2f} s), "
                            "for suites that need none of what it lacks", None))  # fmt: skip
    return checks


def _cache_checks() -> list[Check]:
    """Where the archive cache is, and whether the archive for this host is intact."""
    fix = "set XDG_CACHE_HOME to a directory only you can write"
    try:
        directory = _cache.cache_dir()
        path = directory / f"initramfs-{_initramfs._collect_inputs().fingerprint()}.cpio"
        before = _cache.archive_problem(path)
        built = initramfs()  # verifies it, and rebuilds it if damaged
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


def _guest_memory_check() -> Check:
    name = f"{SHM} (guest memory)"
    if os.environ.get("TMPDIR"):  # UML keeps guest memory there and never uses /dev/shm
        return Check(f"$TMPDIR (guest memory): {os.environ['TMPDIR']}", None)
    free = free_in_shm()
    if free >= DEFAULT_MEMORY_MIB << 20:
        return Check(name, None)
    writable = os.access(SHM, os.W_OK)
    moved_to = memory_dir(DEFAULT_MEMORY_MIB)
    problem = f"only {free >> 20} MiB free" if writable else "not writable"
    problem += f", less than a guest's default memory ({DEFAULT_MEMORY_MIB} MiB): "
    problem += (f"guests keep their memory in {moved_to} instead" if moved_to
                else "a guest that touches more than that dies")  # fmt: skip
    fix = "in Docker: docker run --shm-size=2g (GitLab: shm_size in the runner's config)"
    return Check(name, problem, fix, required=not writable and moved_to is None)


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
    mode = seccomp_used(result.console)
    if mode is None:
        return Check(name, None)
    if mode:
        return Check(f"{name}, guest processes under seccomp", None)
    setting = seccomp_setting()
    return Check(f"{name}, guest processes under ptrace",
                 None if setting == "off" else "the host refused UML's seccomp mode "
                 "(a container's seccomp profile?): guests run, slower",
                 f"allow seccomp() to the process, or set {SECCOMP_ENV}=off to say so",
                 required=False)  # fmt: skip


def run_doctor(say: Callable[[str], None], machine: Machine | None = None) -> int:
    """Print one line per check, then boot a guest; 0 if it booted, 1 if not.

    ``machine`` carries the session's settings (kernel, memory); default ``Machine()``.
    """
    machine = Machine() if machine is None else machine
    kernel = None if machine.kernel is None else os.fspath(machine.kernel)
    checks = _checks(kernel, say)
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
