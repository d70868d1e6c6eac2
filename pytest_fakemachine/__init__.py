"""pytest-fakemachine: run commands and whole tests in a User-Mode-Linux guest."""

from __future__ import annotations

from ._config import Image
from ._errors import BackendUnavailable, BootError, ConfigError, FakeMachineError, GuestTimeout
from ._machine import Machine, RunResult, in_fakemachine

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
