"""``bench.py realsuite``: benchmarks/realsuite/ on the host as root, and in guests.

One round runs the module (20 realistic root-needing tests) as root on the
host without the plugin, inside ``unshare -mn --propagation private`` (mounts,
links and namespaces it makes vanish with that namespace; loop devices are
detached by the tests), then in guests with ``scope="module"`` and
``scope="function"``, with this tree and, given ``--ref TREE``, with TREE
(``PYTHONPATH=TREE``: "before" and "after" in one run). The conftest.py beside
the tests marks them for a guest and records each phase's start and stop.

"Tests" time is the sum over tests of setup start -> teardown stop, on the
clock of the machine that ran them (so a guest's boot and its pytest start-up
are out), over the tests that passed in every run of the round: a test the
host cannot run (the systemd unit, where systemd is not PID 1) or an older
tree fails is left out of every ratio, and named.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import package as fm
from .breakdown import suite_breakdown_lines, suite_probe_parts
from .report import machine_lines, section_lines, write_markdown
from .runner import (
    REPO,
    Started,
    Step,
    StepFailed,
    children_cpu,
    clean_env,
    interleave,
    private_tree,
    run_step,
    tail,
    workspace,
)

SUITE_DIR = REPO / "benchmarks" / "realsuite"
SUITE_FILE = "test_realsuite.py"
SUITE_TIMEOUT = 1800.0
MARK_START = "<!-- realsuite:start -->"
MARK_END = "<!-- realsuite:end -->"


@dataclass
class SuiteRun:
    """One whole pytest run of the real suite."""

    wall: float  # the whole pytest process, host clock
    tests: dict[str, float]  # nodeid -> setup start .. teardown stop, on the runner's clock
    passed: set[str]
    outcomes: dict[str, str]  # nodeid -> worst outcome of its phases
    probe: dict[str, Any] | None = None  # the guest's clocks and counters (scope=module)
    round_no: int = 0  # which round of the interleaved run it belongs to
    cpu: float = 0.0  # CPU seconds of the whole run: pytest, guests (host clock)

    @property
    def span(self) -> float:
        return sum(self.tests.values())


@dataclass
class Variant:
    key: str
    label: str
    runs: list[SuiteRun] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def prepare(tmp: Path) -> Path:
    """The suite in its own directory under ``tmp``, with an empty pytest.ini."""
    directory = tmp / "realsuite"
    directory.mkdir()
    for name in (SUITE_FILE, "conftest.py"):
        shutil.copyfile(SUITE_DIR / name, directory / name)
    (directory / "pytest.ini").write_text("")  # keeps the repository's config away
    return directory


def run_suite(
    directory: Path, scope: str | None, tree: str | None, kernel: str | None = None,
    *, options: tuple[str, ...] = (),
) -> SuiteRun:  # fmt: skip
    """The suite on the host (``scope`` None) or in guests of ``scope``, from ``tree``.

    ``kernel``: the guests' UML kernel (``--fakemachine-kernel``); None: the plugin's default.
    ``options``: more of the plugin's options for the guests' runs (``--fakemachine-backend=``).
    """
    env = clean_env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    timing = directory / "timing.jsonl"
    timing.unlink(missing_ok=True)
    env["FMBENCH_TIMING"] = str(timing)
    probe = directory / "probe.json"
    probe.unlink(missing_ok=True)
    env.pop("FMBENCH_PROBE", None)
    if scope == "module":  # one guest: its probe covers the whole suite
        env["FMBENCH_PROBE"] = str(probe)
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = tree
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if scope is None:
        argv = ["unshare", "-mn", "--propagation", "private", *argv]
        env.pop("FMBENCH_SCOPE", None)
    else:
        argv += ["-p", fm.PLUGIN]
        env["FMBENCH_SCOPE"] = scope
        if kernel is not None:
            argv.append(f"{fm.KERNEL_OPTION}={kernel}")
        argv += options
    argv.append(SUITE_FILE)
    start, cpu_start = time.monotonic(), children_cpu()
    proc = run_step(argv, directory, SUITE_TIMEOUT, "the real suite", env)
    wall = time.monotonic() - start
    cpu = children_cpu() - cpu_start
    if proc.returncode not in (0, 1):  # 1: some tests failed, which the rows account for
        raise StepFailed(f"pytest exit status {proc.returncode}:\n{tail(proc.stdout, 30)}")
    try:
        entries = [json.loads(line) for line in timing.read_text().splitlines()]
    except (OSError, ValueError) as err:
        raise StepFailed(f"no timing records ({err}):\n{tail(proc.stdout, 30)}") from None
    tests, outcomes = tests_of(entries)
    passed = {n for n, o in outcomes.items() if o == "passed"}
    if not passed:
        raise StepFailed(f"no test passed:\n{tail(proc.stdout, 30)}")
    try:
        probed = json.loads(probe.read_text()) if probe.exists() else None
    except (OSError, ValueError):
        probed = None
    return SuiteRun(wall, tests, passed, outcomes, probed, cpu=cpu)


def tests_of(entries: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """From the timing records: each test's setup start -> teardown stop, and its worst
    outcome over its phases."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    outcomes: dict[str, str] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    for entry in entries:
        if entry.get("event") != "report":
            continue
        nodeid = entry["nodeid"]
        first.setdefault(nodeid, entry["start"])
        last[nodeid] = entry["stop"]
        was = outcomes.get(nodeid, "passed")
        outcomes[nodeid] = max(was, entry["outcome"], key=lambda o: rank.get(o, 2))
    return {n: last[n] - first[n] for n in first}, outcomes


def common_tests(variants: list[Variant]) -> set[str]:
    """The tests that passed in every run of every variant."""
    sets = [run.passed for v in variants for run in v.runs]
    return set.intersection(*sets) if sets else set()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, suffix: str = " s") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def per_round_ratio(
    a: Variant, b: Variant, fn: Callable[[SuiteRun], float],
    fn_b: Callable[[SuiteRun], float] | None = None,
) -> list[float]:  # fmt: skip
    """fn(a's run) / fn_b(b's run) for each round both have a run of (a failed
    run has none); ``fn_b`` None: ``fn``."""
    of_b = {run.round_no: run for run in b.runs}
    pairs = [(x, of_b[x.round_no]) for x in a.runs if x.round_no in of_b]
    fb = fn if fn_b is None else fn_b
    return [fn(x) / fb(y) for x, y in pairs if fb(y) > 0]


def tests_time(run: SuiteRun, common: set[str]) -> float:
    """The summed time of the ``common`` tests in ``run``."""
    return sum(run.tests[n] for n in common if n in run.tests)


def module_ratio(module: Variant, host: Variant, common: set[str]) -> float | None:
    """Guest/host (or any a/b) of the ``common`` tests' time: median of the per-round ratios."""
    return _median(per_round_ratio(module, host, lambda r: tests_time(r, common)))


def function_ratio(function: Variant, module: Variant) -> float | None:
    """Per test, scope=function against scope=module: median of the per-round ratios.

    Both runs hold the same tests, so the ratio of whole runs is that of per-test costs.
    """
    return _median(per_round_ratio(function, module, lambda r: r.wall))


def per_test(variant: Variant) -> float | None:
    """Median whole run / number of tests."""
    return _median([r.wall / max(1, len(r.tests)) for r in variant.runs])


def busy(variant: Variant, cpus: int) -> float | None:
    """How busy the run kept the CPUs: median of its CPU time / (wall time x CPUs)."""
    return _median([r.cpu / (r.wall * cpus) for r in variant.runs if r.wall > 0])


def function_bound(function: Variant, module: Variant, cpus: int) -> float | None:
    """Row 3's ratio had no CPU ever been idle in the function-scoped run (its
    CPU time / CPUs as its wall time), against the module's per-test cost:
    the best this machine allows for the same CPU work."""
    return _median(per_round_ratio(function, module, lambda r: r.cpu / cpus, lambda r: r.wall))


def table_lines(variants: dict[str, Variant], trees: list[tuple[str, str]],
                markdown: bool) -> list[str]:  # fmt: skip
    """The real-suite table: one line per tree, and the host's."""
    every = list(variants.values())
    common = common_tests([v for v in every if v.runs])
    n_all = max((len(r.tests) for v in every for r in v.runs), default=0)
    host = variants["host"]

    header = ["tree", "host: tests", "module: tests", "module guest/host (tests)",
              "module: whole run", "module per test", "function per test",
              "function/module per test"]  # fmt: skip
    rows = [header]
    host_tests = _median([tests_time(r, common) for r in host.runs])
    for key, label in trees:
        module, function = variants[f"module_{key}"], variants[f"function_{key}"]
        rows.append([
            label, _fmt(host_tests), _fmt(_median([tests_time(r, common) for r in module.runs])),
            _fmt(module_ratio(module, host, common), "x"),
            _fmt(_median([r.wall for r in module.runs])), _fmt(per_test(module)),
            _fmt(per_test(function)), _fmt(function_ratio(function, module), "x"),
        ])  # fmt: skip
    left_out = sorted({n for v in every for r in v.runs for n in r.tests} - common)
    notes = [
        f"{len(common)} of {n_all} tests count ('tests' columns: setup start -> teardown stop, "
        "summed, on the clock of the machine that ran them: boot and pytest start-up excluded)."
    ]
    for nodeid in left_out:
        where = sorted(
            f"{v.key} ({r.outcomes.get(nodeid, 'not run')})"
            for v in every for r in v.runs[:1] if nodeid not in r.passed
        )  # fmt: skip
        notes.append(f"left out: {nodeid.split('::')[-1]}: not passed in {', '.join(where)}")
    for v in every:
        notes += [f"{v.label}: failed run: {f.splitlines()[0]}" for f in v.failures]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return [*lines, "", *(f"- {n}" for n in notes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return [*lines, "", *notes]


def variants_for(trees: list[tuple[str, str | None, str]]) -> dict[str, Variant]:
    """host, then module_KEY and function_KEY for each (key, tree, label)."""
    out = {"host": Variant("host", "host, root, unshare -mn, no plugin")}
    for key, _, label in trees:
        out[f"module_{key}"] = Variant(f"module_{key}", f"{label}: scope=module")
        out[f"function_{key}"] = Variant(f"function_{key}", f"{label}: scope=function")
    return out


def tree_label(tree: str | None) -> str:
    return "this tree" if tree is None else os.path.basename(tree.rstrip("/")) or tree


@dataclass(frozen=True)
class Tree:
    """One plugin tree the guests run from, with one kernel."""

    key: str
    path: str | None  # PYTHONPATH; None: this tree, as installed
    label: str
    kernel: str | None = None  # --fakemachine-kernel; None: the plugin's default


def trees_for(ref: str | None, kernels: list[tuple[str, str]]) -> list[Tree]:
    """'before' (``ref``, default kernel), then this tree once per (path, version) kernel.

    No kernels: this tree once, with the plugin's default kernel.
    """
    trees = [] if ref is None else [Tree("before", ref, f"before ({tree_label(ref)})")]
    if not kernels:
        return [*trees, Tree("after", None, "after (this tree)")]
    for number, (path, version) in enumerate(kernels, 1):
        trees.append(Tree(f"after{number}", None, f"after (this tree), Linux {version}", path))
    return trees


def suite_step(variant: Variant, directory: Path, scope: str | None, tree: Tree | None) -> Step:
    """One run of the suite for ``variant`` as a step of an interleaved round."""

    def run(round_no: int) -> str:
        return run_into(variant, directory, scope, tree, round_no)

    label = f"real suite, {variant.label}"
    return Step(label, run, variant.failures.append, variant.failures.append)


def measure(
    tmp: Path,
    runs: int,
    trees: list[Tree],
    log: Callable[[str], None],
    scopes: tuple[str, ...] = ("module", "function"),
) -> tuple[dict[str, Variant], list[tuple[str, str]]]:
    """``runs`` interleaved rounds: host, then each tree's runs of each scope in ``scopes``."""
    directory = prepare(tmp)
    variants = variants_for([(t.key, t.path, t.label) for t in trees])
    steps = [suite_step(variants["host"], directory, None, None)]
    for scope in scopes:
        steps += [suite_step(variants[f"{scope}_{t.key}"], directory, scope, t) for t in trees]
    interleave(steps, runs, log)  # every problem is also in its variant's failures
    return variants, [(t.key, t.label) for t in trees]


def run_into(
    variant: Variant, directory: Path, scope: str | None, tree: Tree | None, round_no: int,
    *, options: tuple[str, ...] = (),
) -> str:  # fmt: skip
    """One run of the suite for ``variant`` (host: ``scope`` None), kept; what it took, in words.

    ``tree`` None: this tree with the default kernel. ``options``: as :func:`run_suite`'s.
    StepFailed: the run produced nothing to keep (the caller records it).
    """
    path, kernel = (None, None) if tree is None else (tree.path, tree.kernel)
    result = run_suite(directory, scope, path, kernel, options=options)
    result.round_no = round_no
    variant.runs.append(result)
    return (f"{result.wall:.2f} s whole, {result.span:.2f} s in tests, "
            f"{len(result.passed)}/{len(result.tests)} passed")  # fmt: skip


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    """The real-suite rows alone: interleaved rounds, the table, the markdown section."""
    with workspace() as tmp:
        kernels = [(path, fm.kernel_version(path)) for path in args.kernel]
        scopes = ("module",) if args.module_only else ("module", "function")
        ref = None if args.ref is None else str(private_tree(tmp, args.ref, fm.PACKAGE))
        variants, trees = measure(tmp, args.runs, trees_for(ref, kernels), log, scopes)
    command = "python benchmarks/bench.py realsuite" + (f" --ref {args.ref}" if args.ref else "")
    command += "".join(f" --kernel {path}" for path in args.kernel)
    command += " --module-only" if args.module_only else ""
    command += f" --runs {args.runs}"
    info = machine_lines(started)
    probes = {
        label: [suite_probe_parts(r.probe) for r in variants[f"module_{key}"].runs if r.probe]
        for key, label in trees
    }
    chart = suite_breakdown_lines(probes)
    print()
    print("\n".join(table_lines(variants, trees, markdown=False)))
    print()
    print("\n".join(chart))
    print()
    print("\n".join(line.removeprefix("- ") for line in info))
    if args.markdown is not None:
        table = [*table_lines(variants, trees, markdown=True), ""]
        section = section_lines(command, args.runs, table, chart, info)
        write_markdown(args.markdown, section, (MARK_START, MARK_END))
        log(f"bench: wrote the results into {args.markdown}")
    return 1 if any(v.failures for v in variants.values()) else 0
