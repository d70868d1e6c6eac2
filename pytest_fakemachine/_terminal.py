"""The terminal relay: the user's terminal joined to a tty of the guest, raw,
for everything interactive in a guest: ``pytest-fakemachine``'s root shell,
``--fakemachine-shell-on-fail``, and the debugger of marked tests (``--pdb``,
``--trace``, ``breakpoint()``), which so gets a real terminal in the guest
(readline's line editing and completion, window size).

Nothing here knows about a backend: the guest side is file descriptors (pipes
whose other ends the guest kernel holds as serial lines). Threads copy
bytes; the caller's thread keeps waiting on the guest, so signal handlers
still run.

- :class:`TerminalRelay` puts the host terminal in raw mode and joins it to a
  guest tty in both directions; window size changes go to a callback.
- :class:`GuestTerminal` is a test guest's terminal: two serial lines on host
  pipes (the terminal both ways, and window sizes as ``ROWS COLS`` lines),
  opened by the guest side (``_guest_terminal``) for the whole run, and
  joined to the session's terminal (``/dev/tty``, which pytest's capture of
  fds 0-2 does not touch) between two events of the guest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, final

from .backend.base import TERMINAL_LINE, WINCH_LINE, Layout
from .backend.lines import Wiring

if TYPE_CHECKING:
    from .guest.protocol import TerminalSpec

__all__ = [
    "GuestTerminal",
    "TerminalRelay",
    "open_terminal",
    "start_thread",
    "window_size",
    "write_all",
]

CHUNK = 1 << 16
_POLL_SECONDS = 0.02


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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


def open_terminal() -> int | None:
    """The session's controlling terminal, past pytest's capture of fds 0-2."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


class GuestTerminal:
    """One guest's terminal: two serial lines on host pipes (the terminal both
    ways, and window sizes); closed with :meth:`close`."""

    def __init__(self) -> None:
        self.wiring = Wiring()
        self._to_guest_w, self._from_guest_r = self.wiring.both_ways(TERMINAL_LINE)
        self._winch_w = self.wiring.into_guest(WINCH_LINE)
        os.set_blocking(self._winch_w, False)  # written from a signal handler

    def spec(self, layout: Layout) -> TerminalSpec:
        """What the guest side needs to open the terminal."""
        return {"line": layout.line_device(TERMINAL_LINE), "winch": layout.line_device(WINCH_LINE),
                "term": os.environ.get("TERM", "vt220")}  # fmt: skip

    def close(self) -> None:
        self.wiring.close()

    def _resize(self, rows: int, cols: int) -> None:
        # A full pipe (the guest is not reading) drops this size; the next one will do.
        with contextlib.suppress(OSError):
            os.write(self._winch_w, b"%d %d\n" % (rows, cols))

    def interact(self, over: Callable[[], bool], banner: str = "", farewell: str = "") -> None:
        """Join the session's terminal to the guest's until ``over()`` says the
        guest is done with it; ``banner`` and ``farewell`` frame the time."""
        terminal = open_terminal()
        if terminal is None:  # the terminal went away since the session started
            return
        try:
            if banner:
                os.write(terminal, banner.encode())
            self._resize(*window_size(terminal))
            with TerminalRelay(terminal, terminal, self._to_guest_w, self._from_guest_r,
                               self._resize):  # fmt: skip
                while not over():
                    time.sleep(_POLL_SECONDS)
            if farewell:
                os.write(terminal, farewell.encode())
        finally:
            os.close(terminal)
