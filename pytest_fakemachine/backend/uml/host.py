"""What a UML guest needs of the host, and what to say when the host lacks it.

The kernel to boot and its modules' mount point, the slirp helper for
``network=True``, room for the guest's memory file (and the console lines that
say it ran out), and the install command for a missing package. These are
checks and lookups on the host, made before a guest starts (and by ``doctor``);
they are apart from :mod:`._uml`, which starts, watches and kills the UML
processes themselves.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path

from ..._errors import BackendUnavailable
from .choice import recorded_choice
from .kernel import installed_kernels, modules_for

__all__ = [
    "MODULES_MOUNTPOINT",
    "SHM",
    "apt_fix",
    "default_kernel",
    "find_kernel",
    "find_slirp",
    "free_in_shm",
    "memory_dir",
    "memory_file_full",
    "module_dir",
    "modules_mountpoint",
]

_UML_PACKAGE = "user-mode-linux"
_SLIRP = "libslirp-helper"
MODULES_MOUNTPOINT = Path("/usr/lib/modules")  # where modprobe looks (/lib is usr/lib)
SHM = "/dev/shm"  # where UML keeps guest memory when TMPDIR is unset
# UML's console when guest memory outgrows the file system its file is in: the
# kernel's own fault, or init (often systemd) killed by SIGBUS, signal 7.
_MEMORY_FILE_FULL = (
    "Bus error - the host /dev/shm or /tmp mount likely just ran out of space",
    "Attempted to kill init! exitcode=0x00000007",
)


def _on_ubuntu(os_release: str = "/etc/os-release") -> bool:
    try:
        with open(os_release) as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return False
    ids = fields.get("ID", "") + " " + fields.get("ID_LIKE", "")
    return "ubuntu" in ids.replace('"', "").split()


def apt_fix(package: str) -> str:
    """The command that installs ``package``; on Ubuntu, which has no UML, what instead."""
    fix = f"sudo apt-get install {package}"
    if package in (_UML_PACKAGE, _SLIRP) and _on_ubuntu():
        fix = (
            f"Ubuntu packages no {_UML_PACKAGE} (and 24.04 no {_SLIRP}): install Debian 12's "
            "builds, as the GitHub Actions recipe in docs/ci.md of pytest-fakemachine does"
        )
    return fix


def find_kernel(kernel: str | os.PathLike[str] | None) -> Path:
    """The UML kernel to boot; :class:`BackendUnavailable` says what to install."""
    if platform.machine() != "x86_64":
        raise BackendUnavailable(
            f"User-Mode-Linux guests need an x86-64 host; this one is {platform.machine()}"
        )
    if kernel is None:
        found, _ = default_kernel()
        if found is None:
            raise BackendUnavailable(
                f"linux.uml is not on PATH; to install it: {apt_fix(_UML_PACKAGE)}"
            )
        return found
    path = Path(kernel)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise BackendUnavailable(f"UML kernel {str(path)!r} is not an executable file")
    return path


def default_kernel() -> tuple[Path | None, str]:
    """The kernel booted when none is given, and why: the measured choice
    recorded by ``scripts/setup.sh`` or the doctor while the kernels installed
    here are those it measured, else linux.uml on PATH (None: there is none)."""
    on_path = shutil.which("linux.uml")
    installed = installed_kernels(on_path)
    chosen = recorded_choice(installed)
    if chosen is not None:
        return chosen.path, chosen.why
    why = "the distribution's"
    if len(installed) > 1:
        why += (f"; no measured choice among the {len(installed)} kernels here is recorded "
                "(scripts/setup.sh or pytest --fakemachine-doctor records one)")  # fmt: skip
    return (Path(on_path) if on_path else None), why


def module_dir(kernel: Path) -> Path | None:
    """The directory holding the kernel's ``<version>/`` modules (mounted at MODULES_MOUNTPOINT).

    None: the kernel has no module support. See :func:`_kernel.modules_for`.
    """
    return modules_for(kernel, apt_fix(_UML_PACKAGE))


def modules_mountpoint() -> Path:
    """Where the guest mounts the UML kernel's modules; it must exist on the host."""
    if not MODULES_MOUNTPOINT.is_dir():
        # The guest's /usr is the host's, read-only: it cannot make the directory itself.
        raise BackendUnavailable(
            f"{MODULES_MOUNTPOINT} does not exist on this host (hosts with no kernel package, "
            "such as containers, lack it), and the guest, whose /usr is the host's, mounts the "
            f"UML kernel's modules there: create it with `sudo mkdir {MODULES_MOUNTPOINT}`"
        )
    return MODULES_MOUNTPOINT


def _free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def free_in_shm() -> int:
    """Bytes free for guest memory in /dev/shm; 0 if it is not writable."""
    return _free_bytes(SHM) if os.access(SHM, os.W_OK) else 0


def memory_file_full(console: str) -> bool:
    """Whether a dead guest's console says its memory file ran out of room."""
    return any(line in console for line in _MEMORY_FILE_FULL)


def memory_dir(memory_mib: int) -> str | None:
    """A directory for the guest's memory file when UML's own choice cannot hold it.

    UML keeps guest memory in a file in $TMPDIR, else in /dev/shm, and dies of
    SIGBUS when that file system fills up. Docker gives a container a 64 MiB
    /dev/shm, too small even to boot; then the memory goes to the temporary
    directory, if it has more room. Off tmpfs the guest's dirty pages may be
    written to disk (UML prefers tmpfs for that reason); for short guests it
    measured as fast here. None: leave UML's choice.
    """
    if os.environ.get("TMPDIR"):  # the user's choice, also for UML
        return None
    shm_free = free_in_shm()
    if shm_free >= memory_mib << 20:
        return None
    fallback = tempfile.gettempdir()
    return fallback if _free_bytes(fallback) > shm_free else None


def find_slirp() -> str:
    found = shutil.which(_SLIRP)
    if found is None:
        raise BackendUnavailable(
            f"{_SLIRP} is not on PATH, and network=True needs it; to install it: {apt_fix(_SLIRP)}"
        )
    return found
