"""Marks every test of the real suite for a guest when the benchmark asks.

``FMBENCH_SCOPE=module`` (or ``function``) in the host's environment adds
``@pytest.mark.fakemachine(scope=...)`` to every test, as a suite would mark
them; unset (the host row, or the guest's own pytest, whose environment is
clean), nothing is marked. A marker, not ``--fakemachine-all``, so that older
versions of the plugin (the benchmark's "before" tree) run the same suite.
With ``FMBENCH_TIMING=PATH``, each test phase's start and stop go to PATH.
With ``FMBENCH_PROBE=PATH`` too, the guest writes its own clocks and counters
to PATH at the end of its session (see the benchmark's breakdown).
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scope = os.environ.get("FMBENCH_SCOPE")
    probe = os.environ.get("FMBENCH_PROBE")
    env = {"FMBENCH_PROBE": probe} if probe else {}
    if scope:
        for item in items:
            item.add_marker(pytest.mark.fakemachine(scope=scope, env=env))


# In the guest (FMBENCH_PROBE reaches it through the marker's env): where its
# time went, from its own clocks and counters, written at the session's end.
_PROBE = os.environ.get("FMBENCH_PROBE") if not os.environ.get("FMBENCH_SCOPE") else None
_GUEST_WORK = "/run/fakemachine"


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _self_counters() -> dict[str, float]:
    """minflt, majflt, CPU seconds of this process and of its waited-for children."""
    with open("/proc/self/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "minflt": int(fields[7]), "cminflt": int(fields[8]),
        "majflt": int(fields[9]), "cmajflt": int(fields[10]),
        "utime": int(fields[11]) / tick, "stime": int(fields[12]) / tick,
        "cutime": int(fields[13]) / tick, "cstime": int(fields[14]) / tick,
    }  # fmt: skip


def _guest_cpu() -> dict[str, float]:
    """The whole guest's CPU seconds (busy, idle) and page faults so far."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        cpu = [int(x) / tick for x in f.readline().split()[1:]]
    with open("/proc/vmstat") as f:
        vm = dict(line.split() for line in f)
    return {
        "busy": cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6],
        "idle": cpu[3] + cpu[4],
        "pgfault": int(vm.get("pgfault", 0)),
        "pgmajfault": int(vm.get("pgmajfault", 0)),
    }


def _busiest(count: int = 8) -> list[tuple[str, float]]:
    """The guest's processes (and kernel threads) that used the most CPU so far."""
    tick = os.sysconf("SC_CLK_TCK")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        found.append((comm, (int(fields[11]) + int(fields[12])) / tick))
    return sorted(found, key=lambda x: -x[1])[:count]


_probe: dict[str, object] = {}
if _PROBE:
    try:
        with open(f"{_GUEST_WORK}/started") as _f:
            _probe["job_start"] = float(_f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    _probe.update(conftest_uptime=_uptime(), conftest_time=time.time(),
                  modules_at_conftest=len(sys.modules), start=_self_counters())  # fmt: skip
    _probe["tests"] = {}


def _record(**entry: object) -> None:
    # FMBENCH_TIMING names a JSON-lines file (the benchmark's); the guest's
    # pytest never has it (its environment is clean), so only the host writes.
    path = os.environ.get("FMBENCH_TIMING")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def pytest_sessionstart() -> None:
    _record(event="sessionstart", time=time.time())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _PROBE:
        tests = _probe["tests"]
        assert isinstance(tests, dict)
        span = tests.setdefault(report.nodeid, [report.start, report.stop])
        span[1] = report.stop
    # start and stop are the clock of the machine that ran the phase: in a
    # guest they exclude the boot the plugin adds to the first setup's duration.
    _record(event="report", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
            start=report.start, stop=report.stop)  # fmt: skip


def pytest_sessionfinish() -> None:
    _record(event="sessionfinish", time=time.time())
    if _PROBE:
        _probe.update(end=_self_counters(), end_time=time.time(), end_uptime=_uptime(),
                      guest=_guest_cpu(), modules_at_end=len(sys.modules),
                      busiest=_busiest())  # fmt: skip
        with open(_PROBE, "w") as f:
            json.dump(_probe, f)
