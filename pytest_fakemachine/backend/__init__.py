"""The backends, by name: what ``--fakemachine-backend`` and ``Machine(backend=)``
resolve to. Each implements :class:`.base.Backend`; ``auto`` picks one.

``auto``: ``kvm`` where KVM really runs a guest, else ``uml``, else ``qemu``
(QEMU's emulation, slow). The choice is made once per process, and says why.
"""

from __future__ import annotations

import functools
import os

from .._errors import BackendUnavailable, ConfigError
from .base import Backend

__all__ = ["CHOICES", "NAMES", "auto_choice", "get", "leftovers"]

NAMES = ("uml", "kvm", "qemu")
CHOICES = ("auto", *NAMES)  # what a user may ask for
AUTO_ORDER = ("kvm", "uml", "qemu")


def _make(name: str) -> Backend:
    # Imported on first use: a guest that loads the plugin never needs them.
    if name == "uml":
        from .uml import UmlBackend  # noqa: PLC0415

        return UmlBackend()
    from .qemu import QemuBackend  # noqa: PLC0415

    return QemuBackend("kvm" if name == "kvm" else "tcg")


@functools.cache
def auto_choice() -> tuple[str, str]:
    """The backend ``auto`` stands for on this host, and why."""
    why: list[str] = []
    for name in AUTO_ORDER:
        try:
            _make(name).prepare(None, False, ())
        except BackendUnavailable as e:
            why.append(str(e) if str(e).startswith(f"{name}:") else f"{name}: {e}")
            continue
        return name, "; ".join(why) or f"{name} runs here"
    return "uml", "; ".join(why)  # its error says what to install


def get(name: str, source: str, kernel: str | os.PathLike[str] | None = None) -> Backend:
    """The backend ``name`` stands for; ConfigError names a bad one and ``source``.

    ``auto`` with a ``kernel`` given takes the backend of that kind of kernel:
    a QEMU guest's kernel is a bootable image, anything else is UML's.
    """
    if name not in CHOICES:
        raise ConfigError(f"backend={name!r} from {source}: expected one of {', '.join(CHOICES)}")
    if name == "auto" and kernel is not None and not _is_image(kernel):
        return _make("uml")
    if name == "auto":
        name = auto_choice()[0]
        if kernel is not None and name == "uml":  # an image: the QEMU backends'
            name = "qemu"
    return _make(name)


def _is_image(kernel: str | os.PathLike[str]) -> bool:
    from .qemu.host import is_image  # noqa: PLC0415

    return is_image(kernel)


def leftovers(owner: int | None) -> list[int]:
    """Pids of guest processes (of every backend) that process ``owner`` started;
    ``owner=None``: those whose starting process is gone (orphans)."""
    from .qemu import QemuBackend  # noqa: PLC0415
    from .uml import UmlBackend  # noqa: PLC0415
    from .watchdog import leftovers as find  # noqa: PLC0415

    return find(owner, (*UmlBackend.process_names, *QemuBackend.process_names))
