"""What the host and the guest-side runner say to each other (standard library only).

The host writes a :class:`Spec` as JSON into the run's work directory; the
runner appends events to ``spec["events"]``, one JSON object a line, flushed
one by one, which the host reads as they come and dispatches by their
``event`` name (``runs.run.GuestRun``: one ``on_<name>`` method each; an
unknown name is an error). Reports travel as pytest's own serialization
(``pytest_report_to_serializable``).
"""

from __future__ import annotations

from typing import Any, TypedDict, Union

__all__ = [
    "EVENTS",
    "CollectReportEvent",
    "CoverageSpec",
    "DoneEvent",
    "Event",
    "ExitEvent",
    "FinishEvent",
    "GoSpec",
    "NodeEvent",
    "ReportEvent",
    "ShellSpec",
    "Spec",
    "TerminalEvent",
    "TerminalSpec",
    "WarningEvent",
]


class TerminalSpec(TypedDict):
    """The user's terminal, as two serial lines of the guest."""

    line: str  # the terminal, both ways
    winch: str  # window sizes, "ROWS COLS" lines
    term: str  # the host's TERM


class ShellSpec(TypedDict):
    ps1: str


class GoSpec(TypedDict):
    """Booted ahead: wait on ``line`` for the host's word; ``waiting`` says it waits."""

    line: str
    waiting: str


class CoverageSpec(TypedDict):
    data_file: str
    config_file: Union[str, bool]
    source: Any
    source_pkgs: Any
    include: Any
    omit: Any
    branch: Any


class _SpecOptions(TypedDict, total=False):
    debugger: bool  # --pdb/--trace/-s with the user's terminal
    terminal: TerminalSpec
    shell: ShellSpec
    go: GoSpec


class Spec(_SpecOptions):
    args: list[str]  # the guest pytest's arguments
    plugins: list[str]  # modules of the host's plugins, registered in the guest
    nodeids: list[str]  # the tests to run, in order
    options: dict[str, Any]  # the host session's option values the guest takes over
    sys_path: list[str]
    invocation_dir: str
    events: str  # the file the events go to
    markup: bool
    one_attempt: bool  # a rerun goes to a fresh guest
    prior_attempts: dict[str, int]  # of each test, in earlier guests
    coverage: CoverageSpec | None
    terminal_log: str
    tmp_path_dir: str  # where kept tmp_paths go
    tmp_path_policy: str


class NodeEvent(TypedDict):
    """``start`` (a test begins), ``rerun`` (it reruns in a fresh guest)."""

    event: str
    nodeid: str


class ReportEvent(TypedDict):
    event: str  # "report"
    nodeid: str
    report: dict[str, Any]


class CollectReportEvent(TypedDict):
    event: str  # "collectreport": a failed collection
    report: dict[str, Any]


class FinishEvent(TypedDict):
    event: str  # "finish": the test's whole protocol, reruns included
    nodeid: str
    output: dict[str, int]  # where the runner's stdout and stderr files end
    tmp_path: str | None  # the kept tmp_path's name in tmp_path_dir


class WarningEvent(TypedDict):
    event: str  # "warning"
    nodeid: str
    message: str
    category: list[str]  # [module, qualname]
    filename: str
    lineno: int


class TerminalEvent(TypedDict, total=False):
    """``shell``/``shell-end`` (a shell on the terminal), ``pdb``/``pdb-end``."""

    event: str
    nodeid: str


class ExitEvent(TypedDict):
    """``exit``: the guest's session was stopped by ``pytest.exit()`` (in a test,
    a fixture, a hook; also the debugger's quit, which pytest turns into one)."""

    event: str
    reason: str
    returncode: int | None  # pytest.exit's; None: pytest's "interrupted" status


class DoneEvent(TypedDict):
    event: str  # "done"
    exitstatus: int


Event = Union[
    NodeEvent, ReportEvent, CollectReportEvent, FinishEvent, WarningEvent, TerminalEvent,
    ExitEvent, DoneEvent,
]  # fmt: skip
# Every event name the runner sends.
EVENTS = ("start", "report", "collectreport", "rerun", "finish", "warning", "shell", "shell-end",
          "pdb", "pdb-end", "exit", "done")  # fmt: skip
