"""The host session's side of a guest run: whether the user's terminal can
reach a guest, where the guest's live output goes past pytest's capture, and
which tests an xdist worker still has to run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest

from .._terminal import open_terminal

__all__ = ["host_output", "wants_terminal", "xdist_queue"]


def xdist_queue(config: pytest.Config) -> list[int] | None:
    """On an xdist worker, the indexes of the tests it was sent and has not run yet.

    Reads pytest-xdist's WorkerInteractor (its ``nextitem_index`` and ``torun``
    queue): tests a later batch brings get a guest of their own.
    """
    if not hasattr(config, "workerinput"):
        return None
    for plugin in config.pluginmanager.get_plugins():
        if type(plugin).__name__ == "WorkerInteractor":
            with plugin.torun.lock() as pending:
                queued = [plugin.nextitem_index, *pending]
            return [i for i in queued if isinstance(i, int)]
    return []


def wants_terminal(config: pytest.Config) -> bool:
    """Whether a guest's debugger may talk to the user: --pdb, --trace, or -s
    (breakpoint()), with a terminal on the host's stdin."""
    option = config.option
    asked = option.usepdb or option.trace or option.capture == "no"
    if not asked or not _stdin_is_terminal(config):
        return False
    terminal = open_terminal()  # the relay's: it must open
    if terminal is None:
        return False
    os.close(terminal)
    return True


def _stdin_is_terminal(config: pytest.Config) -> bool:
    """Whether the session's stdin is a terminal, past pytest's capture of fd 0
    (--capture=fd, the default, puts /dev/null there while tests run)."""
    if os.isatty(0):
        return True
    capman = config.pluginmanager.getplugin("capturemanager")
    capturing = getattr(capman, "_global_capturing", None)
    saved = getattr(getattr(capturing, "in_", None), "targetfd_save", None)
    return isinstance(saved, int) and os.isatty(saved)


def host_output(config: pytest.Config) -> Callable[[str, bytes], None]:
    """Writes the guest's output to the host's stdout or stderr, past pytest's capture."""
    capman = config.pluginmanager.getplugin("capturemanager")

    def write(name: str, data: bytes) -> None:
        stream = sys.stdout if name == "stdout" else sys.stderr
        with capman.global_and_fixture_disabled():
            stream.flush()
            binary = getattr(stream, "buffer", None)
            if binary is not None:
                binary.write(data)
                binary.flush()
            else:
                stream.write(data.decode(errors="replace"))
                stream.flush()

    return write
