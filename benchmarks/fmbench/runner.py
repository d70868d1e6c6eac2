"""The one place for how every subcommand measures.

Interleaved rounds (:func:`interleave`: one of each step per round, so a
burst of load from elsewhere hits every row alike), medians
(:func:`median`, :class:`Row`), the CPU time of what a step started
(:func:`children_cpu`, :func:`timed`), and processes: find, kill and reap
only what the benchmark started, run a step in its own session.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
_PR_SET_CHILD_SUBREAPER = 36
_SAFE_PATH = re.compile(r"[A-Za-z0-9/._+-]+")  # what may go on the kernel command line


class StepFailed(Exception):
    """One measurement did not produce a valid number; the message says why."""


def set_child_subreaper() -> bool:
    """Orphaned descendants (a guest whose parent died...) are re-parented to us, not init."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    comm: str


def processes() -> dict[int, ProcInfo]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = ProcInfo(
            int(entry), int(fields[1]), int(fields[2]), int(fields[3]), fields[0], comm
        )
    return table


def descendants(root: int, table: dict[int, ProcInfo] | None = None) -> list[ProcInfo]:
    """Every process below ``root`` in the process tree (zombies included)."""
    table = processes() if table is None else table
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: list[ProcInfo] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(table[pid])
        todo += children.get(pid, [])
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _reap_adopted() -> None:
    """Collect the exit status of orphans re-parented to us (they would stay zombies)."""
    me = os.getpid()
    for info in processes().values():
        if info.ppid == me and info.state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)


def sweep(grace: float = 3.0) -> list[str]:
    """Kill every live descendant of this process; describe each one killed.

    Between measurements this process has no children of its own, so whatever
    is found is something a measurement left behind. Helpers that exit on
    their own (libslirp-helper --exit-with-parent...) get ``grace`` seconds.
    """
    deadline = time.monotonic() + grace
    while True:
        _reap_adopted()
        alive = [p for p in descendants(os.getpid()) if p.state != "Z"]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    described = []
    for info in alive:
        described.append(f"{info.comm} (pid {info.pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while alive and time.monotonic() < end:  # wait for them to die, and reap ours
        _reap_adopted()
        table = processes()
        alive = [p for p in alive if p.pid in table and table[p.pid].state != "Z"]
        if alive:
            time.sleep(0.05)
    _reap_adopted()
    return described


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# PYTHONDONTWRITEBYTECODE: some sandboxes set it globally; a user's machine
# writes bytecode caches, and reading them is part of every start-up measured.
_NOT_PASSED_ON = {
    "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONDONTWRITEBYTECODE",
}  # fmt: skip


def clean_env() -> dict[str, str]:
    """Our environment without what would change how pytest loads plugins or Python starts."""
    return {k: v for k, v in os.environ.items() if k not in _NOT_PASSED_ON}


def private_tree(tmp: Path, tree: str, package: str) -> Path:
    """A copy of ``tree``'s ``package`` under ``tmp``, for PYTHONPATH, named after ``tree``.

    With bytecode caches on (see clean_env), Python writes ``__pycache__``
    beside the sources it imports: into the copy, never into ``tree`` (a
    reference checkout may be read-only, or shared).
    """
    source = Path(tree).resolve()
    copy = tmp / "trees" / source.name
    if not copy.exists():
        shutil.copytree(
            source / package,
            copy / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return copy


def tail(text: str | bytes, lines: int = 8) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def python_error(stderr: str) -> str:
    """The exception line of a Python traceback in ``stderr``, then what follows it."""
    lines = stderr.rstrip().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Timeout|Exit)\b", line):
            return "\n".join(lines[i : i + 40])
    return "\n".join(lines[-40:])


def run_step(
    argv: list[str], cwd: Path, timeout: float, what: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` in its own session, output captured; StepFailed after ``timeout``.

    ``env`` None: :func:`clean_env`.
    """
    try:
        return subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, start_new_session=True, check=False,
            env=clean_env() if env is None else env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{what} took over {timeout:g} s") from None


def children_cpu() -> float:
    """CPU seconds (user + system) of every descendant reaped so far: a step's
    is the difference around it (its pytest, and the guests' UML processes,
    which pytest reaps)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpus() -> int:
    """The CPUs this benchmark (and so each step) may run on."""
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    base = tempfile.gettempdir()
    if not _SAFE_PATH.fullmatch(base):
        base = "/tmp"  # the paths go on the kernel command line
    tmp = Path(tempfile.mkdtemp(prefix="fakemachine-bench-", dir=base))
    try:
        yield tmp
    finally:
        sweep(grace=0)  # first, so no guest still writes there
        shutil.rmtree(tmp, ignore_errors=True)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds of ``fn()``, and the CPU seconds of the children it reaped."""
    start, cpu = time.monotonic(), children_cpu()
    fn()
    return time.monotonic() - start, children_cpu() - cpu


def median(values: Iterable[float]) -> float | None:
    found = list(values)
    return statistics.median(found) if found else None


@dataclass
class Row:
    """One measurement's values over the rounds, and why a round gave none."""

    key: str
    label: str
    unit: str = "s"
    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return median(self.values)

    @property
    def attempts(self) -> int:
        return len(self.values) + len(self.failures)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} MiB" if unit == "MiB" else f"{value:.2f} s"


@dataclass
class Step:
    """One measurement of a round: ``run`` records it and says what it took."""

    label: str
    run: Callable[[int], str]  # the round number -> a line for the log
    failed: Callable[[str], None]  # records why it produced nothing
    left: Callable[[str], None] | None = None  # records what it left running (and was killed)


def row_step(row: Row, fn: Callable[[], float]) -> Step:
    """A step that appends ``fn()`` to ``row``."""

    def run(round_no: int) -> str:
        row.values.append(fn())
        return fmt_value(row.values[-1], row.unit)

    return Step(row.label, run, row.failures.append)


def interleave(
    steps: list[Step],
    runs: int,
    log: Callable[[str], None],
    after: Callable[[Step, int], None] | None = None,
) -> list[str]:
    """``runs`` rounds of every step in order; the problems, one line each.

    A step that raises StepFailed is recorded (``step.failed``) and the round
    goes on. After each step whatever it left running is killed and named.
    ``after(step, round_no)``: called after each step and its sweep. Every
    problem is returned; a caller that tolerates some drops them.
    """
    problems: list[str] = []
    for round_no in range(1, runs + 1):
        for step in steps:
            log(f"bench: round {round_no}/{runs}: {step.label} ...")
            try:
                log(f"bench:   {step.run(round_no)}")
            except StepFailed as e:
                step.failed(str(e))
                problems.append(f"{step.label}: {str(e).splitlines()[0]}")
                log(f"bench:   failed: {str(e).splitlines()[0]}")
            stray = sweep()
            if stray:
                message = f"round {round_no} left running, killed: {', '.join(stray)}"
                problems.append(f"{step.label}: {message}")
                log(f"bench:   {message}")
                if step.left is not None:
                    step.left(message)
            if after is not None:
                after(step, round_no)
    return problems


def other_guests() -> int:
    """linux.uml processes running now (at the start, none of them is ours)."""
    return sum(1 for p in processes().values() if p.comm == "linux.uml")


@dataclass(frozen=True)
class Started:
    """When the benchmark started, the load then, and the guests others ran."""

    time: float
    load: tuple[float, float, float]
    others: int

    @classmethod
    def now(cls) -> Started:
        return cls(time.time(), os.getloadavg(), other_guests())
