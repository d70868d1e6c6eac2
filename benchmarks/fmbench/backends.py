"""``bench.py backends``: the trivial rows and the real-suite rows per backend, side by side.

One interleaved run over ``--backend`` (default ``uml,qemu``), a column per
backend. Each round, for each backend still running rounds:

- ``Machine(backend=B).run('true')`` as a whole Python process: wall time,
  and the CPU time of it and its children (its guest included);
- one marked test: a whole ``pytest`` process (pytest and this plugin only)
  on a one-test file marked ``@pytest.mark.fakemachine(backend=B)``;
- the real suite (benchmarks/realsuite/) in one guest (``scope="module"``,
  ``--fakemachine-backend=B``), and once a round as root on the host: the
  guest/host ratio of the tests' summed time, as ``realsuite`` computes it.

Compare ratios within one run: each cell after the first column gives its
ratio to the first column's. QEMU without KVM emulates every instruction
(TCG, 25-40 s a boot on 2 cores), so ``qemu`` runs ``--qemu-runs`` rounds
(default 1) while the others run ``--runs``. A backend that cannot run here
(``Machine(backend=B).check_backend()`` raises, quickly: KVM that opens but
runs no guest) is "not measured here", with the reason and the command to
run where it can. ``check_backend()`` also builds each backend's initramfs,
so no timed run pays for it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_fakemachine import FakeMachineError, Machine

from . import package as fm
from .realsuite import Variant, common_tests, module_ratio, prepare, run_into, tests_time
from .report import machine_lines, write_markdown
from .rows import pytest_run, run_true_process
from .runner import (
    Row,
    Started,
    Step,
    interleave,
    median,
    timed,
    workspace,
)

BACKENDS = ("uml", "kvm", "qemu")
SLOW = "qemu"  # TCG emulation: the one backend that runs --qemu-runs rounds
BOOT_TIMEOUT = 600  # seconds: a QEMU boot under emulation on a busy machine
RUN_TIMEOUT = 1200.0  # one whole Machine().run('true') process
MARK_START = "<!-- backends:start -->"
MARK_END = "<!-- backends:end -->"
ONE_TEST = f"""\
import pytest


@pytest.mark.fakemachine(backend="{{backend}}", boot_timeout={BOOT_TIMEOUT})
def test_one():
    pass
"""
ROWS = {
    "run_wall": "Machine(backend=B).run('true'), whole process: wall",
    "run_cpu": "  the same: CPU (user+sys, its guest included)",
    "one_wall": "one marked test, whole pytest process: wall",
    "one_cpu": "  the same: CPU (pytest and its guest)",
    "suite_guest": "real suite, scope=module: its tests in the guest",
    "suite_ratio": "  guest/host (the same tests, root on the host)",
    "suite_wall": "  the whole pytest run (boot included)",
}
TRIVIAL_ROWS = ("run_wall", "run_cpu", "one_wall", "one_cpu")


def parse_backends(text: str) -> list[str]:
    """``uml,qemu`` -> ["uml", "qemu"] (an argparse type: the error names the bad word)."""
    found = [word.strip() for word in text.split(",") if word.strip()]
    for word in found:
        if word not in BACKENDS:
            raise argparse.ArgumentTypeError(
                f"{word!r} in {text!r} is not a backend (one of {', '.join(BACKENDS)})"
            )
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} names no backend")
    return list(dict.fromkeys(found))


@dataclass
class Column:
    """One backend's measurements, or why it is not measured here."""

    backend: str
    runs: int
    unavailable: str | None = None
    rows: dict[str, Row] = field(init=False)
    by_round: dict[str, dict[int, float]] = field(init=False)  # row -> round -> value
    suite: Variant = field(init=False)  # its real-suite runs in one guest (scope=module)

    def __post_init__(self) -> None:
        self.rows = {key: Row(key, label) for key, label in ROWS.items()}
        self.by_round = {key: {} for key in ROWS}
        self.suite = Variant(self.backend, f"{self.backend}: scope=module")

    def record(self, key: str, round_no: int, value: float) -> None:
        self.rows[key].values.append(value)
        self.by_round[key][round_no] = value

    def ratio_to(self, base: Column, key: str) -> float | None:
        """The median over the rounds both ran of this column's value / ``base``'s:
        a column of fewer rounds is compared with what the load was then."""
        mine, theirs = self.by_round[key], base.by_round[key]
        return median(v / theirs[r] for r, v in mine.items() if theirs.get(r))

    @property
    def header(self) -> str:
        if self.unavailable is not None:
            return self.backend
        runs = f"{self.runs} run" + ("" if self.runs == 1 else "s")
        return f"{self.backend} ({runs}{', TCG' if self.backend == SLOW else ''})"


def availability(backend: str) -> str | None:
    """Why ``backend`` cannot boot a guest here, or None (it builds the initramfs)."""
    try:
        Machine(backend=backend).check_backend()
    except FakeMachineError as e:
        return str(e).strip() or type(e).__name__
    return None


def columns(
    backends: list[str], runs: int, qemu_runs: int, why_not: Callable[[str], str | None]
) -> list[Column]:
    """A column per backend: ``qemu_runs`` rounds for qemu, ``runs`` for the others."""
    return [
        Column(b, qemu_runs if b == SLOW else runs, why_not(b)) for b in backends
    ]  # fmt: skip


def run_true(backend: str, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a whole ``Machine(backend=B).run('true')`` process."""
    return timed(lambda: run_true_process(cwd, backend=backend, boot_timeout=BOOT_TIMEOUT,
                                          timeout=RUN_TIMEOUT))  # fmt: skip


def one_test(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a whole pytest process running ``path``'s one marked test."""
    cpu: list[float] = []
    wall = pytest_run(path, 1, cpu=cpu)
    return wall, cpu[0]


def write_one_test(directory: Path, backend: str) -> Path:
    """``directory``/test_one.py marked for ``backend``, beside an empty pytest.ini."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text("")  # keeps the repository's configuration away
    path = directory / "test_one.py"
    path.write_text(ONE_TEST.format(backend=backend))
    return path


def limited(step: Step, runs: int, why: str) -> Step:
    """``step`` in its first ``runs`` rounds only; later rounds say so and take nothing."""

    def run(round_no: int) -> str:
        return step.run(round_no) if round_no <= runs else f"not this round ({why})"

    return Step(step.label, run, step.failed, step.left)


def pair_step(
    label: str, column: Column, keys: tuple[str, str], fn: Callable[[], tuple[float, float]]
) -> Step:
    """A step that records ``fn()``'s wall and CPU seconds as ``column``'s rows ``keys``."""
    wall, cpu = keys

    def run(round_no: int) -> str:
        w, c = fn()
        column.record(wall, round_no, w)
        column.record(cpu, round_no, c)
        return f"{w:.2f} s, CPU {c:.2f} s"

    return Step(label, run, column.rows[wall].failures.append)


def column_steps(column: Column, tmp: Path, suite_dir: Path | None) -> list[Step]:
    """One round's steps of ``column``: run('true'), one marked test, the real suite."""
    b = column.backend
    path = write_one_test(tmp / f"one-{b}", b)
    steps = [
        pair_step(f"{b}: run('true')", column, ("run_wall", "run_cpu"), lambda: run_true(b, tmp)),
        pair_step(f"{b}: one marked test", column, ("one_wall", "one_cpu"),
                  lambda: one_test(path)),
    ]  # fmt: skip
    if suite_dir is not None:
        options = (f"{fm.BACKEND_OPTION}={b}", f"{fm.BOOT_TIMEOUT_OPTION}={BOOT_TIMEOUT}")

        def suite(round_no: int) -> str:
            return run_into(column.suite, suite_dir, "module", None, round_no, options=options)

        steps.append(Step(f"{b}: real suite, scope=module", suite, column.suite.failures.append))
    why = f"{b} runs {column.runs} round" + ("" if column.runs == 1 else "s")
    return [limited(step, column.runs, why) for step in steps]


def measure(
    cols: list[Column], runs: int, tmp: Path, suite: bool, log: Callable[[str], None]
) -> Variant:
    """The interleaved rounds; the host's real-suite runs (one a round) are returned."""
    host = Variant("host", "host, root, unshare -mn, no plugin")
    suite_dir = prepare(tmp) if suite else None
    steps: list[Step] = []
    if suite_dir is not None:

        def on_host(round_no: int) -> str:
            return run_into(host, suite_dir, None, None, round_no)

        steps.append(Step("host: real suite, root", on_host, host.failures.append))
    for column in cols:
        if column.unavailable is None:
            steps += column_steps(column, tmp, suite_dir)
    interleave(steps, runs, log)  # every problem is also in its row's or variant's failures
    return host


def suite_rows(cols: list[Column], host: Variant) -> list[str]:
    """Fill each column's real-suite rows from its runs; the notes on what counts."""
    measured = [c.suite for c in cols if c.suite.runs]
    common = common_tests([host, *measured]) if host.runs else set()
    for column in cols:
        for run in column.suite.runs:
            column.record("suite_guest", run.round_no, tests_time(run, common))
            column.record("suite_wall", run.round_no, run.wall)
        ratio = module_ratio(column.suite, host, common)  # per round too
        column.rows["suite_ratio"].values = [] if ratio is None else [ratio]
    every = {n for v in [host, *measured] for r in v.runs for n in r.tests}
    host_tests = median(tests_time(r, common) for r in host.runs)
    notes = [
        f"real suite: {len(common)} of {len(every)} tests count (passed in every run); "
        f"on the host, root, unshare -mn: "
        + ("-" if host_tests is None else f"{host_tests:.2f} s")
        + f" in those tests (median of {len(host.runs)} runs)"
    ]
    for name in sorted(every - common):
        where = [v.key for v in [host, *measured] if any(name not in r.passed for r in v.runs)]
        notes.append(f"left out: {name.split('::')[-1]}: not passed in {', '.join(where)}")
    return notes + [f"host: real suite: failed: {f.splitlines()[0]}" for f in host.failures]


def cell(column: Column, key: str, base: Column | None) -> str:
    """A median, with its ratio to ``base``'s in the same rounds (``base``: the first column)."""
    if column.unavailable is not None:
        return "not measured here"
    value = column.rows[key].median
    if value is None:
        return "-"  # every run failed: the notes say why
    if key == "suite_ratio":
        return f"{value:.2f}x"
    text = f"{value:.2f} s"
    if base is None or base is column:
        return text
    ratio = column.ratio_to(base, key)
    return text if ratio is None else f"{text} ({ratio:.1f}x {base.backend})"


def table_lines(cols: list[Column], suite: bool) -> list[str]:
    """The table: a row per measurement, a column per backend, as aligned text."""
    base = next((c for c in cols if c.unavailable is None), None)
    keys = list(ROWS) if suite else list(TRIVIAL_ROWS)
    body = [["row (medians)", *(c.header for c in cols)]]
    body += [[ROWS[key], *(cell(c, key, base) for c in cols)] for key in keys]
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def caption(cols: list[Column]) -> str:
    """What the table's numbers are, and what its ratios compare with."""
    base = next((c for c in cols if c.unavailable is None), None)
    runs = ", ".join(f"{c.backend} {c.runs}" for c in cols if c.unavailable is None)
    text = f"Medians of interleaved rounds (runs: {runs or 'none'})."
    if base is None:
        return text
    return (f"{text} In parentheses: the ratio to {base.backend} in the rounds both ran "
            "(median of the per-round ratios: the same load on both).")  # fmt: skip


def command(args: argparse.Namespace, backends: list[str]) -> str:
    """The command line that measures ``backends`` with this run's other options."""
    words = ["python benchmarks/bench.py backends", f"--backend {','.join(backends)}"]
    words += [f"--runs {args.runs}", f"--qemu-runs {args.qemu_runs}"]
    return " ".join(words + (["--trivial-only"] if args.trivial_only else []))


def note_lines(cols: list[Column], args: argparse.Namespace) -> list[str]:
    """Why a column is empty, the command for a host that has it, and each failure."""
    lines = []
    for column in cols:
        if column.unavailable is not None:
            lines.append(f"{column.backend}: not measured here: {column.unavailable}")
            lines.append(f"  on a host where it runs: {command(args, args.backend)}")
        for row in column.rows.values():
            lines += [f"{column.backend}: {row.label.strip()}: failed: {f.splitlines()[0]}"
                      for f in row.failures]  # fmt: skip
        lines += [f"{column.backend}: real suite: failed: {f.splitlines()[0]}"
                  for f in column.suite.failures]  # fmt: skip
    if any(c.backend == SLOW and c.unavailable is None for c in cols):
        lines.append(f"{SLOW}: TCG emulation (no KVM): {args.qemu_runs} round(s) only")
    return lines


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    """Check each backend, run the rounds, print the table (and write it with --markdown)."""
    cols = columns(args.backend, args.runs, args.qemu_runs, availability)
    for column in cols:
        if column.unavailable is not None:
            log(f"bench: {column.backend}: not measured here: {column.unavailable}")
    rounds = max((c.runs for c in cols if c.unavailable is None), default=0)
    suite = not args.trivial_only
    with workspace() as tmp:
        host = measure(cols, rounds, tmp, suite, log)
    notes = suite_rows(cols, host) if suite else []
    notes += note_lines(cols, args)
    info = [line.removeprefix("- ") for line in machine_lines(started)]
    lines = [caption(cols), "", *table_lines(cols, suite), "", *notes, "", *info]
    print()
    print("\n".join(lines))
    if args.markdown is not None:
        section = [f"Generated by `{command(args, args.backend)}`:", "", "```text", *lines, "```"]
        write_markdown(args.markdown, section, (MARK_START, MARK_END))
        log(f"bench: wrote the results into {args.markdown}")
    failed = host.failures or any(
        c.suite.failures or any(r.failures for r in c.rows.values()) for c in cols
    )
    return 1 if failed else 0
