"""The QEMU backends: ``kvm`` (QEMU with KVM, where it really runs a guest) and
``qemu`` (QEMU's own emulation, TCG, as Debian fakemachine's ``-b qemu``).

One implementation, two names. The guest is the one UML boots (the same
initramfs, /etc, units, job and runner), over QEMU's devices: the host's
directories over 9p, disks as virtio disks, the serial lines as virtio
consoles, the network as QEMU's user networking (the guest is 10.0.2.15, the
host's loopback 10.0.2.2). What it needs of the host is :mod:`.host`'s, the
KVM probe :mod:`.kvm`'s, the command line :mod:`.boot`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import final

from ..._errors import BackendUnavailable
from ...image.templates import UNIT_NAME
from ..base import BootSpec, Check, Guest, Layout, Prepared
from ..process import GuestProcess
from .boot import QemuLayout, qemu_args, write_lines
from .host import arch, find_kernel, find_qemu
from .kvm import kvm_problem

__all__ = ["MAX_DISKS", "QemuBackend"]

MAX_DISKS = 26  # vda to vdz
_MODULES_MOUNTPOINT = Path("/usr/lib/modules")


@final
class QemuBackend:
    """``kvm`` (``accel="kvm"``) or ``qemu`` (``accel="tcg"``)."""

    process_names: tuple[str, ...] = ("qemu-system-x86", "qemu-system-aarc")  # comm: 15 bytes

    def __init__(self, accel: str) -> None:
        self.accel = accel
        self.name = "kvm" if accel == "kvm" else "qemu"

    def prepare(
        self, kernel: str | os.PathLike[str] | None, network: bool, kernel_args: Sequence[str]
    ) -> Prepared:
        try:  # the message names the backend: auto tries several
            host = arch()
            qemu = find_qemu(host)
            found = find_kernel(kernel, f"backend={self.name}")
            problem = kvm_problem(qemu, host, found.image) if self.accel == "kvm" else None
        except BackendUnavailable as e:
            raise BackendUnavailable(f"{self.name}: {e}") from None
        if problem is not None:
            raise BackendUnavailable(f"kvm: {problem}")
        # The host's own modules are the guest's already (its /usr is the host's).
        modules = None if found.modules == _MODULES_MOUNTPOINT else found.modules
        return Prepared(found.image, modules, _MODULES_MOUNTPOINT, (), found.version,
                        found.modules)  # fmt: skip

    def layout(self, prepared: Prepared) -> Layout:
        return QemuLayout(prepared.all_modules, prepared.version)

    def launch(self, prepared: Prepared, spec: BootSpec, initramfs: Path) -> Guest:
        host = arch()
        # Not quiet: the console (RunResult.console, a BootError's tail,
        # --fakemachine-show-boot) has the kernel's and systemd's lines, as on
        # UML; what that costs a boot under emulation was lost in the noise.
        append = ["panic=-1", "rootfstype=tmpfs", f"fakemachine.work={spec.workdir}",
                  f"FAKEMACHINE_WORK={spec.workdir}", f"systemd.unit={UNIT_NAME}",
                  *spec.kernel_args]  # fmt: skip
        write_lines(spec.workdir, spec.lines)
        guest = GuestProcess(
            Path(find_qemu(host)),
            qemu_args(host, self.accel, prepared, spec, initramfs, append),
            workdir=spec.workdir,
            console_log=spec.console_log,
            echo=spec.echo,
            cleanup=spec.cleanup,
            boot_timeout=spec.boot_timeout,
            boot_timeout_name=spec.boot_timeout_name,
            started_file=spec.started_file,
            reaper=spec.reaper,
            pass_fds=[fd for line in spec.lines for fd in line.fds],
            what=f"the QEMU process ({host.qemu})",
        )
        guest.start()
        return guest

    def max_disks(self) -> int:
        return MAX_DISKS

    def describe(self, kernel: str | None) -> str:
        try:
            found = find_kernel(kernel, f"backend={self.name}")
        except Exception as e:  # the header reports, never fails
            return f"QEMU ({self.accel}), no kernel: {e}"
        return f"QEMU ({self.accel}), kernel {found.image} (Linux {found.version})"

    def doctor(
        self, kernel: str | None, say: Callable[[str], None], boot: Callable[[Path, str], object]
    ) -> list[Check]:
        from .doctor import checks  # noqa: PLC0415

        return checks(self.name, self.accel, kernel)

    def boot_check(self, name: str, console: str) -> Check:
        return Check(name, None)
