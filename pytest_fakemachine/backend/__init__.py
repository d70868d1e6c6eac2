"""The backends, by name: what ``--fakemachine-backend`` and ``Machine(backend=)``
resolve to. Each implements :class:`.base.Backend`; ``auto`` picks one."""

from __future__ import annotations

from .._errors import ConfigError
from .base import Backend

__all__ = ["CHOICES", "get", "leftovers"]

CHOICES = ("auto", "uml")  # what a user may ask for


def get(name: str, source: str) -> Backend:
    """The backend ``name`` stands for; ConfigError names a bad one and ``source``."""
    if name not in CHOICES:
        raise ConfigError(f"backend={name!r} from {source}: expected one of {', '.join(CHOICES)}")
    # Imported on first use: a guest that loads the plugin never needs it.
    from .uml import UmlBackend  # noqa: PLC0415

    return UmlBackend()


def leftovers(owner: int | None) -> list[int]:
    """Pids of guest processes (of every backend) that process ``owner`` started;
    ``owner=None``: those whose starting process is gone (orphans)."""
    from .uml import UmlBackend  # noqa: PLC0415
    from .watchdog import leftovers as find  # noqa: PLC0415

    return find(owner, UmlBackend.process_names)
