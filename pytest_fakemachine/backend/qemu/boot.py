"""A QEMU guest's boot: how it reaches the host (9p shares, virtio disks,
virtio consoles for the serial lines) and QEMU's command line.

The kernel's drivers for those are modules in Debian's generic kernel: the
initramfs carries them (and what they depend on, by the kernel's
``modules.dep``), and the init loads them before it mounts anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import final

from ..base import BootSpec, Line, Prepared, Share
from .host import Arch

__all__ = ["EARLY_MODULES", "QemuLayout", "early_modules", "qemu_args", "share_tag", "write_lines"]

# Loaded by the init, with what they need: the shares (9p over virtio), the
# disks, the serial lines (virtio consoles) and the network card.
EARLY_MODULES = ("9p", "9pnet_virtio", "virtio_pci", "virtio_blk", "virtio_console", "virtio_net",
                 "ext4")  # fmt: skip
_9P = "trans=virtio,version=9p2000.L,msize=262144"
WORK_TAG = "fmwork"


def share_tag(host: str) -> str:
    """The 9p mount tag of a host directory (at most 31 bytes)."""
    return "fm" + hashlib.sha256(host.encode()).hexdigest()[:24]


def _dependencies(modules: Path, version: str) -> dict[str, list[str]]:
    """modules.dep of ``version``: a module's path -> the paths it needs, in load order."""
    deps: dict[str, list[str]] = {}
    for line in (modules / version / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = list(reversed(needs.split()))
    return deps


def early_modules(modules: Path, version: str, names: Sequence[str] = EARLY_MODULES) -> list[str]:
    """The module files (relative to ``modules/version``) the init loads, in order.
    A name the kernel has built in (no file) needs nothing."""
    deps = _dependencies(modules, version)
    by_name = {Path(path).name.split(".ko")[0].replace("-", "_"): path for path in deps}
    order: list[str] = []

    def add(path: str) -> None:
        for need in deps.get(path, []):
            add(need)
        if path not in order:
            order.append(path)

    for name in names:
        if name in by_name:
            add(by_name[name])
    return order


@final
class QemuLayout:
    """9p shares, vdX disks, hvcN consoles for serial lines, eth0."""

    def __init__(self, modules: Path | None, version: str) -> None:
        self._modules = modules
        self._version = version

    def share(self, host: str, guest: str, *, read_only: bool) -> Share:
        return Share(share_tag(host), "9p", _9P + (",ro" if read_only else ""))

    def work_mount(self) -> str:
        return f"{WORK_TAG} /run/fakemachine 9p {_9P} 0 0"

    def disk(self, index: int) -> str:
        return f"vd{chr(ord('a') + index)}"

    def line_device(self, number: int) -> str:
        return f"/dev/hvc{number - 1}"  # see _line_args

    def network_device(self) -> str:
        return "eth0"

    def early_files(self) -> list[tuple[str, Path]]:
        """The initramfs' module files: (archive path, host path)."""
        if self._modules is None:
            return []
        root = self._modules / self._version
        return [(f"fakemachine-modules/{Path(rel).name}", root / rel)
                for rel in early_modules(self._modules, self._version)]  # fmt: skip

    def early_init(self) -> str:
        return "".join(f"/bin/busybox insmod /{name}\n" for name, _ in self.early_files())


LINES = 6  # serial lines 1 to 6: /dev/hvc0 to /dev/hvc5, each present, wired or not


def write_lines(workdir: Path, lines: Sequence[Line]) -> None:
    """QEMU's pipe chardev opens PATH.in and PATH.out: links in the work
    directory to the host descriptors the QEMU process inherits (/dev/fd/N
    is the process's own), or to /dev/null."""
    for line in lines:
        ends = {".in": line.to_guest, ".out": line.from_guest}
        for suffix, fd in ends.items():
            (workdir / f"line{line.number}{suffix}").symlink_to(
                "/dev/null" if fd is None else f"/dev/fd/{fd}"
            )


def _line_args(workdir: Path, lines: Sequence[Line]) -> list[str]:
    """Every serial line as a virtio console, in order, so that line N is /dev/hvc{N-1}."""
    wired = {line.number for line in lines}
    args = []
    for number in range(1, LINES + 1):
        chardev = (f"pipe,id=line{number},path={workdir}/line{number}" if number in wired
                   else f"null,id=line{number}")  # fmt: skip
        args += ["-chardev", chardev, "-device", f"virtconsole,chardev=line{number},nr={number}"]
    return args


def qemu_args(  # noqa: PLR0917 (what a boot is made of)
    host: Arch,
    accel: str,
    prepared: Prepared,
    spec: BootSpec,
    initramfs: Path,
    append: Sequence[str],
) -> list[str]:
    """QEMU's arguments (after the binary) for one boot."""
    args = [
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", f"{host.machine},accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(spec.cpus), "-m", f"{spec.memory_mib}M",
        "-kernel", str(prepared.kernel), "-initrd", str(initramfs),
        "-append", " ".join([f"console={host.console}", *append]),
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-device", "virtio-serial-pci",
        "-virtfs", f"local,path={spec.workdir},mount_tag={WORK_TAG},security_model=none",
    ]  # fmt: skip
    args += _line_args(spec.workdir, spec.lines)
    args += ["-virtfs", f"local,path=/usr,mount_tag={share_tag('/usr')},security_model=none,"
             "readonly=on"]  # fmt: skip
    for share, read_only in spec.shares:
        args += ["-virtfs", f"local,path={share},mount_tag={share_tag(share)},security_model=none"
                 + (",readonly=on" if read_only else "")]  # fmt: skip
    for disk in spec.disks:
        args += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
    if spec.network:
        args += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    return args
