"""pytest-fakemachine: run commands and whole tests in a User-Mode-Linux guest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import Image
from ._errors import BackendUnavailable, BootError, ConfigError, FakeMachineError, GuestTimeout
from ._inguest import in_fakemachine

if TYPE_CHECKING:
    from ._machine import Machine, RunResult

__all__ = [
    "BackendUnavailable",
    "BootError",
    "ConfigError",
    "FakeMachineError",
    "GuestTimeout",
    "Image",
    "Machine",
    "RunResult",
    "in_fakemachine",
]


def __getattr__(name: str) -> Any:
    # The host-side machinery (and importlib.metadata) loads on first use: inside
    # a guest, tests import this package (for in_fakemachine) and every import
    # costs there.
    if name in ("Machine", "RunResult"):
        from . import _machine  # noqa: PLC0415

        return getattr(_machine, name)
    if name == "__version__":  # pyproject.toml's, as installed
        from importlib.metadata import version  # noqa: PLC0415

        return version("pytest-fakemachine")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
