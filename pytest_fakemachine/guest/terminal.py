"""The guest side of :class:`pytest_fakemachine._terminal.GuestTerminal`: the
user's terminal as a tty of the guest (a serial line), for the debugger and
``--fakemachine-shell-on-fail``.

Standalone (standard library only): the guest runner loads it by path, and
only when the host wired the terminal (``spec["terminal"]``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import sys
import termios
import threading
from collections.abc import Callable
from typing import Any


class Terminal:
    """The terminal line, open for the whole run (a tty forgets its window
    size on its last close), with the host's sizes applied as they come."""

    def __init__(self, spec: dict[str, Any], send: Callable[..., None]) -> None:
        self.spec = spec
        self.send = send
        self.line = os.open(spec["line"], os.O_RDWR | os.O_NOCTTY)
        self._winch = os.open(spec["winch"], os.O_RDONLY | os.O_NOCTTY)
        self._saved: dict[int, int] = {}
        threading.Thread(target=self._follow_sizes, daemon=True).start()

    def _follow_sizes(self) -> None:
        with os.fdopen(self._winch, "rb", buffering=0) as sizes:
            for entry in sizes:
                rows, cols = (int(n) for n in entry.split())
                size = struct.pack("HHHH", rows, cols, 0, 0)
                with contextlib.suppress(OSError):  # hung up by a shell that ended
                    fcntl.ioctl(self.line, termios.TIOCSWINSZ, size)

    def drain(self) -> None:
        """Wait until the host has every byte written to the line."""
        with contextlib.suppress(OSError, termios.error):  # hung up
            termios.tcdrain(self.line)

    def reopen(self) -> None:
        """A fresh descriptor for the line: a shell as its session leader hangs
        it up on exit, and a hung-up descriptor reads and writes nothing."""
        line = os.open(self.spec["line"], os.O_RDWR | os.O_NOCTTY)
        os.close(self.line)
        self.line = line

    def attach(self, event: str) -> None:
        """The process's fds 0-2 on the terminal, and the host told to join it
        to the user's: pdb's sys.stdin and sys.stdout, which are on those fds,
        get a real terminal (and input() readline, which wants fds 0 and 1 ttys)."""
        if self._saved:
            return
        _flush()
        self.send(event=event)
        for fd in (0, 1, 2):
            self._saved[fd] = os.dup(fd)
            os.dup2(self.line, fd)

    def detach(self, event: str) -> None:
        """Back to the fds of before, where nobody moved them since (pytest's
        capture, resumed by pdb's continue, has put its own in place)."""
        if not self._saved:
            return
        _flush()
        self.drain()  # the host gets every byte before the end event
        line = os.fstat(self.line)
        for fd, saved in self._saved.items():
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (line.st_dev, line.st_ino):
                os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
        self.send(event=event)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
