"""The User-Mode-Linux backend: a guest is a ``linux.uml`` process of the
user's, booted from the host's ``/usr`` over hostfs, with no KVM.

Everything UML lives in this folder: what a guest needs of the host
(``host``), its kernels and their measured choice (``kernel``, ``choice``),
the kernel command line and the guest's view of the host (``boot``), and the
process with its watchdog (``process``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import final

from ...image.templates import UNIT_NAME
from ..base import BootSpec, Check, Guest, Layout, Prepared
from .boot import UmlLayout, kernel_args
from .host import (
    default_kernel,
    find_kernel,
    find_slirp,
    memory_dir,
    module_dir,
    modules_mountpoint,
)
from .kernel import boot_args
from .process import UmlProcess

__all__ = ["MAX_DISKS", "UmlBackend"]

MAX_DISKS = 16  # UML's ubd driver has 16 devices


@final
class UmlBackend:
    name = "uml"
    process_names: tuple[str, ...] = ("linux.uml", "libslirp-helper")

    def prepare(
        self, kernel: str | os.PathLike[str] | None, network: bool, kernel_args: Sequence[str]
    ) -> Prepared:
        path = find_kernel(kernel)
        modules = module_dir(path)
        mountpoint = modules_mountpoint()
        if network:
            find_slirp()
        return Prepared(path, modules, mountpoint, boot_args(path, kernel_args))

    def layout(self, prepared: Prepared) -> Layout:
        return UmlLayout()

    def launch(self, prepared: Prepared, spec: BootSpec, initramfs: Path) -> Guest:
        lines = [fd for line in spec.lines for fd in line.fds]
        guest = UmlProcess(
            prepared.kernel,
            kernel_args(prepared, spec, initramfs, UNIT_NAME),
            workdir=spec.workdir,
            network=spec.network,
            console_log=spec.console_log,
            echo=spec.echo,
            cleanup=spec.cleanup,
            memory_dir=memory_dir(spec.memory_mib),
            boot_timeout=spec.boot_timeout,
            boot_timeout_name=spec.boot_timeout_name,
            started_file=spec.started_file,
            reaper=spec.reaper,
            pass_fds=lines,
            memory_mib=spec.memory_mib,
        )
        guest.start()
        return guest

    def max_disks(self) -> int:
        return MAX_DISKS

    def describe(self, kernel: str | None) -> str:
        if kernel is None:
            found, why = default_kernel()
            path = str(found or "linux.uml")
        else:
            path, why = kernel, "as given"
        try:
            version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL, check=False, timeout=30,
                                     ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError) as e:
            version = f"--version failed: {e}"
        return f"UML kernel {path} ({version or '?'}, {why})"

    def doctor(
        self, kernel: str | None, say: Callable[[str], None], boot: Callable[[Path, str], object]
    ) -> list[Check]:
        from . import doctor  # noqa: PLC0415 (the doctor's alone: it measures kernels)

        return doctor.checks(kernel, say, boot)

    def boot_check(self, name: str, console: str) -> Check:
        from . import doctor  # noqa: PLC0415

        return doctor.boot_check(name, console)
