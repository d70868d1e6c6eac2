"""The doctor's checks of a UML host: the kernel and its modules, the kernels
on offer (measured), room for the guests' memory, and what a test boot says
of UML's seccomp mode."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable

from ..._config import DEFAULT_MEMORY_MIB
from ..._errors import FakeMachineError
from ..base import Check
from . import host as _uml_host
from .choice import ROUNDS, Boot, cached_measure, guest_cpu, offer, record_choice
from .host import SHM, apt_fix, find_kernel, free_in_shm, memory_dir, module_dir, modules_mountpoint
from .kernel import (
    SECCOMP_ENV,
    KernelInfo,
    installed_kernels,
    kernel_info,
    seccomp_setting,
    seccomp_used,
)

__all__ = ["boot_check", "checks"]


def checks(kernel_setting: str | None, say: Callable[[str], None], boot: Boot) -> list[Check]:
    """What a UML guest needs of this host, one check a line."""
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
        checks += _kernel_choice(info, kernel_setting is not None, say, boot)
    except FakeMachineError as e:
        checks.append(Check("UML kernel and modules", str(e),
                            apt_fix("user-mode-linux")))  # fmt: skip
    try:
        checks.append(Check(f"mount point for the UML modules ({modules_mountpoint()})", None))
    except FakeMachineError as e:
        checks.append(Check("mount point for the UML modules", str(e),
                            f"sudo mkdir {_uml_host.MODULES_MOUNTPOINT}"))  # fmt: skip
    found = shutil.which("libslirp-helper")
    checks.append(Check("libslirp-helper (for network=True)",
                        None if found else "libslirp-helper is not on PATH",
                        apt_fix("libslirp-helper"), required=False))  # fmt: skip
    checks.append(_guest_memory_check())
    return checks


def _kernel_choice(
    info: KernelInfo, given: bool, say: Callable[[str], None], boot: Boot
) -> list[Check]:
    """What the kernel in use lacks, and, with more than one kernel installed, which
    is fastest on this host (measured) among those that keep every fidelity row:
    recorded as the default kernel (a ``given`` kernel still decides where given)."""
    checks = []
    lacking = info.lacks(fidelity_only=True)
    if lacking:
        checks.append(Check("guest features", f"Linux {info.version} lacks "
                            + ", ".join(f.name for f in lacking)
                            + ": tests that need them fail in its guests",
                            "kernel= (or --fakemachine-kernel) a kernel that has them, such as "
                            "Debian 12's or 13's user-mode-linux", required=False))  # fmt: skip
    kernels = []
    installed = installed_kernels(shutil.which("linux.uml"))
    for path in installed:
        try:
            kernels.append(kernel_info(path))
        except FakeMachineError as e:  # not on offer; the message says why and what to run
            checks.append(Check(f"other UML kernel ({path})", str(e),
                                "scripts/setup.sh --newer-kernel unpacks it again",
                                required=False))  # fmt: skip
    if len(kernels) < 2:
        return checks
    measured, when = cached_measure(kernels, guest_cpu(boot))
    if when is None:
        say(f"fakemachine doctor: measured {len(kernels)} UML kernels, {ROUNDS} guests each")
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
    if best is not None:
        record_choice(best, measured, installed)
        checks.append(
            Check(
                f"default kernel: {best.info.path} (Linux {best.info.version}, "
                f"{best.cpu:.2f} s of CPU per guest), the fastest here that keeps "
                "every guest feature; recorded in the cache directory",
                None,
            )
        )
    if given and best is not None and best.info.path != info.path:
        checks.append(Check("kernel choice", f"the kernel given ({info.path}) is not the "
                            f"measured choice, {best.info.path}",
                            "leave --fakemachine-kernel (kernel=, fakemachine_kernel) unset "
                            "to boot the measured choice", required=False))  # fmt: skip
    if faster is not None:
        checks.append(Check(f"fastest kernel here: {faster.info.path} ({faster.cpu:.2f} s), "
                            "for suites that need none of what it lacks", None))  # fmt: skip
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


def boot_check(name: str, console: str) -> Check:
    """The test boot's line: ``name``, and whether guest processes ran under seccomp."""
    mode = seccomp_used(console)
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
