"""Marked tests on the host: guest runs of the groups the markers make.

A :class:`GuestRun` boots one guest for a list of tests (one test for
``scope="function"``, every remaining test of a group otherwise), starts the
guest-side runner on them, and hands each test's reports to the host as they
arrive. A guest that dies or hangs fails the test under way; the tests after
it get a fresh guest.

What a marker asks for (the machine, the scope, the group) is resolved in
:mod:`.markers`; the runner's events are read in :mod:`.events`; here it is run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from .._config import check_guest_path
from .._machine import Machine
from .._session import BootOutcome, Session
from .._terminal import GuestTerminal, open_terminal
from ..backend.base import Guest
from ..guest import runner as _guest
from ..guest.protocol import ExitEvent, TerminalEvent
from ..image.templates import GUEST_WORK
from ..image.workdir import command_body
from .events import EventReader, GuestEvents, OutputRelay
from .failures import fail, not_collected, why_gone
from .go import GoLine
from .hostio import host_output, wants_terminal
from .shell import interact as shell_interact
from .shell import shell_spec
from .spec import coverage_settings, guest_spec, python_mounts
from .transport import rebuild, unpack_kept

__all__ = ["GuestRun", "new_image_dir"]

_GRACE_SECONDS = 30.0  # how long a finished guest may take to power off


@dataclass(eq=False)
class GuestRun:
    """One guest running ``items`` in order, their reports delivered one test at a time."""

    config: pytest.Config
    items: list[pytest.Item]
    machine: Machine
    image_dir: Path
    on_outcome: Callable[[BootOutcome], None]
    timeout: float | None
    function_scope: bool = True
    prior_attempts: dict[str, int] = field(default_factory=dict)  # reruns in earlier guests
    collect_errors_reported: set[str] = field(default_factory=set)  # shared by the session
    shell_on_fail: bool = False  # --fakemachine-shell-on-fail
    session: Session | None = None
    guest: Guest | None = None
    events: GuestEvents | None = None
    relay: OutputRelay | None = None  # the guest's output, live (-s, the debugger)
    terminal: GuestTerminal | None = None  # the debugger's, the shell's
    go: GoLine | None = None  # booted ahead: the runner waits for its turn on this line
    tick: Callable[[], None] | None = None  # called as the host waits for the guest
    dead: str = ""  # why the guest stopped early, once it did
    deadline: float | None = None
    keep_image_dir: bool = False  # another run took its images over
    _boot_charged: bool = False
    _interacting: bool = False
    _terminal_over: bool = False
    debugger_off: bool = False  # --pdb or --trace asked, but no terminal for the guest's

    def start(self) -> None:
        coverage = coverage_settings()
        data_dirs = [os.path.dirname(coverage["data_file"])] if coverage else []
        for path, writable in python_mounts(self.config, data_dirs):
            check_guest_path(path, "the Python environment of the pytest session")
            self.machine.add_volume(path, read_only=not writable)
        interactive = wants_terminal(self.config)
        self.debugger_off = not interactive
        if interactive or self.shell_on_fail:
            self.terminal = GuestTerminal()
        session = self.session = self.machine.session()
        for wiring in (self.terminal, self.go):
            if wiring is not None:
                session.lines += wiring.wiring.lines
        session.cleanup.append(self.image_dir)
        session.__enter__()
        work, layout = session.workdir, session.layout
        spec = guest_spec(self.config, self.items, coverage=coverage, interactive=interactive,
                          one_attempt=len(self.items) == 1 and self.function_scope,
                          prior_attempts=self.prior_attempts)  # fmt: skip
        (work / "tmp_path").mkdir(mode=0o700)
        if self.terminal is not None:
            spec["terminal"] = self.terminal.spec(layout)
        if self.shell_on_fail:
            spec["shell"] = shell_spec()
        if self.go is not None:
            spec["go"] = self.go.spec(layout)
        with os.fdopen(os.open(work / "guest.json", os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            json.dump(spec, f)
        env = {**self.machine.env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
        argv = [sys.executable, _guest.__file__, f"{GUEST_WORK}/guest.json"]
        body = command_body(argv, str(self.config.invocation_params.dir), env)
        self.events = GuestEvents(self.config, EventReader(work / "events.jsonl"), self)
        if self.config.option.capture in ("no", "tee-sys") or interactive:
            self.relay = OutputRelay(work, host_output(self.config))
        self.events.launched_at = time.monotonic()
        self.guest = session.launch(body)
        if self.terminal is not None:
            self.terminal.wiring.launched()
        if self.go is not None:
            self.go.launched(work)
        self.test_started()

    def boot_ahead(self) -> None:
        """Make this unstarted run one that boots ahead: its runner waits on a
        line for its test's turn, and its outcome is nobody's until then."""
        self.on_outcome = lambda _: None
        self.go = GoLine()

    def take_over(self, new: GuestRun) -> None:
        """At its test's turn, a run booted ahead becomes the test's: ``new``
        (built then, with the configure hook) gives its machine, outcome and
        tick; the test's time starts now."""
        machine, booted = new.machine, self.machine
        # The machine the hooks saw is the one the test runs in: it gets what
        # starting the run added (the Python environment's volumes...).
        for volume in booted.volumes[len(machine.volumes) :]:
            machine.add_volume(volume.host, volume.guest, read_only=volume.read_only)
        self.machine, self.on_outcome, self.tick = machine, new.on_outcome, new.tick
        if self.events is not None:
            self.events.launched_at = time.monotonic()
        self.test_started()
        if self.guest is not None:
            self.guest.resume()
        if self.go is not None:
            self.go.release()

    # The events' listener (see events.Listener).

    def test_started(self) -> None:
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def keep_tmp_path(self, name: str) -> None:
        """Move a test's tmp_path, copied out by the guest, into the host's basetemp."""
        assert self.session is not None
        source = self.session.workdir / "tmp_path" / name
        unpack_kept(source.parent, name)
        factory: pytest.TempPathFactory | None = getattr(self.config, "_tmp_path_factory", None)
        if factory is None or source.is_symlink() or not source.is_dir() or "/" in name:
            return
        target = factory.getbasetemp() / name
        if target.exists():  # the name is taken on the host: a numbered one like it
            target = factory.mktemp(name.rstrip("0123456789") or "tmp", numbered=True)
            target.rmdir()
        shutil.move(source, target)

    def interact(self, event: TerminalEvent) -> bool:
        """The user's terminal joined to the guest's until the matching end event."""
        if self._interacting:  # the next interaction, read while this one ends: after it
            return False
        terminal = self.terminal
        if terminal is None:
            return True
        self._terminal_over = False
        self._interacting = True
        try:
            if event.get("event") == "shell":
                shell_interact(terminal, event.get("nodeid", ""), self._terminal_ended)
            else:
                if self.relay is not None:  # what went before (the traceback) first
                    self.relay.read()
                    self.relay.write()
                terminal.interact(self._terminal_ended)
        finally:
            self._interacting = False
        self.test_started()  # the time in the shell or the debugger is not the test's
        return True

    def terminal_released(self) -> None:
        self._terminal_over = True

    def _terminal_ended(self) -> bool:
        self._pump()
        return self._terminal_over or self.guest is None or self.guest.exited()

    def _pump(self) -> None:
        assert self.events is not None
        if self.relay is not None:
            self.relay.read()
        self.events.pump()

    def deliver(self, item: pytest.Item) -> bool:
        """Log ``item``'s reports as they come; fail it if the guest cannot finish it.

        True when the test is to be rerun in a fresh guest (pytest-rerunfailures
        on a function-scoped test): this guest ran its attempt and exits.
        """
        assert self.guest is not None and self.events is not None and self.session is not None
        events = self.events
        received: list[pytest.TestReport] = []  # the reports of the attempt under way
        while True:
            if self.go is not None:
                self.go.poll()
            if self.tick is not None:
                self.tick()
            self._pump()
            if self.relay is not None:  # a phase's output comes before its report
                self.relay.write(events.finished.get(item.nodeid))
            for data in events.reports.pop(item.nodeid, []):
                report = self._log(item, rebuild(self.config, data))
                if report.when == "setup":
                    received = []
                received.append(report)
            if item.nodeid in events.finished:
                return False
            if item.nodeid in events.rerun:
                return True
            if events.exit is not None and (events.done or self.guest.exited()):
                self._stop_session(events.exit)
            if self.dead:
                fail(item, received, self.dead, self.session, self.guest)
                return False
            if events.done and events.exit is None:
                not_collected(item, received, events.collect_reports,
                              self.collect_errors_reported, self.session, self.guest)  # fmt: skip
                return False
            if self.guest.exited():
                self._pump()
                if item.nodeid in {*events.reports, *events.finished, *events.rerun}:
                    continue
                self.dead = why_gone(self.session, self.guest, received)
                continue
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.guest.kill()
                self.dead = f"the guest timed out after {self.timeout:g} s and was killed"
                continue
            self.guest.wait(0.02)

    def _stop_session(self, event: ExitEvent) -> NoReturn:
        """pytest.exit() stopped the guest's session (the debugger's `q` too):
        stop the host's as pytest would, once the guest's session has ended
        (its fixtures torn down, coverage saved) and the guest powered off."""
        assert self.guest is not None
        if not self.dead:
            self.guest.wait(_GRACE_SECONDS)
        pytest.exit(event["reason"], event["returncode"])

    def _log(self, item: pytest.Item, report: pytest.TestReport) -> pytest.TestReport:
        assert self.events is not None
        if item is self.items[0]:  # the test that paid for the boot
            boot = self.events.boot_seconds
            report.fakemachine_boot = boot  # type: ignore[attr-defined]
            if report.when == "setup" and not self._boot_charged:
                # Setting up this test took the boot: --durations and junitxml
                # show what the test cost, not just its fixtures.
                self._boot_charged = True
                report.duration += boot or 0.0
        item.ihook.pytest_runtest_logreport(report=report)
        if self.debugger_off and (report.failed or self.config.option.trace):
            _note_debugger_off(self.config, item.nodeid)
        return report

    def close(self, *, graceful: bool = True) -> None:
        """Wait briefly for a normal power-off (if ``graceful``), then kill and clean up."""
        try:
            if self.relay is not None:
                self.relay.read()
                self.relay.write()
            if self.guest is not None:
                if graceful and not self.dead:  # the job unmounts, syncs, powers off
                    self.guest.wait(_GRACE_SECONDS)
                self.guest.kill()
                if self.session is not None:
                    try:
                        outcome = self.session.outcome(self.guest, True, None)
                    except Exception:
                        outcome = BootOutcome(-1, self.guest.console(), 0.0)
                    self.on_outcome(outcome)
        finally:
            if self.session is not None:
                self.session.__exit__()
            for wiring in (self.terminal, self.go):
                if wiring is not None:
                    wiring.close()
            if not self.keep_image_dir:
                shutil.rmtree(self.image_dir, ignore_errors=True)

    def remaining(self, delivered: Iterable[str]) -> list[pytest.Item]:
        done = set(delivered)
        return [item for item in self.items if item.nodeid not in done]


_debugger_noted = pytest.StashKey[bool]()


def _note_debugger_off(config: pytest.Config, nodeid: str) -> None:
    """Where --pdb or --trace would start the debugger but the guest's cannot
    reach the user, say so on the terminal, once a session (a line, not a
    warning: -W error would make it an error of the session)."""
    option = config.option
    flags = [flag for flag, asked in (("--pdb", option.usepdb), ("--trace", option.trace)) if asked]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if not flags or reporter is None or config.stash.get(_debugger_noted, False):
        return
    config.stash[_debugger_noted] = True
    terminal = open_terminal()
    if terminal is None:
        why = "pytest has no terminal (/dev/tty)"
    else:
        os.close(terminal)
        why = "stdin is not a terminal"
    reporter.write_line(
        f"fakemachine: {' and '.join(flags)}: the debugger was not started in the guest of "
        f"{nodeid}, nor will it be in other guests: {why}, and a guest's debugger talks to the "
        "user's terminal"
    )


def new_image_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fakemachine-images-"))
