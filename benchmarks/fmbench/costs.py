"""``bench.py costs``: what one guest costs, row by row, and where its time goes.

The floor (a bare UML boot) three ways, ``Machine().run('true')``, Debian's
fakemachine CLI (if installed), one marked test (only pytest and this
plugin; every plugin), 30 module-scoped tests, N function-scoped tests with
``-n 0`` and ``-n 2``, a guest's peak memory; then, each round, the time
breakdown of one ``run('true')`` and of one marked test. The table judges the
rows against the targets; ``--markdown PATH`` writes it between
``<!-- bench:start -->`` and ``<!-- bench:end -->``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable

from . import package as fm
from .breakdown import MARKED_SEGMENTS, breakdown_run, marked_breakdown_run
from .report import (
    chart_lines,
    failure_lines,
    machine_lines,
    section_lines,
    table_lines,
    verdicts,
    write_markdown,
)
from .rows import (
    WITH_XDIST,
    Context,
    fakemachine_cli,
    floor_boot,
    machine_process,
    peak_memory,
    prepare_context,
    pytest_run,
    remove_cli_dirs,
)
from .runner import Row, Started, Step, interleave, row_step, sweep, workspace


def rows_for(ctx: Context) -> tuple[dict[str, Row], list[Step]]:
    """The table's rows, and one step per row in the table's order."""
    n = ctx.xdist_tests
    measure: list[tuple[str, str, Callable[[], float], str]] = [
        ("floor", "floor: bare UML boot, busybox /init powers off, RAID6/XOR skipped",
         lambda: floor_boot(ctx, skips="issue"), "s"),
        ("floor_ours", "floor with all our boot-time skips (what a guest's kernel costs)",
         lambda: floor_boot(ctx, skips="ours"), "s"),
        ("floor_all", "floor with no boot-time skip (RAID6/XOR benchmarks run)",
         lambda: floor_boot(ctx, skips="none"), "s"),
        ("run", "python -c \"Machine().run('true')\" (whole process)",
         lambda: machine_process(ctx), "s"),
    ]  # fmt: skip
    if ctx.fakemachine_cli:
        measure.append(("cli", "fakemachine -q -b uml -- true (Debian CLI)",
                        lambda: fakemachine_cli(ctx), "s"))  # fmt: skip
    measure += [
        ("one", "pytest: 1 marked test, scope=function (pytest and this plugin only)",
         lambda: pytest_run(ctx.one_test, 1), "s"),
        ("one_all", "pytest: 1 marked test, every plugin installed here loaded",
         lambda: pytest_run(ctx.one_test, 1, plugins=None), "s"),
        ("module", f"pytest: {ctx.module_tests} marked tests, scope=module",
         lambda: pytest_run(ctx.module_file, ctx.module_tests), "s"),
        ("n0", f"pytest -n 0: {n} marked tests, scope=function",
         lambda: pytest_run(ctx.function_file, n, ("-n", "0"), WITH_XDIST), "s"),
        ("n2", f"pytest -n 2: {n} marked tests, scope=function",
         lambda: pytest_run(ctx.function_file, n, ("-n", "2"), WITH_XDIST), "s"),
        ("mem", "peak memory of one guest (PSS), defaults",
         lambda: peak_memory(network=False), "MiB"),
        ("mem_net", "peak memory of one guest (PSS), network=True",
         lambda: peak_memory(network=True), "MiB"),
    ]  # fmt: skip
    rows = {key: Row(key, label, unit) for key, label, _, unit in measure}
    steps = []
    for key, _, fn, _ in measure:
        step = row_step(rows[key], fn)
        step.left = rows[key].notes.append
        steps.append(step)
    return rows, steps


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    problems: list[str] = []
    parts: list[dict[str, float]] = []
    marked_parts: list[dict[str, float]] = []
    breakdown_failures: list[str] = []
    with workspace() as tmp:
        ctx = prepare_context(tmp, fm.default_kernel(), xdist_tests=4 if args.quick else 10)
        ctx.fakemachine_cli = shutil.which("fakemachine")
        rows, steps = rows_for(ctx)

        def breakdown(round_no: int) -> str:
            parts.append(breakdown_run())
            return f"{parts[-1]['total']:.2f} s in-process"

        def marked(round_no: int) -> str:
            marked_parts.append(marked_breakdown_run(ctx))
            return f"{marked_parts[-1]['total']:.2f} s"

        steps.append(Step("time breakdown of run('true')", breakdown, breakdown_failures.append))
        steps.append(Step("time breakdown of one marked test", marked, breakdown_failures.append))

        def after(step: Step, round_no: int) -> None:
            if step.label == rows.get("cli", Row("", "-")).label:  # once its tree is gone
                for cli_dir in remove_cli_dirs(ctx):
                    rows["cli"].notes.append(f"run {round_no} left {cli_dir} behind (removed)")

        try:
            found = interleave(steps, args.runs, log, after)
        finally:  # also on Ctrl-C or SIGTERM: the CLI's directory of an interrupted run
            sweep(grace=0)
            remove_cli_dirs(ctx)
    # What the fakemachine CLI leaves behind or fails at is its known fault, not ours.
    cli_label = rows["cli"].label if "cli" in rows else None
    problems += [p for p in found if cli_label is None or not p.startswith(cli_label)]
    mine = fm.leftovers(os.getpid())
    if mine:
        problems.append(f"guest processes still running at the end: {mine}")

    verdict = verdicts(rows, ctx.module_tests)
    chart = chart_lines(parts, rows["run"].median) if parts else ["(no breakdown run succeeded)"]
    if marked_parts:
        title = "one marked test (a whole pytest run)"
        chart += ["", *chart_lines(marked_parts, None, MARKED_SEGMENTS, title, in_process=False)]
    floor = " ".join([*ctx.floor_args, "uml_dir=<tmp>"]).replace(str(ctx.tmp), "<tmp>")
    info = machine_lines(started, floor)
    notes = failure_lines(rows, breakdown_failures, markdown=False)
    md_notes = failure_lines(rows, breakdown_failures, markdown=True)
    command = "python benchmarks/bench.py costs" + (" --quick" if args.quick else "")
    command += f" --runs {args.runs}"

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
        log(f"bench: wrote the results into {args.markdown}")
    if problems:
        log("\nbench: problems:\n" + "\n".join(f"  {p}" for p in problems))
        return 1
    return 0
