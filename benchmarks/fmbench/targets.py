"""The speed targets: every row of the targets table, from one interleaved run.

    python benchmarks/bench.py targets --ref TREE [--kernel K]... [--runs N]

Each round takes every measurement once, in the same order: the floor,
``run('true')``, one marked test, 30 module-scoped tests, 10 function-scoped
trivial tests ``-n 0`` from TREE and from this tree, ``-n 2`` from this tree,
peak memory (defaults, network=True); then the real suite as root on the
host, in one guest (``scope="module"``) from TREE with its default kernel and
from this tree with each kernel, and with ``scope="function"`` from this tree
with the first kernel (every kernel with ``--function-every-kernel``). The
measurements are the functions of rows.py and realsuite.py; this module
only orders them and judges them against the targets.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_fakemachine import FakeMachineError, Machine

from . import package as fm
from . import realsuite
from .breakdown import suite_breakdown_lines, suite_probe_parts
from .realsuite import Tree, Variant, suite_step
from .report import machine_lines, section_lines, table_lines, write_markdown
from .rows import (
    RUN_TIMEOUT,
    WITH_XDIST,
    Context,
    floor_boot,
    machine_process,
    peak_memory,
    prepare_context,
    pytest_run,
)
from .runner import (
    Row,
    Started,
    Step,
    StepFailed,
    cpus,
    fmt_value,
    interleave,
    private_tree,
    processes,
    row_step,
    sweep,
    workspace,
)

MARK_START = "<!-- targets:start -->"
MARK_END = "<!-- targets:end -->"
TRIVIAL_TESTS = 10  # rows 2 and 5 name 10 tests: --quick keeps them
MODULE_TESTS = 30


@dataclass
class Kernel:
    """One UML kernel this tree's guests run the real suite with."""

    path: str
    version: str
    mode: str  # how its guest processes ran: seccomp on / off, or no such mode
    tree: Tree
    broken: str | None = None  # why the host cannot run it; None: it runs


def probe_kernel(path: str, number: int) -> Kernel:
    """Boot ``path`` once (untimed: it warms its initramfs cache); how its guests run."""
    try:
        version = fm.kernel_version(path)
    except (FakeMachineError, OSError) as e:
        return Kernel(path, "?", "-", Tree(f"k{number}", None, path, path), str(e))
    broken = None
    try:
        result = Machine(kernel=path).run("true", timeout=RUN_TIMEOUT)
        used = fm.seccomp_used(result.console)
        mode = {None: "no seccomp mode", True: "seccomp on"}.get(used, "seccomp off")
        if result.returncode != 0:
            broken = f"run('true') exited {result.returncode}"
    except (FakeMachineError, OSError) as e:
        mode, broken = "-", str(e).splitlines()[0]
    label = f"this tree, Linux {version} ({mode})"
    return Kernel(path, version, mode, Tree(f"k{number}", None, label, path), broken)


def trivial_rows(ctx: Context, ref: Path) -> dict[str, Row]:
    return {
        key: Row(key, label, unit)
        for key, label, unit in (
            ("floor", "floor: bare UML boot, busybox /init powers off, RAID6/XOR skipped", "s"),
            ("run", "python -c \"Machine().run('true')\" (whole process)", "s"),
            ("one", "pytest: 1 marked test, scope=function", "s"),
            ("module", f"pytest: {ctx.module_tests} marked tests, scope=module", "s"),
            ("n0_ref", f"pytest -n 0: {ctx.xdist_tests} marked tests, {ref.name}", "s"),
            ("n0", f"pytest -n 0: {ctx.xdist_tests} marked tests, this tree", "s"),
            ("n2", f"pytest -n 2: {ctx.xdist_tests} marked tests, this tree", "s"),
            # The same trivial rows from the reference tree: before and after, interleaved.
            ("run_ref", f"python -c \"Machine().run('true')\", {ref.name}", "s"),
            ("one_ref", f"pytest: 1 marked test, scope=function, {ref.name}", "s"),
            (
                "module_ref",
                f"pytest: {ctx.module_tests} marked tests, scope=module, {ref.name}",
                "s",
            ),
            ("n2_ref", f"pytest -n 2: {ctx.xdist_tests} marked tests, {ref.name}", "s"),
            ("n0_cpu", "  its CPU time (pytest, guests): -n 0, this tree", "s"),
            ("n2_cpu", "  its CPU time (pytest, workers, guests): -n 2, this tree", "s"),
            ("mem", "peak memory of one guest (PSS), defaults", "MiB"),
            ("mem_net", "peak memory of one guest (PSS), network=True", "MiB"),
        )
    }


def trivial_steps(rows: dict[str, Row], ctx: Context, ref: Path) -> list[Step]:
    n, f = ctx.xdist_tests, ctx.function_file
    measure: dict[str, Callable[[], float]] = {
        "floor": lambda: floor_boot(ctx, skips="issue"),
        "run": lambda: machine_process(ctx),
        "one": lambda: pytest_run(ctx.one_test, 1),
        "module": lambda: pytest_run(ctx.module_file, ctx.module_tests),
        "n0_ref": lambda: pytest_run(f, n, ("-n", "0"), WITH_XDIST, tree=ref),
        "n0": lambda: pytest_run(f, n, ("-n", "0"), WITH_XDIST, cpu=rows["n0_cpu"].values),
        "n2": lambda: pytest_run(f, n, ("-n", "2"), WITH_XDIST, cpu=rows["n2_cpu"].values),
        "run_ref": lambda: machine_process(ctx, tree=ref),
        "one_ref": lambda: pytest_run(ctx.one_test, 1, tree=ref),
        "module_ref": lambda: pytest_run(ctx.module_file, ctx.module_tests, tree=ref),
        "n2_ref": lambda: pytest_run(f, n, ("-n", "2"), WITH_XDIST, tree=ref),
        "mem": lambda: peak_memory(network=False),
        "mem_net": lambda: peak_memory(network=True),
    }
    return [row_step(rows[key], fn) for key, fn in measure.items()]


def _busy(cpu: float | None, wall: float | None) -> str:
    """How busy a run kept this machine's CPUs, in words."""
    share = _ratio(cpu, None if wall is None else wall * cpus())
    return "-" if share is None else f"{share:.0%}"


@dataclass
class Line:
    """One line of the targets table."""

    row: str
    measured: str
    target: str
    result: str


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _judge(value: float | None, ok: Callable[[float], bool]) -> str:
    return "n/a" if value is None else "PASS" if ok(value) else "MISS"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def realsuite_lines(
    variants: dict[str, Variant], kernels: list[Kernel], ref_label: str
) -> list[Line]:
    """Row 1: guest/host of the module, 2834e98 against this tree with each kernel."""
    host, before = variants["host"], variants["module_before"]
    subs: list[Line] = []
    passing: list[str] = []
    for k in kernels:
        name = f"  Linux {k.version} ({k.mode})"
        if k.broken is not None:
            subs.append(Line(f"  {k.path}", f"the host cannot run it: {k.broken}", "", "-"))
            continue
        module = variants[f"module_{k.tree.key}"]
        counted = [v for v in (host, before, module) if v.runs]
        common = realsuite.common_tests(counted) if len(counted) == 3 else set()
        ratio_before = realsuite.module_ratio(before, host, common) if common else None
        ratio = realsuite.module_ratio(module, host, common) if common else None
        # Per round, (before/host) / (this/host) = before/this: the host cancels out.
        better = realsuite.module_ratio(before, module, common) if common else None
        n_all = max((len(r.tests) for v in counted for r in v.runs), default=0)
        verdict = _judge(better, lambda x: x >= 1.5)
        if verdict == "PASS":
            passing.append(f"Linux {k.version}")
        subs.append(Line(
            name,
            f"guest/host {_x(ratio)} ({ref_label} {_x(ratio_before)}, {len(common)}/{n_all} "
            f"tests): {_x(better)} better than {ref_label}",
            ">= 1.5x better", verdict,
        ))  # fmt: skip
    result = f"PASS ({', '.join(passing)})" if passing else "MISS"
    if all(s.result in ("n/a", "-") for s in subs):
        result = "n/a"
    head = Line("1. real-suite module, scope=module, guest/host", "",
                "one kernel >= 1.5x better", result)  # fmt: skip
    return [head, *subs]


def function_lines(variants: dict[str, Variant], kernels: list[Kernel]) -> list[Line]:
    """Row 3: scope=function per test against the module's per-test cost, same round."""
    lines = [Line("3. real-suite module, scope=function, per test", "", "", "")]
    for k in kernels:
        function = variants[f"function_{k.tree.key}"]
        if k.broken is not None or not (function.runs or function.failures):
            continue
        module = variants[f"module_{k.tree.key}"]
        ratio = realsuite.function_ratio(function, module)
        busy = realsuite.busy(function, cpus())
        bound = realsuite.function_bound(function, module, cpus())
        lines.append(Line(
            f"  Linux {k.version} ({k.mode})",
            f"{fmt_value(realsuite.per_test(function), 's')} against scope=module "
            f"{fmt_value(realsuite.per_test(module), 's')}: {_x(ratio)}; "
            f"CPUs {'-' if busy is None else f'{busy:.0%}'} busy, {_x(bound)} if never idle",
            "<= 1.6x the module's", _judge(ratio, lambda x: x <= 1.6),
        ))  # fmt: skip
    return lines


def trivial_lines(rows: dict[str, Row], ref_label: str) -> tuple[Line, list[Line], Line]:
    """Rows 2, 4 and 5, from the medians of the trivial measurements."""
    m = {key: row.median for key, row in rows.items()}
    n = TRIVIAL_TESTS
    speedup = _ratio(m["n0_ref"], m["n0"])
    row2 = Line(
        f"2. {n} function-scoped trivial marked tests, -n 0",
        f"{ref_label} {fmt_value(m['n0_ref'], 's')}, this tree {fmt_value(m['n0'], 's')}: "
        f"{_x(speedup)} faster",
        ">= 1.6x faster",
        _judge(speedup, lambda x: x >= 1.6),
    )
    run, one, module = (_ratio(m[a], m[b]) for a, b in
                        (("run", "floor"), ("one", "floor"), ("module", "one")))  # fmt: skip
    worst_mem = max((v for v in (m["mem"], m["mem_net"]) if v is not None), default=None)
    row4 = [
        Line("4. the trivial rows, today's targets", "", "", ""),
        Line("  floor (bare boot, the reference)", fmt_value(m["floor"], "s"), "", ""),
        Line("  run('true'), whole process", f"{fmt_value(m['run'], 's')} = {_x(run)} floor",
             "<= 2.5x floor", _judge(run, lambda x: x <= 2.5)),
        Line("  one marked test", f"{fmt_value(m['one'], 's')} = {_x(one)} floor",
             "<= 6x floor", _judge(one, lambda x: x <= 6)),
        Line(f"  {MODULE_TESTS} module-scoped tests",
             f"{fmt_value(m['module'], 's')} = {_x(module)} one test",
             "<= 2x one test", _judge(module, lambda x: x <= 2)),
        Line("  peak memory (PSS)", f"{fmt_value(m['mem'], 'MiB')}, network=True "
             f"{fmt_value(m['mem_net'], 'MiB')}", "<= 150 MiB",
             _judge(worst_mem, lambda x: x <= 150)),
    ]  # fmt: skip
    xdist = _ratio(m["n0"], m["n2"])
    # The best -n 2 could do with its CPU work: its CPU time spread over every CPU.
    bound = _ratio(m["n0"], _ratio(m["n2_cpu"], cpus()))
    row5 = Line(
        f"5. {n} function-scoped trivial tests, -n 2",
        f"-n 0 {fmt_value(m['n0'], 's')} / -n 2 {fmt_value(m['n2'], 's')} = {_x(xdist)}; "
        f"CPU {fmt_value(m['n0_cpu'], 's')} / {fmt_value(m['n2_cpu'], 's')}, "
        f"{_busy(m['n0_cpu'], m['n0'])} / {_busy(m['n2_cpu'], m['n2'])} busy, "
        f"{_x(bound)} if -n 2 were never idle",
        "-n 0 / -n 2 >= 1.0x",
        _judge(xdist, lambda x: x >= 1.0),
    )
    return row2, row4, row5


def render(lines: list[Line], *, markdown: bool) -> list[str]:
    header = ["row", "measured (medians)", "target", "result"]
    cells = [[ln.row, ln.measured, ln.target, ln.result] for ln in lines]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
        for c in cells:
            c[0] = c[0].replace("  ", "&nbsp;&nbsp;", 1) if c[0].startswith("  ") else c[0]
            out.append("| " + " | ".join(x.replace("|", "\\|") for x in c) + " |")
        return out
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(4)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip() for c in cells]
    return out


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    """Every row of the targets from one interleaved run; 1 if a measurement failed."""
    default = fm.default_kernel()
    paths = args.kernel or [str(default)]
    default_kernel = f"{default} (Linux {fm.kernel_version(default)})"
    problems: list[str] = []
    with workspace() as tmp:
        ref = private_tree(tmp, args.ref, fm.PACKAGE)
        ref_label = ref.name
        ctx = prepare_context(tmp, default, xdist_tests=TRIVIAL_TESTS, module_tests=MODULE_TESTS)
        log(f"bench: warming up {ref_label} and this tree (bytecode caches, initramfs caches)")
        for tree in (ref, None):
            try:
                pytest_run(ctx.one_test, 1, tree=tree)
            except StepFailed as e:
                problems.append(f"warm-up of {tree or 'this tree'}: {str(e).splitlines()[0]}")
        kernels = []
        for number, path in enumerate(paths, 1):
            log(f"bench: warming up kernel {path}")
            kernels.append(probe_kernel(path, number))
        sweep()
        runnable = [k for k in kernels if k.broken is None]
        before = Tree("before", str(ref), f"{ref_label}, its default kernel")
        trees = [before, *(k.tree for k in runnable)]
        variants = realsuite.variants_for([(t.key, t.path, t.label) for t in trees])
        directory = realsuite.prepare(tmp)
        rows = trivial_rows(ctx, ref)
        steps = trivial_steps(rows, ctx, ref)
        steps.append(suite_step(variants["host"], directory, None, None))
        steps += [suite_step(variants[f"module_{t.key}"], directory, "module", t) for t in trees]
        functions = runnable if args.function_every_kernel else runnable[:1]
        steps += [suite_step(variants[f"function_{k.tree.key}"], directory, "function", k.tree)
                  for k in functions]  # fmt: skip
        problems += interleave(steps, args.runs, log)
        floor = " ".join([*ctx.floor_args, "uml_dir=<tmp>"]).replace(str(tmp), "<tmp>")

    mine = fm.leftovers(os.getpid())
    if mine:
        problems.append(f"guest processes still running at the end: {mine}")
    row2, row4, row5 = trivial_lines(rows, ref_label)
    lines = [*realsuite_lines(variants, kernels, ref_label), row2,
             *function_lines(variants, runnable), *row4, row5]  # fmt: skip
    probes = {
        t.label: [suite_probe_parts(r.probe) for r in variants[f"module_{t.key}"].runs if r.probe]
        for t in trees
    }
    chart = suite_breakdown_lines(probes)
    tree_keys = [(t.key, t.label) for t in trees]
    others_end = sum(1 for p in processes().values() if p.comm == "linux.uml")
    info = machine_lines(started, floor)
    info.insert(1, "- kernels: " + "; ".join(
        f"{k.path}: Linux {k.version}, {k.broken or k.mode}" for k in kernels
    ) + f"; {ref_label} ran with its default, {default_kernel}")  # fmt: skip
    info.append(f"- {others_end} linux.uml processes not started by the benchmark "
                "were running at the end")  # fmt: skip
    command = f"python benchmarks/bench.py targets --ref {args.ref}"
    command += "".join(f" --kernel {path}" for path in args.kernel)
    command += " --function-every-kernel" if args.function_every_kernel else ""
    command += f" --runs {args.runs}"

    def report(markdown: bool) -> list[str]:
        return [
            *render(lines, markdown=markdown), "",
            "The measurements behind rows 2, 4 and 5:", "",
            *table_lines(rows, {}, markdown=markdown), "",
            "The real suite (rows 1 and 3):", "",
            *realsuite.table_lines(variants, tree_keys, markdown=markdown), "",
            *(["Failures and leftovers:", "", *(f"- {p}" for p in problems), ""]
              if problems else []),
            "Where a guest's time went in the real suite (row 1's breakdown, per kernel):",
        ]  # fmt: skip

    print()
    print("\n".join(report(markdown=False)))
    print()
    print("\n".join(chart))
    print()
    print("\n".join(line.removeprefix("- ") for line in info))
    if args.markdown is not None:
        section = section_lines(command, args.runs, [*report(markdown=True), ""], chart, info)
        write_markdown(args.markdown, section, (MARK_START, MARK_END))
        log(f"bench: wrote the results into {args.markdown}")
    if problems:
        log("\nbench: problems:\n" + "\n".join(f"  {p}" for p in problems))
        return 1
    return 0
