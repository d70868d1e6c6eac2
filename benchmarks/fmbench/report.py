"""Results: rows, verdicts against the targets, the table, the charts, markdown."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import package as fm
from .breakdown import SEGMENTS
from .runner import Row, Started, fmt_value

MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
CHART_WIDTH = 50


@dataclass
class Verdict:
    ratio: str
    target: str
    result: str


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _check(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "n/a"
    return "PASS" if ok(value) else "FAIL"


def verdicts(rows: dict[str, Row], module_tests: int) -> dict[str, Verdict]:
    floor = rows["floor"].median
    run = rows["run"].median
    one = rows["one"].median
    out: dict[str, Verdict] = {}

    def times(x: float | None, of: str) -> str:
        return "-" if x is None else f"{x:.2f}x {of}"

    ours = rows["floor_ours"].median

    def both(x: float | None) -> str:
        """The ratio to the reference floor, then to the floor with all our skips."""
        a, b = _ratio(x, floor), _ratio(x, ours)
        return "-" if a is None else f"{a:.2f}x floor" + ("" if b is None else f" ({b:.1f}x ours)")

    out["floor"] = Verdict("1.00x (reference)", "", "")
    out["floor_ours"] = Verdict(times(_ratio(ours, floor), "floor"), "", "")
    out["floor_all"] = Verdict(times(_ratio(rows["floor_all"].median, floor), "floor"), "", "")
    r = _ratio(run, floor)
    out["run"] = Verdict(both(run), "<= 2.5x floor", _check(r, lambda x: x <= 2.5))
    if "cli" in rows:
        r = _ratio(rows["cli"].median, run)
        out["cli"] = Verdict(
            "-" if r is None else f"run('true') {r:.1f}x faster",
            "run('true') >= 10x faster",
            _check(r, lambda x: x >= 10),
        )
    r = _ratio(one, floor)
    out["one"] = Verdict(both(one), "<= 6x floor", _check(r, lambda x: x <= 6))
    out["one_all"] = Verdict(both(rows["one_all"].median), "", "")
    r = _ratio(rows["module"].median, one)
    out["module"] = Verdict(
        times(r, "one test"), f"{module_tests} tests <= 2x one", _check(r, lambda x: x <= 2)
    )
    out["n0"] = Verdict("", "", "")
    r = _ratio(rows["n0"].median, rows["n2"].median)
    # The target was re-based: -n 0 boots ahead on the idle CPU, so -n 2
    # has only to keep up with it (it was 1.6x the throughput of -n 0).
    out["n2"] = Verdict(
        "-" if r is None else f"{r:.2f}x the throughput of -n 0",
        ">= 1.0x throughput",
        _check(r, lambda x: x >= 1.0),
    )
    for key in ("mem", "mem_net"):
        m = rows[key].median
        out[key] = Verdict("", "<= 150 MiB", _check(m, lambda x: x <= 150))
    return out


def table_lines(rows: dict[str, Row], verdict: dict[str, Verdict], *, markdown: bool) -> list[str]:
    header = ["measurement", "median", "min", "max", "ok runs", "ratio", "target", "result"]
    body = []
    for key, row in rows.items():
        v = verdict.get(key, Verdict("", "", ""))
        lo = min(row.values) if row.values else None
        hi = max(row.values) if row.values else None
        label = row.label.replace("|", "\\|") if markdown else row.label
        body.append(
            [
                label,
                fmt_value(row.median, row.unit),
                fmt_value(lo, row.unit),
                fmt_value(hi, row.unit),
                f"{len(row.values)}/{row.attempts}",
                v.ratio,
                v.target,
                v.result,
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return lines
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*cells) for cells in body]
    return lines


def _printable(text: str) -> str:
    """``text`` without terminal escapes and control characters (the console has them)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return "".join(c for c in text if c in "\n\t" or c.isprintable())


def failure_lines(rows: dict[str, Row], extra: list[str], *, markdown: bool) -> list[str]:
    """Each failure and note: a list item, then its detail (a fenced block in markdown)."""
    items = [(row.label, text) for row in rows.values() for text in row.notes + row.failures]
    items += [("time breakdown", text) for text in extra]
    lines = []
    for label, text in items:
        first, *rest = _printable(text).strip().splitlines() or [""]
        lines.append(f"- {label}: {first}")
        if rest and markdown:
            lines += ["", "  ```text", *(f"  {line}" for line in rest), "  ```", ""]
        else:
            lines += [f"    {line}" for line in rest]
    return lines


def chart_lines(
    parts: list[dict[str, float]],
    process_median: float | None,
    segments: tuple[tuple[str, str], ...] = SEGMENTS,
    title: str = "one Machine().run('true')",
    in_process: bool = True,
) -> list[str]:
    """A text Gantt chart of the medians of each segment, in the order they happen."""
    medians = {
        key: statistics.median(p[key] for p in parts) for key, _ in segments if key in parts[0]
    }
    total = statistics.median(p["total"] for p in parts)
    if process_median is not None:
        medians["python"] = max(0.0, process_median - total)
    span = sum(max(0.0, v) for v in medians.values()) or 1.0
    label_width = max(len(label) for _, label in segments)
    lines = [
        f"Where {title} spends its time: medians of {len(parts)} runs;",
        (f"in-process total {total:.2f} s" if in_process else f"total {total:.2f} s")
        + (f", whole process {process_median:.2f} s" if process_median is not None else ""),
        "",
    ]
    position = 0.0
    for key, label in segments:
        if key not in medians:
            continue
        seconds = medians[key]
        start = round(position / span * CHART_WIDTH)
        position += max(0.0, seconds)
        end = max(start + 1, round(position / span * CHART_WIDTH)) if seconds > 0.005 else start
        bar = " " * start + "#" * (end - start)
        lines.append(f"{label:<{label_width}} {seconds:6.2f} s |{bar:<{CHART_WIDTH}}|")
    return lines


def machine_lines(started: Started, floor: str | None = None) -> list[str]:
    """The machine, the date, the load, and the floor's command line if there is one."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    try:
        uml = f"{fm.kernel_version(fm.default_kernel())} ({fm.default_kernel()})"
    except (fm.FakeMachineError, OSError):
        uml = ""
    load_end = os.getloadavg()
    lines = [
        f"- machine: {len(os.sched_getaffinity(0))} CPUs ({cpu}), host kernel "
        f"{platform.release()}, default UML kernel {uml or 'unknown'}, "
        f"Python {platform.python_version()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started.time))}; "
        f"took {(time.time() - started.time) / 60:.1f} min",
        f"- load average (1 min) at start {started.load[0]:.2f}, at end {load_end[0]:.2f}; "
        f"{started.others} linux.uml processes not started by the benchmark were running "
        "at the start",
    ]
    if floor is not None:
        lines.append(f"- floor kernel command line: `{floor}`")
    return lines


def section_lines(
    command: str, runs: int, table: list[str], chart: list[str], info: list[str]
) -> list[str]:
    """A markdown section of results: how they were made, the table, the chart, the machine."""
    return [
        f"Generated by `{command}`, {runs} runs of each row, interleaved.",
        "",
        *table,
        "```text",
        *chart,
        "```",
        "",
        *info,
    ]


def write_markdown(
    path: Path, section: list[str], marks: tuple[str, str] = (MARK_START, MARK_END)
) -> None:
    """Replace the lines between the marker lines of ``path`` (append them if missing)."""
    lines = path.read_text().splitlines() if path.exists() else []
    stripped = [line.strip() for line in lines]
    mark_start, mark_end = marks
    block = [mark_start, *section, mark_end]
    if mark_start in stripped and mark_end in stripped[stripped.index(mark_start) :]:
        start = stripped.index(mark_start)
        end = stripped.index(mark_end, start)
        lines[start : end + 1] = block
    else:
        lines += ([""] if lines else []) + block
    path.write_text("\n".join(lines) + "\n")
