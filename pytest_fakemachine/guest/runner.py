"""The guest-side runner: runs selected tests inside the guest and streams reports.

Started by the guest's job as ``python _guest.py SPEC.json`` with the host's
own interpreter. It imports only the standard library and pytest (never the
rest of pytest_fakemachine, whose host-side code has no business here).

Events go to ``spec["events"]`` as JSON lines, flushed one by one so the host
sees each phase as soon as it ends::

    {"event": "start", "nodeid": ...}
    {"event": "report", "nodeid": ..., "report": <pytest_report_to_serializable>}
    {"event": "collectreport", "report": <pytest_report_to_serializable>}  (failed only)
    {"event": "rerun", "nodeid": ...}  (one_attempt: a fresh guest reruns the test)
    {"event": "finish", "nodeid": ...}  (the test's whole protocol, reruns included)
    {"event": "warning", "nodeid": ..., "message": ..., "category": [module, qualname], ...}
    {"event": "shell", "nodeid": ...}, {"event": "shell-end", ...}  (_guest_shell)
    {"event": "pdb"}, {"event": "pdb-end"}  (the debugger has the terminal, then not)
    {"event": "exit", "reason": ..., "returncode": ...}  (pytest.exit(): the session stops)
    {"event": "done", "exitstatus": ...}

A guest booted ahead (``spec["go"]``) collects its test, then waits for the
host's word on a serial line before it runs it (see ``_ahead``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import json
import os
import sys
from collections.abc import Callable, Generator
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

import pytest
from _pytest._io import TerminalWriter

if TYPE_CHECKING:
    pass


class GuestReporter:
    """A pytest plugin: narrows the session to the host's items, sends events."""

    def __init__(self, spec: dict[str, Any], out: IO[str]) -> None:
        self.nodeids: list[str] = spec["nodeids"]
        self.options: dict[str, Any] = spec["options"]
        # Function scope: each attempt of a rerun (pytest-rerunfailures) gets a
        # fresh guest, as a local rerun gets fresh fixtures; the host tells how
        # many attempts went before.
        self.one_attempt: bool = spec.get("one_attempt", False)
        self.prior_attempts: dict[str, int] = spec.get("prior_attempts", {})
        self.rerun_pending = False
        self.items: list[pytest.Item] = []
        self.markup: bool = spec.get("markup", False)
        self.interactive: bool = bool(spec.get("debugger"))
        self.terminal: Any = None  # a _guest_terminal.Terminal, when the host wired one
        self.terminal_log: str | None = spec.get("terminal_log")
        self.tmp_path_dir: str | None = spec.get("tmp_path_dir")
        self.tmp_path_policy: str = spec.get("tmp_path_policy", "all")
        self.tmp_paths: dict[str, str] = {}  # nodeid -> its tmp_path
        self.failed: dict[str, bool] = {}
        self.go: dict[str, str] | None = spec.get("go")
        self.out = out

    def send(self, **event: Any) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config
        # The host session's option values (tbstyle, verbosity, conftest options...).
        for name, value in self.options.items():
            setattr(config.option, name, value)
        # Nobody reads the guest's terminal, and its summary hooks cost: one
        # plugin's hook imports all of hypothesis there (half a second in UML).
        # From pytest 9.2 this skips only pytest's own sections (pytest#14730).
        config.option.no_summary = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        config = session.config
        # The host reports every test; what this session's terminal reporter
        # writes (header, progress) would only mix into the test's own output,
        # which the host shows live with -s.
        terminal: Any = config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            # Kept where the host reads it if this process dies (e.g.
            # pytest-timeout's thread method dumps the stacks there, then exits).
            log = self.terminal_log or os.devnull
            self.devnull = append_private(log, buffering=1)  # lives as long as the session
            self.gate = _Gate(self.devnull)
            writer = TerminalWriter(cast(TextIO, self.gate))
            # As the host's: assertion diffs are highlighted where they are made.
            writer.hasmarkup = self.markup
            terminal._tw = writer
        # pytest-rerunfailures counts the attempts a test had in failures_db
        # (a no-op store outside xdist): add those made in earlier guests.
        db: Any = getattr(config, "failures_db", None)
        if self.prior_attempts and db is not None:
            counted = db.get_test_failures
            prior = self.prior_attempts
            db.get_test_failures = lambda nodeid: counted(nodeid) + prior.get(nodeid, 0)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        by_id = {item.nodeid: item for item in items}
        selected = [by_id[nodeid] for nodeid in self.nodeids if nodeid in by_id]
        deselected = [item for item in items if item.nodeid not in set(self.nodeids)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = selected
        self.items = selected

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self) -> None:
        """Booted ahead: everything up to here ran while an earlier test ran on
        the host; the test itself waits for its turn."""
        if self.go is not None:
            wait_for_go(self.go["line"], self.go["waiting"])

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            config = self.config
            data = config.hook.pytest_report_to_serializable(config=config, report=report)
            self.send(event="collectreport", report=data)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_exception_interact(self) -> Generator[None, object, object]:
        # --pdb: pytest prints the traceback, then the debugger starts.
        self._show_terminal(True)
        try:
            return (yield)
        finally:
            self._leave_terminal()  # after a `q` too, which skips pytest_leave_pdb
            self._show_terminal(False)

    def pytest_enter_pdb(self) -> None:  # also breakpoint(), pytest.set_trace(), --trace
        self._show_terminal(True)
        if self.interactive and self.terminal is not None:
            self.terminal.attach("pdb")

    def pytest_leave_pdb(self) -> None:
        self._leave_terminal()
        self._show_terminal(False)

    def _leave_terminal(self) -> None:
        if self.terminal is not None:
            self.terminal.detach("pdb-end")

    def _show_terminal(self, show: bool) -> None:
        gate = getattr(self, "gate", None)
        if gate is not None and self.interactive:
            gate.open = show

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        result = yield
        if fixturedef.argname == "tmp_path" and isinstance(result, os.PathLike):
            self.tmp_paths[request.node.nodeid] = os.fspath(result)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        result = yield  # an exception (the pytest.exit below) skips "finish"
        tmp_path = self._keep_tmp_path(item.nodeid)
        self.send(event="finish", nodeid=item.nodeid, output=_output_offsets(), tmp_path=tmp_path)
        return result

    def _keep_tmp_path(self, nodeid: str) -> str | None:
        """Hand the test's tmp_path, after its teardown, to the host's side (the
        work directory) for the host to keep in its basetemp; its name there."""
        source = self.tmp_paths.pop(nodeid, None)
        policy = self.tmp_path_policy
        if source is None or self.tmp_path_dir is None or policy == "none":
            return None
        if policy == "failed" and not self.failed.get(nodeid, False):
            return None
        name = os.path.basename(source)
        try:
            load_sibling("pack").pack_regular_files(source, self.tmp_path_dir, name)
        except OSError:
            return None
        return name

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.send(event="start", nodeid=nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.failed[report.nodeid] = True
        config = self.config
        data = config.hook.pytest_report_to_serializable(config=config, report=report)
        self.send(event="report", nodeid=report.nodeid, report=data)
        outcome: str = report.outcome  # pytest-rerunfailures adds "rerun"
        if self.one_attempt and outcome == "rerun":
            self.rerun_pending = True

    def pytest_warning_recorded(
        self,
        warning_message: Any,
        when: str,
        nodeid: str,
        location: tuple[str, int, str] | None,
    ) -> None:
        # The host collects and configures on its own and records those
        # warnings itself: only the tests' own warnings are the guest's to send.
        if when != "runtest":
            return
        category: type[Warning] = warning_message.category
        self.send(
            event="warning",
            nodeid=nodeid,
            message=str(warning_message.message),
            category=[category.__module__, category.__qualname__],
            filename=warning_message.filename,
            lineno=warning_message.lineno,
        )

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """pytest.exit() stopped this session (also the debugger's `q`, which
        pytest turns into pytest.exit("Quitting debugger")): the host's session
        stops as a local one would, with its reason and status."""
        stop = excinfo.value
        if isinstance(stop, pytest.exit.Exception) and not self.rerun_pending:
            self.send(event="exit", reason=stop.msg, returncode=stop.returncode)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        if not self.rerun_pending:
            return
        # pytest-rerunfailures would rerun in this guest: hand the rerun to a
        # fresh one. It set the session's fixtures aside for the rerun; put
        # them back so this guest's session ends with their teardown.
        self.send(event="rerun", nodeid=nodeid)
        rerunfailures = sys.modules.get("pytest_rerunfailures")
        restore = getattr(rerunfailures, "_restore_suspended_finalizers", None)
        item = next((i for i in self.items if i.nodeid == nodeid), None)
        if restore is not None and item is not None:
            restore(item)
        pytest.exit("the test reruns in a fresh guest", returncode=0)


class _Gate(io.TextIOBase):
    """The guest's terminal output: shown (through stdout) only while the
    debugger runs, so the host, not the guest, reports the tests; else logged."""

    def __init__(self, log: IO[str]) -> None:
        self.open = False
        self._log = log

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        target = sys.__stdout__ if self.open and sys.__stdout__ is not None else self._log
        return target.write(text)

    def flush(self) -> None:
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()


def wait_for_go(line: str, waiting: str) -> None:
    """Block until the host writes a line to the serial ``line``.

    ``waiting`` tells the host the line is open (a byte sent earlier would go
    unnoticed) and that this guest is idle. A hang-up (the host gave this
    guest up) ends the runner.
    """
    fd = os.open(line, os.O_RDWR | os.O_NOCTTY)  # not our controlling terminal
    try:
        with open(waiting, "w"):
            pass
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 64)
            if not chunk:
                os._exit(1)
            data += chunk
    finally:
        os.close(fd)


def append_private(path: str, buffering: int = -1) -> TextIO:
    """``path`` opened to append to, created 0600 as the work directory's files are."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return open(fd, "a", buffering=buffering, encoding="utf-8")


def _output_offsets() -> dict[str, int]:
    """How far the runner's stdout and stderr files go: the host relays a
    test's output up to there (with -s)."""
    offsets = {}
    for name, stream, fd in (("stdout", sys.__stdout__, 1), ("stderr", sys.__stderr__, 2)):
        try:
            if stream is not None:
                stream.flush()
            offsets[name] = os.lseek(fd, 0, os.SEEK_CUR)
        except (OSError, ValueError):
            pass
    return offsets


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path[:] = spec["sys_path"]
    # stdout is a file the host relays live with -s: lines as they are
    # printed, as on a terminal.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    os.chdir(spec["invocation_dir"])
    stop_coverage = _start_coverage(spec.get("coverage"))
    with append_private(spec["events"]) as out:
        reporter = GuestReporter(spec, out)
        plugins: list[object] = [reporter]
        plugins += [importlib.import_module(module) for module in spec["plugins"]]
        if spec.get("terminal"):  # the user's, for the debugger or the shell
            if spec.get("debugger"):  # readline reads TERM when pdb first imports it
                os.environ.setdefault("TERM", spec["terminal"]["term"])
            terminal = load_sibling("terminal").Terminal(spec["terminal"], reporter.send)
            reporter.terminal = terminal
            if spec.get("shell"):  # --fakemachine-shell-on-fail
                shell = load_sibling("shell").ShellOnFail(spec["shell"], terminal,
                                                                  reporter.send)  # fmt: skip
                plugins.append(shell)
        try:
            status = int(pytest.main(spec["args"], plugins=plugins))
        finally:
            if stop_coverage is not None:  # saved before "done": the host combines after it
                stop_coverage()
        reporter.send(event="done", exitstatus=status)
    return status


def _start_coverage(settings: dict[str, Any] | None) -> Callable[[], None] | None:
    """Measure the guest's code like the host session does (if it does).

    The support module (and coverage) loads only then; the runner itself
    imports only the standard library and pytest.
    """
    if not settings:
        return None
    module = load_sibling("coverage")
    cov = module.start(settings)
    return lambda: module.stop(cov)


@functools.cache
def load_sibling(name: str) -> Any:
    """A standalone guest-side module next to this file, loaded by path (the
    runner is a script: the package itself is not imported in the guest)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_fakemachine_guest_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Every report is out: skip interpreter finalization, which costs a
    # second or more of the guest's slow syscalls after each test run.
    os._exit(code)
