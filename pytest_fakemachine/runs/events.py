"""The guest runner's events and live output on the host: read as the guest
appends them to the work directory, the events dispatched by name.

Each event of ``guest.protocol`` has a method ``on_<name>`` here (dashes as
underscores), as pytest-xdist's ``DSession`` has a ``worker_<name>`` for each
of its workers' events; an event with no such method is an error that names
it, never dropped. What an event means for the run under way (its time
limit, a kept ``tmp_path``, the user's terminal) is the run's, through the
:class:`Listener` it gives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import pytest

from .._errors import FakeMachineError
from ..guest.protocol import (
    CollectReportEvent,
    ExitEvent,
    FinishEvent,
    NodeEvent,
    ReportEvent,
    TerminalEvent,
    WarningEvent,
)
from .transport import rebuild_collect, record_warning

__all__ = ["EventReader", "GuestEvents", "Listener", "OutputRelay", "UnknownEvent"]


class FileTail:
    """The bytes appended to a file since the last read (the guest writes it in
    the work directory)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def read(self) -> bytes:
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return b""
        self._offset += len(data)
        return data


class OutputRelay:
    """Copies the guest runner's stdout and stderr to the host's as they grow
    (``-s``, ``--capture=tee-sys``: the test's output shows live, as locally).

    :meth:`read` before reading the events, :meth:`write` after: a test's
    "finish" event names where its output ends in each file, and bytes read
    before an event was written cannot belong to a later test.
    """

    def __init__(self, workdir: Path, write: Callable[[str, bytes], None]) -> None:
        self._tails = {name: FileTail(workdir / name) for name in ("stdout", "stderr")}
        self._pending = {name: b"" for name in self._tails}
        self._written = dict.fromkeys(self._tails, 0)  # file offsets
        self._write = write

    def read(self) -> None:
        for name, tail in self._tails.items():
            self._pending[name] += tail.read()

    def write(self, upto: dict[str, int] | None = None) -> None:
        """Write what was read, up to the file offsets ``upto`` (all if None)."""
        for name, pending in self._pending.items():
            count = len(pending)
            if upto is not None and name in upto:
                count = max(0, min(count, upto[name] - self._written[name]))
            if count:
                self._write(name, pending[:count])
                self._pending[name] = pending[count:]
                self._written[name] += count


class EventReader:
    """Reads the JSON-lines event file incrementally as the guest appends to it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unterminated line is still being written
        events = []
        for line in lines:
            if line.strip():
                events.append(json.loads(line))
        return events


class UnknownEvent(FakeMachineError):
    """The guest sent an event the host has no handler for."""


class Listener(Protocol):
    def test_started(self) -> None: ...

    def keep_tmp_path(self, name: str) -> None: ...

    def interact(self, event: TerminalEvent) -> bool:
        """Join the user's terminal to the guest's; False: not now (one is under way)."""
        ...

    def terminal_released(self) -> None: ...


@dataclass(eq=False)
class GuestEvents:
    """What one guest's runner has said so far."""

    config: pytest.Config
    reader: EventReader
    listener: Listener
    launched_at: float = 0.0
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by node id
    collect_reports: list[pytest.CollectReport] = field(default_factory=list)
    finished: dict[str, dict[str, int]] = field(default_factory=dict)  # -> where output ends
    rerun: set[str] = field(default_factory=set)
    exit: ExitEvent | None = None  # pytest.exit() stopped the guest's session
    done: bool = False
    boot_seconds: float | None = None  # launch to the first test's start, once known
    queued: list[dict[str, Any]] = field(default_factory=list)  # read, not handled yet

    def pump(self) -> None:
        """Handle every event the runner has written since the last call."""
        self.queued += self.reader.read()
        while self.queued:
            event = self.queued.pop(0)
            name = str(event.get("event"))
            handler = getattr(self, "on_" + name.replace("-", "_"), None)
            if handler is None:
                raise UnknownEvent(f"the guest runner sent an unknown event {name!r}: {event!r}")
            if handler(event) is False:  # not now: kept for the next pump
                self.queued.insert(0, event)
                return

    def on_start(self, event: NodeEvent) -> None:
        self.listener.test_started()  # the time limit counts per test
        if self.boot_seconds is None:
            self.boot_seconds = time.monotonic() - self.launched_at

    def on_report(self, event: ReportEvent) -> None:
        self.reports.setdefault(event["nodeid"], []).append(event["report"])

    def on_collectreport(self, event: CollectReportEvent) -> None:
        self.collect_reports.append(rebuild_collect(self.config, event["report"]))

    def on_finish(self, event: FinishEvent) -> None:
        self.finished[event["nodeid"]] = event.get("output", {})
        if event.get("tmp_path"):
            self.listener.keep_tmp_path(cast(str, event["tmp_path"]))

    def on_warning(self, event: WarningEvent) -> None:
        record_warning(self.config, cast("dict[str, Any]", event))

    def on_rerun(self, event: NodeEvent) -> None:
        self.rerun.add(event["nodeid"])

    def on_exit(self, event: ExitEvent) -> None:
        self.exit = event

    def on_done(self, event: dict[str, Any]) -> None:
        self.done = True

    def on_shell(self, event: TerminalEvent) -> bool:
        return self.listener.interact(event)

    on_pdb = on_shell

    def on_shell_end(self, event: TerminalEvent) -> None:
        self.listener.terminal_released()

    on_pdb_end = on_shell_end
