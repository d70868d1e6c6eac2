"""What a QEMU guest needs of the host: the QEMU binary of this architecture and
a kernel an ordinary user can read, with its modules.

The kernel: the one given (``kernel=``), else the host's own
``/boot/vmlinuz-$(uname -r)`` with ``/usr/lib/modules/$(uname -r)`` where both
are readable (Debian's are; Ubuntu's vmlinuz is root's alone), else the newest
Debian generic kernel ``scripts/setup.sh`` unpacked (never installed: apt
would run update-initramfs and may change the boot entry) into the data
directory. Whether KVM really runs a guest is :mod:`.kvm`'s.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..._errors import BackendUnavailable, ConfigError

__all__ = [
    "ARCHES",
    "Arch",
    "QemuKernel",
    "arch",
    "download_dir",
    "find_kernel",
    "find_qemu",
    "is_image",
]


@dataclass(frozen=True)
class Arch:
    """What differs per architecture: the binary, the machine, the kernel package."""

    qemu: str
    machine: str
    package: str  # Debian's qemu-system package
    kernel_package: str  # Debian's generic kernel (the cloud one has no 9p)
    console: str  # the kernel's name of the first serial port


ARCHES = {
    "x86_64": Arch("qemu-system-x86_64", "q35", "qemu-system-x86", "linux-image-amd64", "ttyS0"),
    "aarch64": Arch("qemu-system-aarch64", "virt", "qemu-system-arm", "linux-image-arm64",
                    "ttyAMA0"),
}  # fmt: skip
_ELF = b"\x7fELF"
_X86_BOOT_MAGIC = (0x202, b"HdrS")  # a bzImage's setup header
_ARM64_MAGIC = (0x38, b"ARM\x64")  # an arm64 Image's header
_VERSION = re.compile(rb"(\d+\.\d+\.\d+[^\s\x00]*) \(")


def arch(machine: str | None = None) -> Arch:
    name = machine or platform.machine()
    if name not in ARCHES:
        raise BackendUnavailable(f"QEMU guests run on x86-64 and arm64 hosts; this one is {name}")
    return ARCHES[name]


def find_qemu(host: Arch) -> str:
    found = shutil.which(host.qemu)
    if found is None:
        raise BackendUnavailable(
            f"{host.qemu} is not on PATH; to install it: sudo apt-get install {host.package}"
        )
    return found


def download_dir() -> Path:
    """Where ``scripts/setup.sh`` unpacks Debian's generic kernel (``linux-VERSION/``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "pytest-fakemachine"


@dataclass(frozen=True)
class QemuKernel:
    image: Path
    version: str
    modules: Path | None  # the directory holding ``version/`` (mounted at /usr/lib/modules)


def _head(path: Path, size: int = 0x10000) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise BackendUnavailable(f"cannot read the kernel {str(path)!r}: {e.strerror}") from None


def is_image(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a bootable kernel image (a bzImage, an arm64 Image)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x400)
    except OSError:  # the backend's own check says what is wrong with it
        return False
    return _has_image_magic(head)


def _has_image_magic(head: bytes) -> bool:
    return any(head[at : at + len(magic)] == magic for at, magic in (_X86_BOOT_MAGIC, _ARM64_MAGIC))


def _version(head: bytes) -> str | None:
    found = _VERSION.search(head)
    return found.group(1).decode() if found else None


def check_image(path: Path, source: str) -> bytes:
    """The start of a bootable kernel image at ``path``; ConfigError for a UML binary."""
    head = _head(path)
    if head.startswith(_ELF):
        raise ConfigError(
            f"kernel={str(path)!r} from {source}: an ELF executable (a User-Mode-Linux kernel?), "
            "where the QEMU backend boots a kernel image (vmlinuz, a bzImage or an arm64 Image)"
        )
    if not _has_image_magic(head):
        raise ConfigError(f"kernel={str(path)!r} from {source}: not a bootable kernel image")
    return head


def _modules_beside(image: Path, version: str) -> Path | None:
    """Where an unpacked kernel package keeps the modules of ``version``."""
    root = image.parent.parent  # ROOT/boot/vmlinuz-VERSION
    for directory in (root / "usr/lib/modules", root / "lib/modules", Path("/usr/lib/modules")):
        if (directory / version / "modules.dep").is_file():
            return directory
    return None


def _given(path: Path, source: str) -> QemuKernel:
    head = check_image(path, source)
    version = _version(head) or path.name.removeprefix("vmlinuz-")
    return QemuKernel(path, version, _modules_beside(path, version))


def _unpacked() -> list[Path]:
    def version(image: Path) -> list[int]:
        words = re.split(r"[.-]", image.name.removeprefix("vmlinuz-"))
        return [int(n) if n.isdigit() else 0 for n in words]

    return sorted(download_dir().glob("linux-*/boot/vmlinuz-*"), key=version)


def find_kernel(kernel: str | os.PathLike[str] | None, source: str) -> QemuKernel:
    """The kernel a QEMU guest boots (see the module's docstring)."""
    if kernel is not None:
        return _given(Path(kernel), source)
    release = platform.release()
    own = Path(f"/boot/vmlinuz-{release}")
    modules = Path("/usr/lib/modules")
    if os.access(own, os.R_OK) and os.access(modules / release / "modules.dep", os.R_OK):
        return QemuKernel(own, release, modules)
    for image in reversed(_unpacked()):
        try:
            found = _given(image, source)
        except (ConfigError, BackendUnavailable):
            continue
        if found.modules is not None:
            return found
    why = "is not readable by this user" if own.exists() else "does not exist"
    raise BackendUnavailable(
        f"no kernel for QEMU guests: the host's {own} {why}, and scripts/setup.sh has "
        f"unpacked none into {download_dir()} (it downloads Debian's "
        f"{arch().kernel_package}; run it, or give kernel=)"
    )
