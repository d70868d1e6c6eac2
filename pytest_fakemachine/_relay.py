"""The line relay of the debugger: the user's terminal, line by line, to a
guest's pytest (host side), for ``--pdb``, ``--trace`` and ``breakpoint()``.

What the user types goes, as it comes, to a file in the guest's work
directory, which the guest-side program reads as its stdin (see
``_guest.FileStdin``); the program's output comes back through the runner's
stdout file (:class:`pytest_fakemachine._transport.OutputRelay`). The host's
terminal stays in its normal (cooked) mode: it echoes and edits the line, and
hands it over on Enter. The guest's pytest keeps its own stdout (the runner's
pipe), so no serial line is needed.

The interactive shells (``pytest-fakemachine`` with no command,
``--fakemachine-shell-on-fail``) need a raw terminal with job control and
window sizes instead: that is :mod:`pytest_fakemachine._terminal`, over UML
serial lines.
"""

from __future__ import annotations

import os
import select
from pathlib import Path

__all__ = ["STDIN_CLOSED", "STDIN_FILE", "LineRelay", "is_terminal"]

STDIN_FILE = "stdin"
STDIN_CLOSED = "stdin.closed"  # exists once the user's stdin reached its end


def is_terminal(fd: int = 0) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class LineRelay:
    """Appends what arrives on ``fd`` to ``workdir/stdin``; call :meth:`pump` often."""

    def __init__(self, workdir: Path, fd: int = 0) -> None:
        self._path = workdir / STDIN_FILE
        self._path.touch()
        self._fd = fd
        self._closed = False

    def pump(self) -> None:
        while not self._closed and select.select([self._fd], [], [], 0)[0]:
            data = os.read(self._fd, 4096)
            if not data:  # Ctrl-D on an empty line, or the end of a pipe
                self._closed = True
                (self._path.parent / STDIN_CLOSED).touch()
                return
            with open(self._path, "ab") as f:
                f.write(data)
