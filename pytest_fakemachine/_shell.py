"""``--fakemachine-shell-on-fail``, the host side: a root shell in a failed
marked test's guest, on the user's terminal, before the test's teardown.

The guest gets two serial lines on host pipes (the terminal, both ways, and a
line for window sizes); the guest-side runner opens them and starts the shell
when a setup or call phase fails, between a ``shell`` and a ``shell-end``
event. Meanwhile the host joins its terminal
(``/dev/tty``, which pytest's capture of fds 0-2 does not touch) to the guest's
with :class:`_terminal.TerminalRelay`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from . import _templates as t
from ._terminal import TerminalRelay, window_size

__all__ = ["ShellWiring", "why_off"]

_POLL_SECONDS = 0.02
PS1 = r"root@fakemachine:\w# "


def _open_terminal() -> int | None:
    """The session's controlling terminal, past pytest's capture of fds 0-2."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def why_off(config: pytest.Config) -> str | None:
    """Why the option cannot work in this session, or None when it can."""
    if hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None):
        return "pytest-xdist workers have no terminal (run with -n 0)"
    terminal = _open_terminal()
    if terminal is None:
        return "pytest has no terminal (/dev/tty)"
    os.close(terminal)
    return None


class ShellWiring:
    """The pipes of one guest's shell lines; closed with :meth:`close`."""

    def __init__(self) -> None:
        self._to_guest_r, self._to_guest_w = os.pipe()
        self._from_guest_r, self._from_guest_w = os.pipe()
        self._winch_r, self._winch_w = os.pipe()
        os.set_blocking(self._winch_w, False)  # written from a signal handler
        self._guest_ends = [self._to_guest_r, self._from_guest_w, self._winch_r]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(self._guest_ends)

    def kernel_args(self) -> list[str]:
        return [
            f"ssl1=fd:{self._to_guest_r},fd:{self._from_guest_w}",
            f"ssl4=fd:{self._winch_r},null",
        ]

    def spec(self) -> dict[str, Any]:
        """What the guest-side runner needs to start the shell."""
        return {"line": t.CLI_STDOUT_LINE, "winch": t.CLI_WINCH_LINE, "ps1": PS1,
                "term": os.environ.get("TERM", "vt220")}  # fmt: skip

    def launched(self) -> None:
        """The UML process holds its ends now: ours go."""
        for fd in self._guest_ends:
            os.close(fd)
        self._guest_ends.clear()

    def close(self) -> None:
        for fd in (*self._guest_ends, self._to_guest_w, self._from_guest_r, self._winch_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._guest_ends.clear()

    def _resize(self, rows: int, cols: int) -> None:
        # A full pipe (the guest is not reading) drops this size; the next one will do.
        with contextlib.suppress(OSError):
            os.write(self._winch_w, b"%d %d\n" % (rows, cols))

    def interact(self, nodeid: str, over: Callable[[], bool]) -> None:
        """Join the terminal to the guest's shell until ``over()`` says it has ended."""
        terminal = _open_terminal()
        if terminal is None:  # the terminal went away since the session started
            return
        try:
            banner = (
                f"\r\n>>> fakemachine: {nodeid} failed; a root shell in its guest "
                "(cwd: the test's tmp_path if it has one). Exit the shell to go on.\r\n"
            )
            os.write(terminal, banner.encode())
            self._resize(*window_size(terminal))
            with TerminalRelay(terminal, terminal, self._to_guest_w, self._from_guest_r,
                               self._resize):  # fmt: skip
                while not over():
                    time.sleep(_POLL_SECONDS)
            os.write(
                terminal, b"\r\n>>> fakemachine: the shell has ended; the session goes on.\r\n"
            )
        finally:
            os.close(terminal)
