"""The command line's streams, host side: the guest's stdout and stderr out,
and piped stdin in (``pytest-fakemachine`` with a command, or with no command
and stdin not a terminal).

Nothing here knows about a backend: the guest side is file descriptors (pipes
whose other ends the guest kernel holds as serial lines) and the work
directory the guest shares. Threads copy; the caller's thread waits on the guest.

- :func:`copy_out` copies guest output to a host descriptor as it arrives.
- :func:`spool_stdin` sends a byte stream to the guest as chunk files in the
  spool directory (a shared directory moves megabytes per second; a serial line moves a
  byte per interrupt, well under one) and, for each, its length as a line on
  a serial line, ``0`` at the end: the guest is woken per chunk, not polled,
  and a tty can carry no end of file. The guest (``_templates.CLI_STDIN``)
  copies chunk N to the command's stdin and truncates it; the host then
  deletes it. What the host's stdin holds goes out at once (a line as it is
  typed or written); what comes while the guest is busy joins the next chunk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .._terminal import write_all

__all__ = ["CHUNK_MAX", "IN_FLIGHT", "copy_out", "spool_stdin"]

READ_SIZE = 1 << 16
CHUNK_MAX = 4 << 20  # one guest `cat` (~20 ms to start) per chunk
IN_FLIGHT = 2  # chunks written, not yet consumed: bounds the host disk the spool takes
_POLL_SECONDS = 0.002


def copy_out(src: int, dst: int, on_broken: Callable[[], None] = lambda: None) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends; a ``dst`` that went away (a
    closed pipe) is skipped, and ``src`` is still drained so the guest never
    blocks on it. ``on_broken()`` is called once, when ``dst`` goes away: the
    caller tells the guest's writer, which a serial line cannot (a tty has no
    broken pipe)."""
    broken = False
    while True:
        try:
            data = os.read(src, READ_SIZE)
        except OSError:
            return
        if not data:
            return
        if broken:
            continue
        try:
            write_all(dst, data)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EBADF, errno.EINVAL):
                raise
            broken = True
            on_broken()


class _Source:
    """The host's stdin, read in batches."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.ended = False

    def gather(self, timeout: float | None) -> None:
        """Add what arrives within ``timeout`` (None: the first bytes, however
        long they take) and what follows at once to the buffer, up to CHUNK_MAX."""
        while not self.ended and len(self.buffer) < CHUNK_MAX:
            if not select.select([self.fd], [], [], timeout)[0]:
                return
            data = os.read(self.fd, min(READ_SIZE, CHUNK_MAX - len(self.buffer)))
            if not data:
                self.ended = True
            self.buffer += data
            timeout = 0

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def spool_stdin(
    src: int,
    spool: Path,
    line: int,
    ready: Callable[[], bool],
    gone: Callable[[], bool] = lambda: False,
) -> None:
    """Send ``src`` to the guest through ``spool`` (chunk files ``1``, ``2``...)
    and ``line`` (their lengths), once ``ready()`` says the guest reads.

    Lines written before the guest opened its tty would wait unnoticed in the
    pipe (the guest kernel is told of new data, not of old). ``gone()`` ends
    every wait when the guest is over. At most :data:`IN_FLIGHT` chunks wait
    for the guest: a command that reads slowly slows the host's reading.
    """
    while not ready():
        if gone():
            return
        time.sleep(_POLL_SECONDS * 5)
    source = _Source(src)
    waiting: deque[Path] = deque()
    number = 0
    try:
        while True:
            source.gather(timeout=None)
            while _busy(waiting):  # meanwhile what comes joins this chunk
                if gone():
                    return
                source.gather(timeout=_POLL_SECONDS)
            if source.buffer:
                number += 1
                chunk = spool / str(number)
                chunk.write_bytes(source.take())
                waiting.append(chunk)
                write_all(line, b"%d\n" % chunk.stat().st_size)
            if source.ended and not source.buffer:
                write_all(line, b"0\n")
                return
    except OSError:  # the guest is gone (EPIPE) or our stdin is unreadable
        with contextlib.suppress(OSError):
            write_all(line, b"0\n")


def _busy(waiting: deque[Path]) -> bool:
    """Whether IN_FLIGHT chunks still wait for the guest; consumed ones (the
    guest truncates a chunk once copied) are deleted."""
    while waiting and _consumed(waiting[0]):
        waiting.popleft().unlink(missing_ok=True)
    return len(waiting) >= IN_FLIGHT


def _consumed(chunk: Path) -> bool:
    try:
        return chunk.stat().st_size == 0
    except FileNotFoundError:
        return True
