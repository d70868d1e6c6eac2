"""``--fakemachine-shell-on-fail``, the host side: a root shell in a failed
marked test's guest, on the user's terminal, before the test's teardown.

The guest's terminal is :class:`_terminal.GuestTerminal`'s (the debugger's
too); the guest-side runner starts the shell on it when a setup or call phase
fails, between a ``shell`` and a ``shell-end`` event, and the host joins the
user's terminal to it meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from .._terminal import GuestTerminal, open_terminal
from ..guest.protocol import ShellSpec

__all__ = ["interact", "shell_spec", "why_off"]

PS1 = r"root@fakemachine:\w# "


def why_off(config: pytest.Config) -> str | None:
    """Why the option cannot work in this session, or None when it can."""
    if hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None):
        return "pytest-xdist workers have no terminal (run with -n 0)"
    terminal = open_terminal()
    if terminal is None:
        return "pytest has no terminal (/dev/tty)"
    os.close(terminal)
    return None


def shell_spec() -> ShellSpec:
    """What the guest-side runner needs to start the shell (the terminal aside)."""
    return {"ps1": PS1}


def interact(terminal: GuestTerminal, nodeid: str, over: Callable[[], bool]) -> None:
    """The user's terminal in the shell until ``over()`` says it has ended."""
    terminal.interact(
        over,
        banner=f"\r\n>>> fakemachine: {nodeid} failed; a root shell in its guest "
        "(cwd: the test's tmp_path if it has one). Exit the shell to go on.\r\n",
        farewell="\r\n>>> fakemachine: the shell has ended; the session goes on.\r\n",
    )
