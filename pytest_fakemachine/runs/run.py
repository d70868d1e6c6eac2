"""Marked tests on the host: guest runs of the groups the markers make.

A :class:`GuestRun` boots one guest for a list of tests (one test for
``scope="function"``, every remaining test of a group otherwise), starts the
guest-side runner on them, and hands each test's reports to the host as they
arrive. A guest that dies or hangs fails the test under way; the tests after
it get a fresh guest.

What a marker asks for (the machine, the scope, the group) is resolved in
:mod:`._markers`; here it is run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .._config import check_guest_path
from .._machine import Machine
from .._session import BootOutcome, Session, command_body, console_tail
from .._terminal import GuestTerminal, open_terminal
from ..backend.uml.process import GuestProcess
from ..guest import runner as _guest
from ..image.templates import GUEST_WORK
from .shell import interact as shell_interact
from .shell import shell_spec
from .spec import coverage_settings, guest_spec, python_mounts
from .transport import (
    EventReader,
    OutputRelay,
    covers,
    failure_reports,
    rebuild,
    rebuild_collect,
    record_warning,
    report_collect_error,
    runner_stderr,
    unpack_kept,
)

if TYPE_CHECKING:
    from .ahead import GoLine

__all__ = ["GuestRun", "xdist_queue"]

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
    session: Session | None = None
    guest: GuestProcess | None = None
    reader: EventReader | None = None
    function_scope: bool = True
    prior_attempts: dict[str, int] = field(default_factory=dict)  # reruns in earlier guests
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    collect_reports: list[pytest.CollectReport] = field(default_factory=list)
    collect_errors_reported: set[str] = field(default_factory=set)  # shared by the session
    finished: dict[str, dict[str, int]] = field(default_factory=dict)  # -> where output ends
    rerun: set[str] = field(default_factory=set)
    relay: OutputRelay | None = None
    terminal: GuestTerminal | None = None  # the debugger's, the shell's
    boot_charged: bool = False
    done: bool = False
    dead: str = ""  # why the guest stopped early, once it did
    deadline: float | None = None
    launched_at: float = 0.0
    boot_seconds: float | None = None  # launch to the first test's start, once known
    shell_on_fail: bool = False  # --fakemachine-shell-on-fail
    terminal_over: bool = False
    interacting: bool = False
    queued: list[dict[str, Any]] = field(default_factory=list)  # events read, not handled
    keep_image_dir: bool = False  # another run took its images over
    go: GoLine | None = None  # booted ahead: the runner waits for its turn on this line
    tick: Callable[[], None] | None = None  # called as the host waits for the guest

    def start(self) -> None:
        coverage = coverage_settings()
        data_dirs = [os.path.dirname(coverage["data_file"])] if coverage else []
        for path, writable in python_mounts(self.config, data_dirs):
            check_guest_path(path, "the Python environment of the pytest session")
            self.machine.add_volume(path, read_only=not writable)
        interactive = wants_terminal(self.config)
        if interactive or self.shell_on_fail:
            self.terminal = GuestTerminal()
        for wiring in (self.terminal, self.go):
            if wiring is not None:
                self.machine.extra_kernel_args += wiring.kernel_args()
        self.session = self.machine.session()
        for wiring in (self.terminal, self.go):
            if wiring is not None:
                self.session.pass_fds += wiring.pass_fds
        self.session.cleanup.append(self.image_dir)
        self.session.__enter__()
        work = self.session.workdir
        one_attempt = len(self.items) == 1 and self.function_scope
        spec = guest_spec(self.config, self.items, f"{GUEST_WORK}/events.jsonl",
                          one_attempt=one_attempt, prior_attempts=self.prior_attempts)  # fmt: skip
        spec["coverage"] = coverage
        spec["terminal_log"] = f"{GUEST_WORK}/terminal"
        if interactive:
            spec["debugger"] = True
            option = self.config.option
            debug = (("--pdb", option.usepdb), ("--trace", option.trace))
            spec["args"][:0] = [flag for flag, wanted in debug if wanted]
        (work / "tmp_path").mkdir()
        spec["tmp_path_dir"] = f"{GUEST_WORK}/tmp_path"
        spec["tmp_path_policy"] = self.config.getini("tmp_path_retention_policy")
        if self.terminal is not None:
            spec["terminal"] = self.terminal.spec()
        if self.shell_on_fail:
            spec["shell"] = shell_spec()
        if self.go is not None:
            spec["go"] = self.go.spec()
        (work / "guest.json").write_text(json.dumps(spec))
        env = {**self.machine.env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
        argv = [sys.executable, _guest.__file__, f"{GUEST_WORK}/guest.json"]
        body = command_body(argv, str(self.config.invocation_params.dir), env)
        self.reader = EventReader(work / "events.jsonl")
        if self.config.option.capture in ("no", "tee-sys") or interactive:
            self.relay = OutputRelay(work, _host_output(self.config))
        self.launched_at = time.monotonic()
        self.guest = self.session.launch(body)
        if self.terminal is not None:
            self.terminal.launched()
        if self.go is not None:
            self.go.launched(work)
        self._arm()

    def begin(self) -> None:
        """A run booted ahead becomes its test's: the test's time starts now."""
        self.launched_at = time.monotonic()
        self._arm()
        if self.guest is not None:
            self.guest.resume()
        if self.go is not None:
            self.go.release()

    def _arm(self) -> None:
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def _pump(self) -> None:
        assert self.reader is not None
        if self.relay is not None:
            self.relay.read()
        self.queued += self.reader.read()
        while self.queued:
            event = self.queued.pop(0)
            kind = event.get("event")
            if kind in ("shell", "pdb") and self.interacting:
                # The next interaction, read while this one ends: after it.
                self.queued.insert(0, event)
                return
            if kind == "start":
                self._arm()  # the time limit counts per test
                if self.boot_seconds is None:
                    self.boot_seconds = time.monotonic() - self.launched_at
            elif kind == "report":
                self.events.setdefault(event["nodeid"], []).append(event["report"])
            elif kind == "collectreport":
                self.collect_reports.append(rebuild_collect(self.config, event["report"]))
            elif kind == "finish":
                self.finished[event["nodeid"]] = event.get("output", {})
                if event.get("tmp_path"):
                    self._keep_tmp_path(event["tmp_path"])
            elif kind == "warning":
                record_warning(self.config, event)
            elif kind == "rerun":
                self.rerun.add(event["nodeid"])
            elif kind == "done":
                self.done = True
            elif kind in ("shell", "pdb") and self.terminal is not None:
                self._interact(self.terminal, event)
            elif kind in ("shell-end", "pdb-end"):
                self.terminal_over = True

    def _interact(self, terminal: GuestTerminal, event: dict[str, Any]) -> None:
        """The user's terminal joined to the guest's until the matching end event."""
        self.terminal_over = False
        self.interacting = True
        try:
            if event["event"] == "shell":
                shell_interact(terminal, event.get("nodeid", ""), self._terminal_ended)
            else:
                if self.relay is not None:  # what went before (the traceback) first
                    self.relay.read()
                    self.relay.write()
                terminal.interact(self._terminal_ended)
        finally:
            self.interacting = False
        self._arm()  # the time in the shell or the debugger is not the test's

    def _terminal_ended(self) -> bool:
        self._pump()
        return self.terminal_over or self.guest is None or self.guest.exited()

    def _keep_tmp_path(self, name: str) -> None:
        """Move a test's tmp_path, copied out by the guest, into the host's basetemp."""
        assert self.session is not None
        source = self.session.workdir / "tmp_path" / name
        unpack_kept(source.parent, name)
        factory: pytest.TempPathFactory | None = getattr(self.config, "_tmp_path_factory", None)
        if factory is None or not source.is_dir() or "/" in name:
            return
        target = factory.getbasetemp() / name
        if target.exists():  # the name is taken on the host: a numbered one like it
            target = factory.mktemp(name.rstrip("0123456789") or "tmp", numbered=True)
            target.rmdir()
        shutil.move(source, target)

    def deliver(self, item: pytest.Item) -> bool:
        """Log ``item``'s reports as they come; fail it if the guest cannot finish it.

        True when the test is to be rerun in a fresh guest (pytest-rerunfailures
        on a function-scoped test): this guest ran its attempt and exits.
        """
        assert self.guest is not None
        received: list[pytest.TestReport] = []  # the reports of the attempt under way
        while True:
            if self.go is not None:
                self.go.poll()
            if self.tick is not None:
                self.tick()
            self._pump()
            if self.relay is not None:  # a phase's output comes before its report
                self.relay.write(self.finished.get(item.nodeid))
            for data in self.events.pop(item.nodeid, []):
                report = rebuild(self.config, data)
                if report.when == "setup":
                    received = []
                if item is self.items[0]:  # the test that paid for the boot
                    report.fakemachine_boot = self.boot_seconds  # type: ignore[attr-defined]
                    if report.when == "setup" and not self.boot_charged:
                        # Setting up this test took the boot: --durations and
                        # junitxml show what the test cost, not just its fixtures.
                        self.boot_charged = True
                        report.duration += self.boot_seconds or 0.0
                item.ihook.pytest_runtest_logreport(report=report)
                received.append(report)
            if item.nodeid in self.finished:
                return False
            if item.nodeid in self.rerun:
                return True
            if self.dead:
                self._fail(item, received, self.dead)
                return False
            if self.done:
                self._not_collected(item, received)
                return False
            if self.guest.exited():
                self._pump()
                if item.nodeid in self.events or item.nodeid in {*self.finished, *self.rerun}:
                    continue
                self.dead = self._why_gone(received)
                continue
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.guest.kill()
                self.dead = f"the guest timed out after {self.timeout:g} s and was killed"
                continue
            self.guest.wait(0.02)

    def _not_collected(self, item: pytest.Item, received: list[pytest.TestReport]) -> None:
        """The guest finished without running ``item``: report why, as pytest would."""
        failed = [r for r in self.collect_reports if covers(r.nodeid, item.nodeid)]
        if failed:
            report_collect_error(item, failed[0], self.collect_errors_reported)
            return
        self._fail(item, received, "the test was not collected in the guest")

    def _why_gone(self, received: list[pytest.TestReport]) -> str:
        assert self.session is not None
        work = self.session.workdir
        if self.guest is not None and self.guest.ended_why is not None:
            return self.guest.ended_why  # a reboot, or the boot limit
        if not (work / "started").exists():
            return "the guest did not boot"
        status = self.session.read_text("status").strip()
        if status.isdigit() and int(status) > 128:
            try:
                name = signal.strsignal(int(status) - 128) or f"signal {int(status) - 128}"
            except ValueError:
                name = f"signal {int(status) - 128}"
            return f"the test process crashed ({name})"
        if status and not received:
            return f"the guest-side pytest exited with status {status} before running the test"
        if status:
            return f"the guest-side pytest exited with status {status} during the test"
        return "the guest powered off during the test"

    def _fail(self, item: pytest.Item, received: list[pytest.TestReport], why: str) -> None:
        console = self.guest.console() if self.guest is not None else ""
        tail = console_tail(console)
        stderr = runner_stderr(self.session.read_text("stderr")) if self.session else ""
        message = why + (f"\nguest runner stderr:\n{stderr}" if stderr else "")
        terminal = self.session.read_text("terminal").strip() if self.session else ""
        if terminal and "pytest exited" in why:  # its last words, e.g. a timeout's stacks
            message += f"\nguest pytest's terminal (last lines):\n{console_tail(terminal, 150)}"
        for report in failure_reports(item, received, message, tail):
            item.ihook.pytest_runtest_logreport(report=report)

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


def _host_output(config: pytest.Config) -> Callable[[str, bytes], None]:
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


def new_image_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fakemachine-images-"))
