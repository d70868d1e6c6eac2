"""Where the time of one Machine().run('true') and of one marked test goes."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pytest_fakemachine import FakeMachineError

from . import package as fm
from .rows import ONLY_OURS, PYTEST_TIMEOUT, RUN_TIMEOUT, Context
from .runner import StepFailed, clean_env, run_step, tail

_PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
# The job of the breakdown run: guest uptime before and after the `true` of run("true").
BREAKDOWN_COMMAND = "read -r a _ </proc/uptime; true; read -r b _ </proc/uptime; echo $a $b"

SEGMENTS = (
    ("python", "python start-up + import (whole process - in-process)"),
    ("host_before", "host: Python before UML starts"),
    ("uml_outside", "UML outside the guest clock (checks, exit)"),
    ("kernel", "kernel start -> /init"),
    ("init", "/init -> systemd's first message"),
    ("systemd", "systemd -> job unit starts"),
    ("unit", "job unit starts -> command runs"),
    ("job", "the job (`true`)"),
    ("poweroff", "power-off (job end -> kernel halted)"),
    ("host_after", "host: after UML exits (results, clean-up)"),
)


def _stamp(console: str, pattern: str) -> float | None:
    """Guest clock (printk) of the first console line that matches ``pattern``."""
    for line in console.splitlines():
        found = _PRINTK.match(line.strip())
        if found and re.search(pattern, found.group(2)):
            return float(found.group(1))
    return None


def _boot_stamps(console: str) -> tuple[float, float, float, float]:
    """Guest clock of /init, systemd's first line, the job unit's start and the halt."""
    stamps = (
        _stamp(console, r"^Run /init as init process"),
        _stamp(console, r"^systemd\[1\]: "),
        _stamp(console, r"^systemd\[1\]: Starting fakemachine\.service"),
        _stamp(console, r"^reboot: "),
    )
    init, systemd, unit, halt = stamps
    if init is None or systemd is None or unit is None or halt is None:
        raise StepFailed(f"guest timestamps missing from the console:\n{tail(console)}")
    return init, systemd, unit, halt


def breakdown_run() -> dict[str, float]:
    """One in-process run("true") with guest timestamps; seconds per segment, and 'total'."""
    try:
        run = fm.timed_guest_run(BREAKDOWN_COMMAND, ["printk.time=1"], RUN_TIMEOUT)
    except FakeMachineError as e:
        raise StepFailed(str(e)) from None
    if run.status != 0:
        raise StepFailed(f"the breakdown command exited {run.status}")
    if run.workdir_left is not None:
        raise StepFailed(f"the work directory {run.workdir_left} was left behind")
    try:
        job_start, job_end = (float(x) for x in run.stdout.split())
    except ValueError:
        raise StepFailed(f"unexpected output of the uptime command: {run.stdout!r}") from None
    init, systemd, unit, halt = _boot_stamps(run.console)
    lifetime = run.uml_ended - run.uml_started
    return {
        "host_before": run.uml_started - run.start,
        "uml_outside": lifetime - halt,
        "kernel": init,
        "init": systemd - init,
        "systemd": unit - systemd,
        "unit": job_start - unit,
        "job": job_end - job_start,
        "poweroff": halt - job_end,
        "host_after": run.end - run.uml_ended,
        "total": run.end - run.start,
    }


MARKED_SEGMENTS = (
    ("host_before", "host: pytest start-up and collection, until UML starts"),
    ("kernel", "kernel start -> /init"),
    ("init", "/init -> systemd's first message"),
    ("systemd", "systemd -> job unit starts"),
    ("unit", "job unit starts -> job runs"),
    ("guest_pytest", "guest: Python, pytest start-up, collection"),
    ("test", "the test (setup, call, teardown)"),
    ("guest_after", "guest: runner exit, job end, power-off"),
    ("host_after", "host: after UML exits (reports, clean-up, exit)"),
)


def marked_breakdown_run(ctx: Context) -> dict[str, float]:
    """One whole pytest run of one marked test (pytest and this plugin only), in segments.

    The guest's clock (printk, from boot) meets the host's wall clock at the
    job's start: the job writes its /proc/uptime into ``started`` in the work
    directory, whose host mtime is that moment. The test's phases come from
    the guest's own reports.
    """
    env = clean_env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["TMPDIR"] = str(ctx.tmp)  # the kept work directory goes with the workspace, always
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", ONLY_OURS[0],
            fm.KEEP_OPTION, ctx.one_test.name]  # fmt: skip
    start = time.time()
    proc = run_step(argv, ctx.one_test.parent, PYTEST_TIMEOUT, "pytest", env)
    end = time.time()
    kept = fm.KEPT_RE.findall(proc.stdout)
    try:
        if proc.returncode != 0 or len(kept) != 1:
            raise StepFailed(f"pytest exit status {proc.returncode}:\n{tail(proc.stdout, 20)}")
        work = Path(kept[0])
        console = (work / fm.KEPT_CONSOLE).read_text(errors="replace")
        job_start_wall = (work / fm.KEPT_STARTED).stat().st_mtime
        job_start = float((work / fm.KEPT_STARTED).read_text().split()[0])
        events = [json.loads(line) for line in (work / fm.KEPT_EVENTS).read_text().splitlines()]
    except (OSError, ValueError, IndexError) as e:
        raise StepFailed(f"the kept work directory is incomplete: {e}") from None
    finally:
        for path in kept:
            shutil.rmtree(path, ignore_errors=True)
    phases = [e["report"] for e in events if e.get("event") == "report"]
    if len(phases) != 3 or not all("start" in p and "stop" in p for p in phases):
        raise StepFailed(f"expected three reports with start and stop, got {len(phases)}")
    init, systemd, unit, halt = _boot_stamps(console)
    boot_wall = job_start_wall - job_start  # the wall-clock time of the guest's clock zero
    test_start, test_stop = phases[0]["start"], phases[-1]["stop"]
    return {
        "host_before": boot_wall - start,
        "kernel": init,
        "init": systemd - init,
        "systemd": unit - systemd,
        "unit": job_start - unit,
        "guest_pytest": test_start - job_start_wall,
        "test": test_stop - test_start,
        "guest_after": boot_wall + halt - test_stop,
        "host_after": end - (boot_wall + halt),
        "total": end - start,
    }


SUITE_SEGMENTS = (
    ("startup", "guest: Python, pytest and plugins start (job start -> conftest loaded)"),
    ("collect", "guest: collection and session start (-> first test's setup)"),
    ("tests", "the tests (setup start -> teardown stop, summed)"),
    ("between", "runner between tests (reports, tmp_path hand-over)"),
    ("finish", "after the last test (-> session end)"),
)
SUITE_COUNTERS = (
    ("runner_cpu", "runner's own CPU (s)"),
    ("children_cpu", "its children's CPU (s): the tests' programs"),
    ("others_cpu", "the rest of the guest's CPU (s): services, kernel threads"),
    ("runner_minflt", "runner's page faults (minor)"),
    ("children_minflt", "children's page faults (minor)"),
    ("majflt", "major page faults (runner + children): file pages read over hostfs"),
    ("pgfault", "page faults of the whole guest"),
    ("modules", "modules imported by the runner when the conftest loads"),
)


def suite_probe_parts(probe: dict[str, Any]) -> dict[str, float]:
    """One guest's probe (the real suite's conftest, FMBENCH_PROBE) in segments and counters."""
    spans = sorted(probe["tests"].values())
    tests = sum(stop - start for start, stop in spans)
    first, last = spans[0][0], spans[-1][1]
    start, end, guest = probe["start"], probe["end"], probe["guest"]
    runner = end["utime"] + end["stime"]
    children = end["cutime"] + end["cstime"]
    return {
        "startup": probe["conftest_uptime"] - probe.get("job_start", probe["conftest_uptime"]),
        "collect": first - probe["conftest_time"],
        "tests": tests,
        "between": (last - first) - tests,
        "finish": probe["end_time"] - last,
        "runner_cpu": runner,
        "children_cpu": children,
        "others_cpu": max(0.0, guest["busy"] - runner - children),
        "runner_minflt": end["minflt"],
        "children_minflt": end["cminflt"],
        "majflt": end["majflt"] + end["cmajflt"],
        "pgfault": guest["pgfault"],
        "modules": probe["modules_at_conftest"],
        "startup_minflt": start["minflt"],
    }


def suite_breakdown_lines(parts: dict[str, list[dict[str, float]]]) -> list[str]:
    """Medians per tree: where a guest's time went during the real suite (scope=module)."""
    trees = [t for t in parts if parts[t]]
    if not trees:
        return ["(no guest probe came back)"]

    def median(tree: str, key: str) -> float:
        return statistics.median(p[key] for p in parts[tree])

    width = max(len(label) for _, label in SUITE_SEGMENTS + SUITE_COUNTERS)
    lines = ["the real suite in one guest (scope=module), medians: " + " | ".join(trees)]
    for key, label in SUITE_SEGMENTS:
        lines.append(f"  {label:<{width}}  " + "  ".join(f"{median(t, key):8.2f} s" for t in trees))
    for key, label in SUITE_COUNTERS:
        fmt = "{:10.2f}" if key.endswith("_cpu") else "{:10.0f}"
        lines.append(f"  {label:<{width}}  " + "  ".join(fmt.format(median(t, key)) for t in trees))
    return lines
