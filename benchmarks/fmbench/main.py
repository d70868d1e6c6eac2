"""The driver: arguments, the interleaved rounds, the printed and written results."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import fmbench
from pytest_fakemachine import FakeMachineError, Machine
from pytest_fakemachine.backend.uml.host import find_kernel
from pytest_fakemachine.backend.uml.kernel import kernel_info
from pytest_fakemachine.backend.uml.process import leftovers

from . import realsuite, targets
from .breakdown import (
    MARKED_SEGMENTS,
    breakdown_run,
    marked_breakdown_run,
    suite_breakdown_lines,
    suite_probe_parts,
)
from .report import (
    MARK_END,
    MARK_START,
    Row,
    chart_lines,
    failure_lines,
    fmt_value,
    machine_lines,
    section_lines,
    table_lines,
    verdicts,
    write_markdown,
)
from .rows import (
    RUN_TIMEOUT,
    WITH_XDIST,
    fakemachine_cli,
    floor_boot,
    machine_process,
    peak_memory,
    prepare_context,
    pytest_run,
    remove_cli_dirs,
)
from .runner import (
    StepFailed,
    private_tree,
    processes,
    set_child_subreaper,
    sweep,
    workspace,
)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=fmbench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs of every measurement (default 5, or 3 with --quick; "
        "with --targets 3, or 1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 runs, and 4 instead of 10 tests in the -n 2 / -n 0 runs "
        "(with --targets: 1 round, the tests as they are)",
    )
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        type=Path,
        help=f"replace the text between {MARK_START} and {MARK_END} in PATH with the results",
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="every row of issue #15's targets in one interleaved run, judged (needs --ref); "
        f"with --markdown, into the {targets.MARK_START} markers",
    )
    parser.add_argument(
        "--function-every-kernel",
        action="store_true",
        help="with --targets: the real suite with scope=function with every --kernel, "
        "not only the first (one more long run per kernel and round)",
    )
    parser.add_argument(
        "--realsuite",
        action="store_true",
        help="only the real-suite rows (benchmarks/realsuite/: host root, scope=module, "
        "scope=function); with --markdown, into the realsuite markers",
    )
    parser.add_argument(
        "--ref",
        metavar="TREE",
        help="with --realsuite or --targets: also run the guests from TREE "
        "(a copy of its package on PYTHONPATH), as 'before'",
    )
    parser.add_argument(
        "--kernel",
        metavar="PATH",
        action="append",
        default=[],
        help="with --realsuite or --targets: run this tree's guests with this UML kernel "
        "(--fakemachine-kernel); repeat it to compare kernels in one interleaved run",
    )
    parser.add_argument(
        "--module-only",
        action="store_true",
        help="with --realsuite: leave out the scope=function runs (the longest)",
    )
    args = parser.parse_args(argv)
    if args.targets and (args.realsuite or args.module_only):
        parser.error("--targets measures the real suite itself: no --realsuite, --module-only")
    if args.targets and args.ref is None:
        parser.error("--targets needs --ref TREE (a checkout of 2834e98, the issue's 'before')")
    if args.ref is not None and not (args.realsuite or args.targets):
        parser.error("--ref goes with --realsuite or --targets")
    if (args.kernel and not (args.realsuite or args.targets)) or (
        args.module_only and not args.realsuite
    ):
        parser.error(
            "--kernel and --module-only go with --realsuite (--kernel also with --targets)"
        )
    if args.function_every_kernel and not args.targets:
        parser.error("--function-every-kernel goes with --targets")
    if args.runs is None and args.targets:
        args.runs = 1 if args.quick else 3
    elif args.runs is None:
        args.runs = 3 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_start = os.getloadavg()
    others = sum(1 for p in processes().values() if p.comm == "linux.uml")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not set_child_subreaper():
        print("bench: cannot become child subreaper; leftovers may escape", file=sys.stderr)
    if not any(e.name == "fakemachine" for e in importlib.metadata.entry_points(group="pytest11")):
        print("bench: pytest-fakemachine is not installed (pip install -e .)", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        kernel = find_kernel(None)
        log("bench: warming up (initramfs cache, page cache) with one Machine().run('true')")
        Machine().run("true", check=True, timeout=RUN_TIMEOUT)
    except (FakeMachineError, subprocess.CalledProcessError) as e:
        log(f"bench: this host cannot boot a guest: {e}")
        return 2
    if args.realsuite:
        return realsuite_main(args, log)
    if args.targets:
        return targets.targets_main(args, log, started, load_start, others)
    problems: list[str] = []
    with workspace() as tmp:
        ctx = prepare_context(tmp, kernel, xdist_tests=4 if args.quick else 10)
        ctx.fakemachine_cli = shutil.which("fakemachine")

        rows: dict[str, Row] = {}
        steps: list[tuple[str, Callable[[], float]]] = []

        def step(key: str, label: str, fn: Callable[[], float], unit: str = "s") -> None:
            rows[key] = Row(key, label, unit)
            steps.append((key, fn))

        n = ctx.xdist_tests
        step(
            "floor",
            "floor: bare UML boot, busybox /init powers off, RAID6/XOR skipped (the issue's)",
            lambda: floor_boot(ctx, skips="issue"),
        )
        step(
            "floor_ours",
            "floor with all our boot-time skips (what a guest's kernel costs)",
            lambda: floor_boot(ctx, skips="ours"),
        )
        step(
            "floor_all",
            "floor with no boot-time skip (RAID6/XOR benchmarks run)",
            lambda: floor_boot(ctx, skips="none"),
        )
        step(
            "run",
            "python -c \"Machine().run('true')\" (whole process)",
            lambda: machine_process(ctx),
        )
        if ctx.fakemachine_cli:
            step("cli", "fakemachine -q -b uml -- true (Debian CLI)", lambda: fakemachine_cli(ctx))
        step(
            "one",
            "pytest: 1 marked test, scope=function (pytest and this plugin only)",
            lambda: pytest_run(ctx.one_test, 1),
        )
        step(
            "one_all",
            "pytest: 1 marked test, every plugin installed here loaded",
            lambda: pytest_run(ctx.one_test, 1, plugins=None),
        )
        step(
            "module",
            f"pytest: {ctx.module_tests} marked tests, scope=module",
            lambda: pytest_run(ctx.module_file, ctx.module_tests),
        )
        step(
            "n0",
            f"pytest -n 0: {n} marked tests, scope=function",
            lambda: pytest_run(ctx.function_file, n, ("-n", "0"), WITH_XDIST),
        )
        step(
            "n2",
            f"pytest -n 2: {n} marked tests, scope=function",
            lambda: pytest_run(ctx.function_file, n, ("-n", "2"), WITH_XDIST),
        )
        step(
            "mem",
            "peak memory of one guest (PSS), defaults",
            lambda: peak_memory(network=False),
            "MiB",
        )
        step(
            "mem_net",
            "peak memory of one guest (PSS), network=True",
            lambda: peak_memory(network=True),
            "MiB",
        )
        parts: list[dict[str, float]] = []
        marked_parts: list[dict[str, float]] = []
        breakdown_failures: list[str] = []

        try:
            for round_no in range(1, args.runs + 1):
                for key, fn in steps:
                    row = rows[key]
                    log(f"bench: round {round_no}/{args.runs}: {row.label} ...")
                    try:
                        value = fn()
                    except StepFailed as e:
                        row.failures.append(str(e))
                        log(f"bench:   failed: {str(e).splitlines()[0]}")
                    else:
                        row.values.append(value)
                        log(f"bench:   {fmt_value(value, row.unit)}")
                    stray = sweep()
                    if stray:
                        names = ", ".join(stray)
                        message = f"run {round_no} left running, killed by the benchmark: {names}"
                        row.notes.append(message)
                        if key != "cli":  # a known fault of the CLI; one of ours is a bug
                            problems.append(f"{row.label}: {message}")
                        log(f"bench:   {message}")
                    if key == "cli":  # the CLI's own temporary directory, once its tree is gone
                        for cli_dir in remove_cli_dirs(ctx):
                            row.notes.append(f"run {round_no} left {cli_dir} behind (removed)")
                log(f"bench: round {round_no}/{args.runs}: time breakdown ...")
                try:
                    parts.append(breakdown_run())
                except StepFailed as e:
                    breakdown_failures.append(str(e))
                    log(f"bench:   failed: {str(e).splitlines()[0]}")
                log(f"bench: round {round_no}/{args.runs}: marked test breakdown ...")
                try:
                    marked_parts.append(marked_breakdown_run(ctx))
                except StepFailed as e:
                    breakdown_failures.append(str(e))
                    log(f"bench:   failed: {str(e).splitlines()[0]}")
                stray = sweep()
                if stray:
                    problems.append(f"breakdown: left running: {', '.join(stray)}")
        finally:  # also on Ctrl-C or SIGTERM: the CLI's directory of an interrupted run
            sweep(grace=0)
            remove_cli_dirs(ctx)

    mine = leftovers(os.getpid())
    if mine:
        problems.append(f"guest processes still running at the end: {mine}")
    problems += [
        f"{row.label}: {f.splitlines()[0]}"
        for row in rows.values()
        for f in row.failures
        if row.key != "cli"
    ]
    problems += [f"breakdown: {f.splitlines()[0]}" for f in breakdown_failures]

    verdict = verdicts(rows, ctx.module_tests)
    process_median = rows["run"].median
    chart = chart_lines(parts, process_median) if parts else ["(no breakdown run succeeded)"]
    if marked_parts:
        chart += [
            "",
            *chart_lines(
                marked_parts,
                None,
                MARKED_SEGMENTS,
                "one marked test (a whole pytest run)",
                in_process=False,
            ),
        ]
    floor = " ".join([*ctx.floor_args, "uml_dir=<tmp>"]).replace(str(ctx.tmp), "<tmp>")
    info = machine_lines(started, load_start, others, floor)
    notes = failure_lines(rows, breakdown_failures, markdown=False)
    md_notes = failure_lines(rows, breakdown_failures, markdown=True)
    command = (
        "python benchmarks/bench.py"
        + (" --quick" if args.quick else "")
        + (f" --runs {args.runs}" if args.runs != (3 if args.quick else 5) else "")
    )

    print()
    print("\n".join(table_lines(rows, verdict, markdown=False)))
    if notes:
        print("\nFailures and notes:")
        print("\n".join(notes))
    print()
    print("\n".join(chart))
    print()
    print("\n".join(line.removeprefix("- ") for line in info))

    if args.markdown is not None:
        notes_md = ["Failures and notes:", "", *md_notes, ""] if md_notes else []
        table = [*table_lines(rows, verdict, markdown=True), "", *notes_md]
        write_markdown(args.markdown, section_lines(command, args.runs, table, chart, info))
        print(f"\nbench: wrote the results into {args.markdown}", file=sys.stderr)
    if problems:
        print("\nbench: problems:\n" + textwrap.indent("\n".join(problems), "  "), file=sys.stderr)
        return 1
    return 0


def realsuite_main(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """The real-suite rows alone: interleaved rounds, the table, the markdown section."""
    started = time.time()
    load_start = os.getloadavg()
    with workspace() as tmp:
        kernels = [(path, kernel_info(Path(path)).version) for path in args.kernel]
        scopes = ("module",) if args.module_only else ("module", "function")
        ref = None if args.ref is None else str(private_tree(tmp, args.ref))
        variants, trees = realsuite.measure(
            tmp, args.runs, realsuite.trees_for(ref, kernels), log, scopes
        )
    command = "python benchmarks/bench.py --realsuite" + (f" --ref {args.ref}" if args.ref else "")
    command += "".join(f" --kernel {path}" for path in args.kernel)
    command += " --module-only" if args.module_only else ""
    command += f" --runs {args.runs}"
    others = sum(1 for p in processes().values() if p.comm == "linux.uml")
    info = machine_lines(started, load_start, others, "-")[:-1]  # no floor row here
    probes = {
        label: [suite_probe_parts(r.probe) for r in variants[f"module_{key}"].runs if r.probe]
        for key, label in trees
    }
    chart = suite_breakdown_lines(probes)
    print()
    print("\n".join(realsuite.table_lines(variants, trees, markdown=False)))
    print()
    print("\n".join(chart))
    print()
    print("\n".join(line.removeprefix("- ") for line in info))
    if args.markdown is not None:
        table = [*realsuite.table_lines(variants, trees, markdown=True), ""]
        section = section_lines(command, args.runs, table, chart, info)
        write_markdown(args.markdown, section, (realsuite.MARK_START, realsuite.MARK_END))
    failed = any(v.failures for v in variants.values())
    return 1 if failed else 0
