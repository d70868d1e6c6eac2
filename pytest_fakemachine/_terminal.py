"""The terminal relay of the shells: a host terminal or host streams joined
to a guest's serial lines, raw (``pytest-fakemachine``'s streams and its
interactive shell, ``--fakemachine-shell-on-fail``).

The debugger of marked tests (``--pdb``, ``breakpoint()``) uses the simpler
line relay of :mod:`pytest_fakemachine._relay` instead: pytest's own output
already reaches the host, only the user's lines must go in.

Nothing here knows about UML: the guest side is a pair of file descriptors
(pipes whose other ends the guest kernel holds). Threads copy bytes; the
caller's thread keeps waiting on the guest, so signal handlers still run.

- :class:`TerminalRelay` puts the host terminal in raw mode and joins it to a
  guest tty in both directions; window size changes go to a callback.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import struct
import termios
import threading
import tty
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, final

from ._streams import start_thread, write_all

__all__ = ["TerminalRelay", "window_size"]

CHUNK = 1 << 16


def window_size(fd: int) -> tuple[int, int]:
    """(rows, columns) of the terminal ``fd``; (24, 80) if it has none."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return 24, 80
    return (rows or 24), (cols or 80)


@final
class TerminalRelay:
    """Joins the host terminal (``tty_in``/``tty_out``) to a guest tty.

    Use as a context manager around the guest's life: entering makes the host
    terminal raw (so ``Ctrl-C``, ``Ctrl-Z`` and every key reach the guest's
    line discipline, which does the job control) and starts the copying;
    leaving restores the terminal, whatever happened. ``resize(rows, cols)``
    is called on each SIGWINCH, in the main thread.
    """

    def __init__(
        self,
        tty_in: int,
        tty_out: int,
        to_guest: int,
        from_guest: int,
        resize: Callable[[int, int], None],
    ) -> None:
        self._in = tty_in
        self._out = tty_out
        self._to_guest = to_guest
        self._from_guest = from_guest
        self._resize = resize
        self._saved: list[Any] | None = None
        self._old_winch: object = None
        self._threads: list[threading.Thread] = []
        # Ends both copies: os.read on a tty does not return when another
        # thread closes it, and the guest may live on after the relay (a
        # shell in a test's guest, then the rest of its tests).
        self._stop_r, self._stop_w = os.pipe()

    def __enter__(self) -> TerminalRelay:
        self._saved = termios.tcgetattr(self._in)
        tty.setraw(self._in, termios.TCSANOW)
        self._old_winch = signal.signal(signal.SIGWINCH, self._on_winch)
        self._threads = [
            start_thread(lambda: self._copy(self._in, self._to_guest, drain=False), "tty-in"),
            start_thread(lambda: self._copy(self._from_guest, self._out, drain=True), "tty-out"),
        ]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.write(self._stop_w, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        signal.signal(signal.SIGWINCH, self._old_winch)  # type: ignore[arg-type]
        if self._saved is not None:
            termios.tcsetattr(self._in, termios.TCSADRAIN, self._saved)
        os.close(self._stop_w)
        os.close(self._stop_r)

    def _on_winch(self, signum: int, frame: FrameType | None) -> None:
        self._resize(*window_size(self._out))

    def _copy(self, src: int, dst: int, *, drain: bool) -> None:
        """Copy until ``src`` ends or the relay stops; with ``drain``, what
        ``src`` already holds at the stop is copied too (the guest's last words)."""
        with selectors.DefaultSelector() as sel:
            sel.register(src, selectors.EVENT_READ)
            sel.register(self._stop_r, selectors.EVENT_READ)
            try:
                while True:
                    if any(key.fd == self._stop_r for key, _ in sel.select()):
                        break
                    data = os.read(src, CHUNK)
                    if not data:
                        return
                    write_all(dst, data)
                if drain:
                    os.set_blocking(src, False)
                    try:
                        while data := os.read(src, CHUNK):
                            write_all(dst, data)
                    finally:
                        os.set_blocking(src, True)
            except OSError:  # BlockingIOError: drained; others: a side went away
                return
