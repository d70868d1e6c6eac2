"""The host's hooks for marked tests: the run-test protocol that runs them in
guests and replays their reports, their lines in the terminal, their time
limits, and the session's end.

A plugin object registered by the plugin's ``pytest_configure`` on the host
only (as pytest-xdist registers its ``DSession`` on the controller): a guest
that loads the plugin never imports this module. Which guest each marked
test gets, and the session's state, are :mod:`.dispatch`'s.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from _pytest.runner import CallInfo

from .. import backend as backends
from .._errors import FakeMachineError
from .._settings import settings_key
from ..image.cache import cache_note
from .dispatch import (
    State,
    close_run,
    look_ahead,
    marker_of,
    own_guest_group,
    start_run,
    state_key,
    why_shell_off,
    why_unavailable,
)
from .transport import covers, failure_reports, report_collect_error

__all__ = ["HostSession"]


class HostSession:
    """The plugin's host-side hooks (registered as ``fakemachine-host``)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_report_header(self, config: pytest.Config) -> str | None:
        settings = config.stash[settings_key]
        state = config.stash[state_key]
        # Whatever goes wrong here is the environment's: it is reported, and the
        # tests that need a guest skip or error; the session itself goes on.
        unavailable = why_unavailable(state, config)
        if unavailable is not None:
            verb = "skipped" if settings.backend == "auto" else "errors"
            return (f"fakemachine: backend {settings.backend}, unavailable ({unavailable}); "
                    f"guest tests: {verb}")  # fmt: skip
        backend = backends.get(settings.backend, "the pytest session", settings.kernel)
        chosen = settings.backend
        if chosen == "auto":  # which one, and why: it may differ between a laptop and CI
            name, why = backends.auto_choice()
            chosen = f"auto: {name}" + (f" ({why})" if why != f"{name} runs here" else "")
        note = cache_note()
        header = (f"fakemachine: backend {chosen}, {backend.describe(settings.kernel)}"
                  + (f"; {note}" if note else ""))  # fmt: skip
        off = why_shell_off(config) if config.getoption("fakemachine_shell_on_fail") else None
        return header + (f"\nfakemachine: --fakemachine-shell-on-fail is off: {off}" if off else "")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
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
        if run is not None and run.events is not None:
            state.collect_errors += run.events.collect_reports
            run.events.collect_reports.clear()
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

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(
        self, report: pytest.TestReport, config: pytest.Config
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

    @pytest.hookimpl(tryfirst=True)  # before xdist's worker sends the report on
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Count the time of function-scoped guests that could have been shared.

        The group rides on the report, so that under xdist the controller,
        which writes the summary, counts its workers' guests too.
        """
        state = self.config.stash.get(state_key, None)
        if state is None:
            return
        group = getattr(report, "fakemachine_own_guest", None)
        if group is None:
            group = own_guest_group(state, report.nodeid)
            if group is None:
                return
            report.fakemachine_own_guest = group  # type: ignore[attr-defined]
        seconds = state.own_guests.setdefault(str(group), {})
        seconds[report.nodeid] = seconds.get(report.nodeid, 0.0) + report.duration

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: object) -> bool | None:
        """pytest-timeout: a marked test's limit applies in its guest to the test's
        phases (the guest loads pytest-timeout too); on the host it would count
        the boot and interrupt the wait for the guest."""
        if not _is_marked(item):
            return None
        return True

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> bool | None:
        if not _is_marked(item):
            return None
        return True

    @pytest.hookimpl(trylast=True)  # after the users' own: their guests are still there
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        state = session.config.stash.get(state_key, None)
        if state is None:
            return
        for run in list(dict.fromkeys(state.runs.values())):  # left over by -x or --maxfail
            close_run(state, run, graceful=False)
        if state.ahead is not None:  # for tests that did not come (-x, Ctrl-C)
            state.ahead.close()

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        state = terminalreporter.config.stash.get(state_key, None)
        if state is not None:
            state.summarizing = True
        if state and state.kept:
            terminalreporter.section("fakemachine: kept work directories")
            for path in state.kept:
                terminalreporter.write_line(str(path))
        note = None if state is None else _unshared_note(state)
        if note is not None and terminalreporter.verbosity >= 0:
            terminalreporter.write_line(note)


def _unshared_note(state: State) -> str | None:
    """One line on the modules whose function-scoped tests each booted a guest
    of the same machine, where one module-scoped guest would have done."""
    groups = {key: tests for key, tests in state.own_guests.items() if len(tests) >= 2}
    if not groups:
        return None
    count = sum(len(tests) for tests in groups.values())
    seconds = sum(sum(tests.values()) for tests in groups.values())
    modules = len({key.split("\0")[0] for key in groups})  # module path, then machine
    where = "one module" if modules == 1 else f"{modules} modules"
    return (
        f"fakemachine: {count} tests in {where} booted a guest each ({seconds:.1f} s in all) "
        'for the same machine; scope="module" on their marker (or fakemachine_defaults = '
        "scope=module) shares one guest per module"
    )


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


def _is_marked(item: pytest.Item) -> bool:
    try:
        return marker_of(item.config.stash[state_key], item) is not None
    except FakeMachineError:
        return True
