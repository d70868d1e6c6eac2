"""The pytest plugin: options, the marker, the ``fakemachine`` fixture, and the
run-test protocol that runs marked tests in a guest and replays their reports.

Guests load this plugin too (for the marker, options and hooks), and every
import costs there; so the host-side machinery (``_machine``, ``_runs``,
``_doctor``, ``_shell`` with the terminal relay) is imported inside the
functions that only run on the host.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _pytest.runner import CallInfo

from . import _settings, hooks
from ._config import parse_timeout
from ._errors import BackendUnavailable, FakeMachineError
from ._inguest import in_fakemachine
from ._settings import Settings, settings_key
from ._transport import covers, failure_reports, report_collect_error, skip_reports

if TYPE_CHECKING:
    from ._ahead import BootAhead
    from ._machine import Machine
    from ._markers import MarkedTest
    from ._runs import GuestRun
    from ._session import BootOutcome

MARKER_HELP = (
    "fakemachine(images=None, volumes=None, memory=None, scratch=None, network=False, "
    "env=None, passenv=None, timeout=None, boot_timeout=None, scope='function'): run the test "
    "(setup, call and teardown) as root inside a User-Mode-Linux guest booted from the host's /usr"
)


@dataclass
class _State:
    """Per-session state of marked tests (in ``config.stash``)."""

    settings: Settings
    runs: dict[str, GuestRun] = field(default_factory=dict)  # nodeid -> its guest run
    delivered: set[str] = field(default_factory=set)
    marks: dict[str, MarkedTest | Exception | None] = field(default_factory=dict)
    unavailable: str | None = None  # why no guest can boot, once checked
    checked: bool = False
    kept: list[Path] = field(default_factory=list)
    # Collection errors met in guests: their modules' other tests boot no guest.
    collect_errors: list[pytest.CollectReport] = field(default_factory=list)
    collect_errors_reported: set[str] = field(default_factory=set)
    summarizing: bool = False  # the terminal summary has begun
    ahead: BootAhead | None = None  # guests booted ahead (function scope), once set up
    ahead_checked: bool = False


_state_key = pytest.StashKey[_State]()


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
    config.stash[_state_key] = _State(settings)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("fakemachine_doctor", False):
        from ._doctor import run_doctor  # noqa: PLC0415 (host only, see the docstring)

        # Before pytest_configure: the settings are resolved here for the doctor.
        try:
            config.stash[settings_key] = _settings.resolve(config)
        except FakeMachineError as e:
            raise pytest.UsageError(str(e)) from None
        return run_doctor(print, _new_machine(config, "pytest --fakemachine-doctor"))
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    if in_fakemachine():
        return "fakemachine: inside a guest"
    settings = config.stash[settings_key]
    state = config.stash[_state_key]
    # Whatever goes wrong here is the environment's: it is reported, and the
    # tests that need a guest skip or error; the session itself goes on.
    unavailable = _unavailable(state, config)
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
    from ._initramfs import cache_note  # noqa: PLC0415 (host only, see the docstring)

    note = cache_note()
    header = (f"fakemachine: backend {settings.backend}, UML kernel {kernel} ({version or '?'})"
              + (f"; {note}" if note else ""))  # fmt: skip
    off = _why_shell_off(config) if config.getoption("fakemachine_shell_on_fail") else None
    return header + (f"\nfakemachine: --fakemachine-shell-on-fail is off: {off}" if off else "")


def _echo(config: pytest.Config) -> Callable[[str], None] | None:
    """The live console echo of --fakemachine-show-boot, around pytest's capture."""
    if not config.stash[settings_key].show_boot:
        return None
    capman = config.pluginmanager.getplugin("capturemanager")
    writer = config.get_terminal_writer()

    def echo(text: str) -> None:
        with capman.global_and_fixture_disabled():
            writer.write(text)
            writer.flush()

    return echo


def _new_machine(config: pytest.Config, source: str) -> Machine:
    from ._machine import Machine  # noqa: PLC0415 (host only, see the docstring)

    settings = config.stash[settings_key]
    machine = Machine(settings.backend, memory=settings.memory, timeout=settings.timeout,
                      boot_timeout=settings.boot_timeout, kernel=settings.kernel)  # fmt: skip
    machine.source = source
    machine.env.update(_settings.passenv_env(settings.passenv))
    machine._echo = _echo(config)
    machine._keep = settings.keep
    return machine


@pytest.fixture
def fakemachine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A fresh :class:`pytest_fakemachine.Machine`, preconfigured from the options.

    Skips the test where UML cannot run (``--fakemachine-backend=auto``).
    """
    if in_fakemachine():
        pytest.fail("the fakemachine fixture cannot boot a guest inside a guest", pytrace=False)
    config = request.config
    state = config.stash[_state_key]
    unavailable = _unavailable(state, config)
    if unavailable is not None:
        if state.settings.backend == "auto":
            pytest.skip(f"fakemachine: {unavailable}")
        # The message says what to install; the fixture's source would only bury it.
        pytest.fail(f"{BackendUnavailable.__name__}: {unavailable}", pytrace=False)
    machine = _new_machine(config, f"the fakemachine fixture of {request.node.nodeid}")
    config.hook.pytest_fakemachine_configure(machine=machine, item=request.node)
    yield machine
    if machine._keep and machine.last_workdir is not None:
        state.kept.append(machine.last_workdir)


def _why_shell_off(config: pytest.Config) -> str | None:
    from ._shell import why_off  # noqa: PLC0415 (host only, see the docstring)

    return why_off(config)


def _unavailable(state: _State, config: pytest.Config) -> str | None:
    """Why no guest can boot here (None if one can), checked once per session.

    Any failure of the check is the environment's (a missing kernel, an
    unusable cache...): it becomes the reason, never an error of the session.
    """
    if not state.checked:
        state.checked = True
        try:
            _new_machine(config, "the pytest session").check_backend()
        except BackendUnavailable as e:
            state.unavailable = str(e)
        except Exception as e:
            state.unavailable = f"{type(e).__name__}: {e}"
    return state.unavailable


def _mark(state: _State, item: pytest.Item) -> MarkedTest | None:
    """``item``'s resolved marker, cached; raises the ConfigError of a bad marker."""
    if item.nodeid not in state.marks:
        from ._markers import marked_test  # noqa: PLC0415 (host only, see the docstring)

        try:
            state.marks[item.nodeid] = marked_test(item, state.settings)
        except FakeMachineError as e:
            state.marks[item.nodeid] = e
    mark = state.marks[item.nodeid]
    if isinstance(mark, Exception):
        raise mark
    return mark


def _group(state: _State, item: pytest.Item, mark: MarkedTest) -> list[pytest.Item]:
    """``item`` and the tests after it that share its guest, in run order."""
    if mark.scope == "function":
        return [item]
    from ._runs import xdist_queue  # noqa: PLC0415 (host only, see the docstring)

    items = item.session.items
    queued = xdist_queue(item.config)
    if queued is None:
        candidates = items[items.index(item) :]
    else:  # an xdist worker runs only what it was sent: the guest takes no more
        candidates = [item, *(items[i] for i in queued)]
    group = []
    for other in candidates:
        if other.nodeid in state.delivered:
            continue
        try:
            other_mark = _mark(state, other)
        except FakeMachineError:
            continue
        if other_mark is not None and other_mark.key == mark.key:
            group.append(other)
    return group


def _start_run(
    state: _State, item: pytest.Item, mark: MarkedTest, prior_attempts: dict[str, int]
) -> GuestRun | None:
    """Boot a guest for ``item``'s group; None if the test was reported skipped."""
    from ._runs import new_image_dir  # noqa: PLC0415 (host only, see the docstring)

    config = item.config
    unavailable = _unavailable(state, config)
    if unavailable is not None:
        if state.settings.backend == "auto":
            for report in skip_reports(item, f"fakemachine: {unavailable}"):
                item.ihook.pytest_runtest_logreport(report=report)
            return None
        raise BackendUnavailable(unavailable)
    # A guest booted ahead (for a first attempt) shares its image directory.
    booster = state.ahead
    ahead = booster.take(item) if booster is not None and not prior_attempts else None
    image_dir = ahead.run.image_dir if ahead is not None else new_image_dir()
    try:
        run = _new_run(state, item, mark, image_dir, prior_attempts, configure=True)
    except BaseException:
        if booster is not None and ahead is not None:
            booster.drop(ahead)
        raise
    if booster is not None:
        run.tick = lambda: booster.tick(state.runs.values())
        if ahead is not None:
            run = booster.hand_over(ahead, run)
    for member in run.items:
        state.runs[member.nodeid] = run
    if run.session is None:  # not booted ahead
        try:
            run.start()
        except BaseException:
            # No power-off is coming from a guest that never got its job (a
            # Ctrl-C during the launch): waiting for one would cost 30 s.
            _close(state, run, graceful=False)
            raise
    return run


def _new_run(
    state: _State, item: pytest.Item, mark: MarkedTest, image_dir: Path,
    prior_attempts: dict[str, int], *, configure: bool,
) -> GuestRun:  # fmt: skip
    """An unstarted run of ``item``'s group; its machine from the options, the
    marker and (if ``configure``) the configure hook."""
    from ._markers import apply_marker  # noqa: PLC0415 (host only, see the docstring)
    from ._runs import GuestRun  # noqa: PLC0415 (host only, see the docstring)

    config = item.config
    try:
        machine = _new_machine(config, mark.source)
        apply_marker(machine, mark, image_dir)
        if configure:
            config.hook.pytest_fakemachine_configure(machine=machine, item=item)
        timeout = parse_timeout(machine.timeout, mark.source)
    except BaseException:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise

    def on_outcome(outcome: BootOutcome) -> None:
        config.hook.pytest_fakemachine_guest_result(machine=machine, item=item, outcome=outcome)

    run = GuestRun(config, _group(state, item, mark), machine, image_dir, on_outcome, timeout,
                   function_scope=mark.scope == "function", prior_attempts=prior_attempts,
                   collect_errors_reported=state.collect_errors_reported)  # fmt: skip
    if config.getoption("fakemachine_shell_on_fail") and _why_shell_off(config) is None:
        run.shell_on_fail = True
    return run


def _booster(state: _State, config: pytest.Config) -> BootAhead | None:
    """The session's guests booted ahead, set up at the first marked test; None if off."""
    if not state.ahead_checked:
        state.ahead_checked = True
        from ._ahead import BootAhead, cpu_share  # noqa: PLC0415 (host only, see the docstring)
        from ._runs import wants_terminal  # noqa: PLC0415

        slots = cpu_share()
        if (state.settings.boot_ahead and slots > 1 and not wants_terminal(config)
                and _unavailable(state, config) is None):  # fmt: skip
            state.ahead = BootAhead(slots, lambda item: _prepare_ahead(state, item))
    return state.ahead


def _look_ahead(state: _State, item: pytest.Item, *, marked: bool) -> None:
    """At ``item``'s start: which tests to boot ahead for (and, for a host
    test, which has no deliver loop to boot them, boot them now)."""
    from ._runs import xdist_queue  # noqa: PLC0415 (host only, see the docstring)

    booster = _booster(state, item.config) if marked else state.ahead
    if booster is not None:
        booster.plan(item, xdist_queue(item.config), lambda other: _wants_guest(state, other))
        if not marked:
            booster.tick(state.runs.values())


def _wants_guest(state: _State, item: pytest.Item) -> bool:
    """Whether ``item`` will need a function-scoped guest of its own."""
    if item.nodeid in state.delivered:
        return False
    try:
        mark = _mark(state, item)
    except FakeMachineError:
        return False
    return (mark is not None and mark.scope == "function"
            and not any(covers(r.nodeid, item.nodeid) for r in state.collect_errors))  # fmt: skip


def _prepare_ahead(state: _State, item: pytest.Item) -> GuestRun:
    """An unstarted run for ``item``, to boot ahead: no configure hook yet."""
    from ._runs import new_image_dir  # noqa: PLC0415 (host only, see the docstring)

    mark = _mark(state, item)
    assert mark is not None
    return _new_run(state, item, mark, new_image_dir(), {}, configure=False)


def _close(state: _State, run: GuestRun, *, graceful: bool = True) -> None:
    for member in run.items:
        if state.runs.get(member.nodeid) is run:
            del state.runs[member.nodeid]
    if state.settings.keep and run.session is not None:
        state.kept.append(run.session.workdir)
    run.close(graceful=graceful)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if in_fakemachine():
        return None
    state = item.config.stash[_state_key]
    error: FakeMachineError | None = None
    try:
        mark = _mark(state, item)
    except FakeMachineError as e:
        mark, error = None, e
    else:
        if mark is None:
            _look_ahead(state, item, marked=False)
            return None
    _look_ahead(state, item, marked=True)
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
                    _close(state, run)
                run = _start_run(state, item, mark, attempts)
            if run is None or not run.deliver(item):
                break
            attempts[item.nodeid] = attempts.get(item.nodeid, 0) + 1
            _close(state, run)
            run = None
    except FakeMachineError as e:
        error = e
    except BaseException:  # Ctrl-C and the like: nothing may keep running
        if run is not None:
            _close(state, run, graceful=False)
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
        _close(state, run)
    _teardown_host_nodes(item, nextitem)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _report_known_collect_error(state: _State, item: pytest.Item) -> bool:
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
    state = config.stash.get(_state_key, None)
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
        return _mark(item.config.stash[_state_key], item) is not None
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
    state = session.config.stash.get(_state_key, None)
    if state is None:
        return
    for run in list(dict.fromkeys(state.runs.values())):  # left over by -x or --maxfail
        _close(state, run, graceful=False)
    if state.ahead is not None:  # for tests that did not come (-x, Ctrl-C)
        state.ahead.close()


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(_state_key, None)
    if state is not None:
        state.summarizing = True
    if state and state.kept:
        terminalreporter.section("fakemachine: kept work directories")
        for path in state.kept:
            terminalreporter.write_line(str(path))
