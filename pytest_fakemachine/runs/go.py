"""The line a guest booted ahead waits on until its test's turn (host side).

The guest-side runner collects its test, says it waits (a file in the work
directory), then blocks reading the line; the host writes a word when the
test's turn comes (see ``runs.ahead``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..backend.base import GO_LINE, Layout, Line
from ..backend.lines import Wiring
from ..guest.protocol import GoSpec
from ..image.templates import GUEST_WORK

__all__ = ["WAITING", "GoLine"]

WAITING = "waiting"  # in the work dir: the runner waits on its line


class GoLine:
    """The host's end of the serial line a guest booted ahead waits on."""

    def __init__(self) -> None:
        self.wiring = Wiring()
        self._write = self.wiring.into_guest(GO_LINE)
        self._waiting: Path | None = None
        self.wanted = False  # the test's turn has come
        self.sent = False

    @property
    def lines(self) -> list[Line]:
        return self.wiring.lines

    def spec(self, layout: Layout) -> GoSpec:
        return {"line": layout.line_device(GO_LINE), "waiting": f"{GUEST_WORK}/{WAITING}"}

    def launched(self, workdir: Path) -> None:
        """The guest holds its end now: ours goes."""
        self.wiring.launched()
        self._waiting = workdir / WAITING

    def waiting(self) -> bool:
        return self._waiting is not None and self._waiting.exists()

    def release(self) -> None:
        """Let the runner go on, now or as soon as it waits."""
        self.wanted = True
        self.poll()

    def poll(self) -> None:
        # Not before the guest reads the line: a byte written earlier would
        # wait unnoticed (the guest kernel is told of new data, not of old).
        if self.wanted and not self.sent and self.waiting():
            with contextlib.suppress(OSError):  # a guest that died: the run says why
                os.write(self._write, b"go\n")
            self.sent = True

    def close(self) -> None:
        self.wiring.close()
