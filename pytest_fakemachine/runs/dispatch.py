"""The session's marked tests and their guests, on the host: the per-session
state (in ``config.stash``), each test's resolved marker and the tests that
share its guest, a guest started for them or taken from those booted ahead,
and its closing.

Apart from the plugin's hooks (plugin.py) because it is the host's
bookkeeping: guests load the plugin module, never this one's functions, and
its host-side machinery (``_machine``, ``_runs``, ``_markers``, ``_ahead``,
``_shell``) is imported inside the functions that use it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .. import _settings
from .._config import parse_timeout
from .._errors import BackendUnavailable, FakeMachineError
from .._settings import Settings, settings_key
from .transport import covers, skip_reports

if TYPE_CHECKING:
    from .._machine import Machine
    from .._session import BootOutcome
    from .ahead import BootAhead
    from .markers import MarkedTest
    from .run import GuestRun

__all__ = [
    "State",
    "add_default_images",
    "close_run",
    "console_echo",
    "look_ahead",
    "marker_of",
    "new_machine",
    "own_guest_group",
    "start_run",
    "state_key",
    "why_shell_off",
    "why_unavailable",
]


@dataclass
class State:
    """Per-session state of marked tests (in ``config.stash``)."""

    settings: Settings
    runs: dict[str, GuestRun] = field(default_factory=dict)  # nodeid -> its guest run
    delivered: set[str] = field(default_factory=set)
    marks: dict[str, MarkedTest | Exception | None] = field(default_factory=dict)
    unavailable: dict[str, str | None] = field(default_factory=dict)  # by backend, once checked
    kept: list[Path] = field(default_factory=list)
    # Collection errors met in guests: their modules' other tests boot no guest.
    collect_errors: list[pytest.CollectReport] = field(default_factory=list)
    collect_errors_reported: set[str] = field(default_factory=set)
    summarizing: bool = False  # the terminal summary has begun
    ahead: BootAhead | None = None  # guests booted ahead (function scope), once set up
    ahead_checked: bool = False
    # Function-scoped tests' own guests by module and machine: {nodeid: seconds}.
    own_guests: dict[str, dict[str, float]] = field(default_factory=dict)


state_key = pytest.StashKey[State]()


def console_echo(config: pytest.Config) -> Callable[[str], None] | None:
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


def new_machine(config: pytest.Config, source: str) -> Machine:
    from .._machine import Machine  # noqa: PLC0415 (host only, see the docstring)

    settings = config.stash[settings_key]
    machine = Machine(settings.backend, memory=settings.memory, timeout=settings.timeout,
                      boot_timeout=settings.boot_timeout, kernel=settings.kernel,
                      scratch=settings.scratch, network=settings.network)  # fmt: skip
    machine.source = source
    machine.cpus = settings.cpus if settings.cpus != 1 else None
    machine.env.update(_settings.passenv_env(settings.passenv))
    machine._echo = console_echo(config)
    machine._keep = settings.keep
    return machine


def add_default_images(machine: Machine, settings: Settings) -> Path | None:
    """The images of fakemachine_defaults attached to a fixture's ``machine``, in
    a new directory (returned, for the caller to remove); None if there are none."""
    if not settings.images:
        return None
    image_dir = Path(tempfile.mkdtemp(prefix="fakemachine-images-"))
    try:
        for index, (label, size) in enumerate(settings.images):
            machine.add_image(image_dir / f"{index}.img", size, label=label)
    except BaseException:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise
    return image_dir


def why_shell_off(config: pytest.Config) -> str | None:
    from .shell import why_off  # noqa: PLC0415 (host only, see the docstring)

    return why_off(config)


def why_unavailable(state: State, config: pytest.Config, backend: str | None = None) -> str | None:
    """Why no guest can boot here (None if one can), checked once per session
    and backend (``None``: the session's).

    Any failure of the check is the environment's (a missing kernel, an
    unusable cache...): it becomes the reason, never an error of the session.
    """
    name = backend or state.settings.backend
    if name not in state.unavailable:
        machine = new_machine(config, "the pytest session")
        machine.backend = name
        try:
            machine.check_backend()
            state.unavailable[name] = None
        except BackendUnavailable as e:
            state.unavailable[name] = str(e)
        except Exception as e:
            state.unavailable[name] = f"{type(e).__name__}: {e}"
    return state.unavailable[name]


def own_guest_group(state: State, nodeid: str) -> str | None:
    """The module and machine of the function-scoped guest test ``nodeid`` is
    running in (the guest it would share under module scope), or None."""
    run = state.runs.get(nodeid)
    mark = state.marks.get(nodeid)
    if run is None or not run.function_scope or mark is None or isinstance(mark, Exception):
        return None
    return mark.module_key


def marker_of(state: State, item: pytest.Item) -> MarkedTest | None:
    """``item``'s resolved marker, cached; raises the ConfigError of a bad marker."""
    if item.nodeid not in state.marks:
        from .markers import marked_test  # noqa: PLC0415 (host only, see the docstring)

        try:
            state.marks[item.nodeid] = marked_test(item, state.settings)
        except FakeMachineError as e:
            state.marks[item.nodeid] = e
    mark = state.marks[item.nodeid]
    if isinstance(mark, Exception):
        raise mark
    return mark


def group_of(state: State, item: pytest.Item, mark: MarkedTest) -> list[pytest.Item]:
    """``item`` and the tests after it that share its guest, in run order."""
    if mark.scope == "function":
        return [item]
    from .hostio import xdist_queue  # noqa: PLC0415 (host only, see the docstring)

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
            other_mark = marker_of(state, other)
        except FakeMachineError:
            continue
        if other_mark is not None and other_mark.key == mark.key:
            group.append(other)
    return group


def start_run(
    state: State, item: pytest.Item, mark: MarkedTest, prior_attempts: dict[str, int]
) -> GuestRun | None:
    """Boot a guest for ``item``'s group; None if the test was reported skipped."""
    from .run import new_image_dir  # noqa: PLC0415 (host only, see the docstring)

    config = item.config
    unavailable = why_unavailable(state, config, mark.kwargs.get("backend"))
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
        run = new_run(state, item, mark, image_dir, prior_attempts, configure=True)
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
            close_run(state, run, graceful=False)
            raise
    return run


def new_run(
    state: State, item: pytest.Item, mark: MarkedTest, image_dir: Path,
    prior_attempts: dict[str, int], *, configure: bool,
) -> GuestRun:  # fmt: skip
    """An unstarted run of ``item``'s group; its machine from the options, the
    marker and (if ``configure``) the configure hook."""
    from .markers import apply_marker  # noqa: PLC0415 (host only, see the docstring)
    from .run import GuestRun  # noqa: PLC0415 (host only, see the docstring)

    config = item.config
    try:
        machine = new_machine(config, mark.source)
        apply_marker(machine, mark, image_dir)
        if configure:
            config.hook.pytest_fakemachine_configure(machine=machine, item=item)
        timeout = parse_timeout(machine.timeout, mark.source)
    except BaseException:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise

    def on_outcome(outcome: BootOutcome) -> None:
        config.hook.pytest_fakemachine_guest_result(machine=machine, item=item, outcome=outcome)

    run = GuestRun(config, group_of(state, item, mark), machine, image_dir, on_outcome, timeout,
                   function_scope=mark.scope == "function", prior_attempts=prior_attempts,
                   collect_errors_reported=state.collect_errors_reported)  # fmt: skip
    if config.getoption("fakemachine_shell_on_fail") and why_shell_off(config) is None:
        run.shell_on_fail = True
    return run


def booster_of(state: State, config: pytest.Config) -> BootAhead | None:
    """The session's guests booted ahead, set up at the first marked test; None if off."""
    if not state.ahead_checked:
        state.ahead_checked = True
        from .ahead import BootAhead, cpu_share  # noqa: PLC0415 (host only, see the docstring)
        from .hostio import wants_terminal  # noqa: PLC0415

        slots = cpu_share()
        if (state.settings.boot_ahead and slots > 1 and not wants_terminal(config)
                and why_unavailable(state, config) is None):  # fmt: skip
            state.ahead = BootAhead(slots, lambda item: prepare_ahead(state, item))
    return state.ahead


def look_ahead(state: State, item: pytest.Item, *, marked: bool) -> None:
    """At ``item``'s start: which tests to boot ahead for (and, for a host
    test, which has no deliver loop to boot them, boot them now)."""
    from .hostio import xdist_queue  # noqa: PLC0415 (host only, see the docstring)

    booster = booster_of(state, item.config) if marked else state.ahead
    if booster is not None:
        booster.plan(item, xdist_queue(item.config), lambda other: wants_guest(state, other))
        if not marked:
            booster.tick(state.runs.values())


def wants_guest(state: State, item: pytest.Item) -> bool:
    """Whether ``item`` will need a function-scoped guest of its own."""
    if item.nodeid in state.delivered:
        return False
    try:
        mark = marker_of(state, item)
    except FakeMachineError:
        return False
    return (mark is not None and mark.scope == "function"
            and not any(covers(r.nodeid, item.nodeid) for r in state.collect_errors))  # fmt: skip


def prepare_ahead(state: State, item: pytest.Item) -> GuestRun:
    """An unstarted run for ``item``, to boot ahead: no configure hook yet."""
    from .run import new_image_dir  # noqa: PLC0415 (host only, see the docstring)

    mark = marker_of(state, item)
    assert mark is not None
    return new_run(state, item, mark, new_image_dir(), {}, configure=False)


def close_run(state: State, run: GuestRun, *, graceful: bool = True) -> None:
    for member in run.items:
        if state.runs.get(member.nodeid) is run:
            del state.runs[member.nodeid]
    if state.settings.keep and run.session is not None:
        state.kept.append(run.session.workdir)
    run.close(graceful=graceful)
