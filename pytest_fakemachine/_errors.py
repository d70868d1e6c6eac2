"""The exceptions of pytest-fakemachine; all derive from :class:`FakeMachineError`."""

from __future__ import annotations

from typing import final

__all__ = [
    "BackendUnavailable",
    "BootError",
    "ConfigError",
    "FakeMachineError",
    "GuestTimeout",
]


class FakeMachineError(Exception):
    """Base class of every error raised by pytest-fakemachine."""


@final
class ConfigError(FakeMachineError, ValueError):
    """Bad input: raised before any guest starts, naming the value and its source."""


@final
class BackendUnavailable(FakeMachineError):
    """The backend cannot run on this host; the message says what to install."""


@final
class BootError(FakeMachineError):
    """The guest died or never reached the command; the message ends with the console tail."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console


@final
class GuestTimeout(FakeMachineError, TimeoutError):
    """The time limit elapsed; the guest was killed and nothing is left running."""

    def __init__(self, message: str, timeout: float, console: str = "") -> None:
        super().__init__(message)
        self.timeout = timeout
        self.console = console
