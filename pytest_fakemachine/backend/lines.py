"""Host pipes for a guest's serial lines, one wiring type for every line: the
terminal (the debugger's, the shell's, the command line's), the window
sizes, the command line's streams, the line a guest booted ahead waits on.

The guest's ends go to the backend as :class:`.base.Line` s; the host closes
its copies of them once the guest holds them (:meth:`Wiring.launched`), and
its own ends at :meth:`Wiring.close`.
"""

from __future__ import annotations

import contextlib
import os
from typing import final

from .base import Line

__all__ = ["Wiring"]


@final
class Wiring:
    def __init__(self) -> None:
        self.lines: list[Line] = []
        self._guest_ends: list[int] = []
        self._host_ends: list[int] = []

    def into_guest(self, number: int) -> int:
        """Line ``number`` carries what the host writes to the returned descriptor."""
        read, write = self._pipe()
        self._add(Line(number, to_guest=read))
        return write

    def out_of_guest(self, number: int) -> int:
        """Line ``number``'s output, read from the returned descriptor."""
        read, write = self._pipe()
        self._add(Line(number, from_guest=write))
        return read

    def both_ways(self, number: int) -> tuple[int, int]:
        """Line ``number`` both ways: (the descriptor to write to it, the one to read it)."""
        to_guest_r, to_guest_w = self._pipe()
        from_guest_r, from_guest_w = self._pipe()
        self._add(Line(number, to_guest=to_guest_r, from_guest=from_guest_w))
        return to_guest_w, from_guest_r

    def launched(self) -> None:
        """The guest holds its ends now: ours of them go."""
        for fd in self._guest_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._guest_ends.clear()

    def close(self) -> None:
        self.launched()
        for fd in self._host_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._host_ends.clear()

    def _pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self._host_ends += (read, write)
        return read, write

    def _add(self, line: Line) -> None:
        self.lines.append(line)
        for fd in line.fds:
            self._host_ends.remove(fd)
            self._guest_ends.append(fd)
