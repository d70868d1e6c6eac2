"""The pytest plugin: options, the marker, the ``fakemachine`` fixture, and the
run-test protocol that runs marked tests in a guest and replays their reports.

Guests load this plugin too (for the marker, options and hooks), and every
import costs there; so the host-side machinery (``_machine``, ``_runs``,
``_doctor``, ``_shell`` with the terminal relay) is imported inside the
functions that only run on the host. Which guest each marked test gets, and
the session's state, are ``_dispatch``'s.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from _pytest.runner import CallInfo

from . import _settings, hooks
from ._errors import BackendUnavailable, FakeMachineError
from ._inguest import in_fakemachine
from ._settings import settings_key
from .runs.dispatch import (
    State,
    close_run,
    look_ahead,
    marker_of,
    new_machine,
    start_run,
    state_key,
    why_shell_off,
    why_unavailable,
)
from .runs.transport import covers, failure_reports, report_collect_error

if TYPE_CHECKING:
    from ._machine import Machine

MARKER_HELP = (
    "fakemachine(images=None, volumes=None, memory=None, scratch=None, network=False, "
    "env=None, passenv=None, timeout=None, boot_timeout=None, scope='function'): run the test "
    "(setup, call and teardown) as root inside a User-Mode-Linux guest booted from the host's /usr"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    _settings.addoption(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = _settings.resolve(config)
    except FakeMachineError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[settings_key] = settings
    config.stash[state_key] = State(settings)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("fakemachine_doctor", False):
        from .cli.doctor import run_doctor  # noqa: PLC0415 (host only, see the docstring)

        # Before pytest_configure: the settings are resolved here for the doctor.
        try:
            config.stash[settings_key] = _settings.resolve(config)
        except FakeMachineError as e:
            raise pytest.UsageError(str(e)) from None
        return run_doctor(print, new_machine(config, "pytest --fakemachine-doctor"))
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    if in_fakemachine():
        return "fakemachine: inside a guest"
    settings = config.stash[settings_key]
    state = config.stash[state_key]
    # Whatever goes wrong here is the environment's: it is reported, and the
    # tests that need a guest skip or error; the session itself goes on.
    unavailable = why_unavailable(state, config)
    if unavailable is not None:
        verb = "skipped" if settings.backend == "auto" else "errors"
        return (f"fakemachine: backend {settings.backend}, unavailable ({unavailable}); "
                f"guest tests: {verb}")  # fmt: skip
    kernel = str(settings.kernel or "linux.uml")
    try:
        version = subprocess.run([kernel, "--version"], capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, check=False, timeout=30,
                                 ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        version = f"--version failed: {e}"
    from .image.cache import cache_note  # noqa: PLC0415 (host only, see the docstring)

    note = cache_note()
    header = (f"fakemachine: backend {settings.backend}, UML kernel {kernel} ({version or '?'})"
              + (f"; {note}" if note else ""))  # fmt: skip
    off = why_shell_off(config) if config.getoption("fakemachine_shell_on_fail") else None
    return header + (f"\nfakemachine: --fakemachine-shell-on-fail is off: {off}" if off else "")


@pytest.fixture
def fakemachine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A fresh :class:`pytest_fakemachine.Machine`, preconfigured from the options.

    Skips the test where UML cannot run (``--fakemachine-backend=auto``).
    """
    if in_fakemachine():
        pytest.fail("the fakemachine fixture cannot boot a guest inside a guest", pytrace=False)
    config = request.config
    state = config.stash[state_key]
    unavailable = why_unavailable(state, config)
    if unavailable is not None:
        if state.settings.backend == "auto":
            pytest.skip(f"fakemachine: {unavailable}")
        # The message says what to install; the fixture's source would only bury it.
        pytest.fail(f"{BackendUnavailable.__name__}: {unavailable}", pytrace=False)
    machine = new_machine(config, f"the fakemachine fixture of {request.node.nodeid}")
    config.hook.pytest_fakemachine_configure(machine=machine, item=request.node)
    yield machine
    if machine._keep and machine.last_workdir is not None:
        state.kept.append(machine.last_workdir)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if in_fakemachine():
        return None
    state = item.config.stash[state_key]
    error: FakeMachineError | None = None
    try:
        mark = marker_of(state, item)
    except FakeMachineError as e:
        mark, error = None, e
    else:
        if mark is None:
            look_ahead(state, item, marked=False)
            return None
    look_ahead(state, item, marked=True)
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    run = state.runs.get(item.nodeid)
    attempts: dict[str, int] = {}  # of a function-scoped test rerun in fresh guests
    try:
        while error is None:
            if _report_known_collect_error(state, item):
                break
            if run is None or run.dead:
                assert mark is not None
                if run is not None:
                    close_run(state, run)
                run = start_run(state, item, mark, attempts)
            if run is None or not run.deliver(item):
                break
            attempts[item.nodeid] = attempts.get(item.nodeid, 0) + 1
            close_run(state, run)
            run = None
    except FakeMachineError as e:
        error = e
    except BaseException:  # Ctrl-C and the like: nothing may keep running
        if run is not None:
            close_run(state, run, graceful=False)
        raise
    if run is not None:
        state.collect_errors += run.collect_reports
        run.collect_reports.clear()
    if error is not None:
        message = f"{type(error).__name__}: {error}"
        for report in failure_reports(item, [], message):
            ihook.pytest_runtest_logreport(report=report)
    state.delivered.add(item.nodeid)
    if state.ahead is not None:  # booted ahead for this test, which did not take it
        state.ahead.discard(item.nodeid)
    if run is not None and (run.dead or not run.remaining(state.delivered)):
        close_run(state, run)
    _teardown_host_nodes(item, nextitem)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _report_known_collect_error(state: State, item: pytest.Item) -> bool:
    """Fail ``item`` at once if a guest could not collect its module."""
    for report in state.collect_errors:
        if covers(report.nodeid, item.nodeid):
            report_collect_error(item, report, state.collect_errors_reported)
            return True
    return False


def _teardown_host_nodes(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Finish host-side fixtures of nodes ``nextitem`` does not share, as pytest's
    own teardown step would (e.g. the module of a host test that ran before)."""
    call = CallInfo.from_call(
        lambda: item.session._setupstate.teardown_exact(nextitem), when="teardown"
    )
    if call.excinfo is not None:
        # Not through pytest_runtest_makereport: see failure_reports.
        report = pytest.TestReport.from_item_and_call(item, call)
        item.ihook.pytest_runtest_logreport(report=report)


@pytest.hookimpl(wrapper=True)
def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> Generator[None, tuple[str, str, Any], tuple[str, str, Any]]:
    """With -v, a marked test's line says what its guest's boot cost."""
    status = yield
    boot = getattr(report, "fakemachine_boot", None)
    category, letter, word = status
    state = config.stash.get(state_key, None)
    if state is None or state.summarizing:  # the short summary keeps pytest's words
        return status
    # Not on a skip or xfail: their reason follows the word and gets what is
    # left of the line, as locally.
    # Nor on a subtest's line: the test's own line says it.
    outcome_only = not report.skipped and not hasattr(report, "wasxfail")
    outcome_only = outcome_only and type(report) is pytest.TestReport
    if (
        boot is not None
        and report.when == "call"
        and outcome_only
        and isinstance(word, str)
        and word
    ):
        word = f"{word} (guest boot {boot:.1f} s)"
    return category, letter, word


def _is_marked(item: pytest.Item) -> bool:
    try:
        return marker_of(item.config.stash[state_key], item) is not None
    except FakeMachineError:
        return True


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: object) -> bool | None:
    """pytest-timeout: a marked test's limit applies in its guest to the test's
    phases (the guest loads pytest-timeout too); on the host it would count
    the boot and interrupt the wait for the guest."""
    if in_fakemachine() or not _is_marked(item):
        return None
    return True


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    if in_fakemachine() or not _is_marked(item):
        return None
    return True


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(state_key, None)
    if state is None:
        return
    for run in list(dict.fromkeys(state.runs.values())):  # left over by -x or --maxfail
        close_run(state, run, graceful=False)
    if state.ahead is not None:  # for tests that did not come (-x, Ctrl-C)
        state.ahead.close()


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(state_key, None)
    if state is not None:
        state.summarizing = True
    if state and state.kept:
        terminalreporter.section("fakemachine: kept work directories")
        for path in state.kept:
            terminalreporter.write_line(str(path))
