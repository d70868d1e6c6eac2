"""Where one marked test's CPU goes, two trees side by side (issue 15's "0.4 s per guest").

    python benchmarks/guest_cpu.py --before /work/ref-2834e98 [--after .] [--runs 7] [--kernel K]

Each run is a whole ``python -m pytest`` process (PYTHONPATH=tree, only pytest
and the plugin loaded) of one trivial ``@pytest.mark.fakemachine`` test, the
trees alternating. A conftest beside the test reads, in the guest at the
session's end, the guest's own counters; a tiny host plugin reads the host's.
Rows (medians over runs; guest CPU in the guest's 100 Hz ticks, as seconds):

- host: the pytest process's own CPU, and its children's (the UML kernel and
  every guest process, which under ptrace are host processes);
- guest clock: job start (``/run/fakemachine/started``), conftest loaded,
  session end;
- guest CPU: PID 1 (systemd, plus what ``/init`` ran before it: reaped
  children), the runner before its conftest loaded (Python, pytest, plugins),
  the runner after it (collection, the test, reports), kernel threads, other
  processes; the guest's page faults.

Unlike wall time, the host's CPU times barely move with the machine's load;
the guest's ticks do (UML's clock is the host's: a guest process charged for
a tick it spent preempted on the host), so compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmbench.runner import clean_env  # beside this script, on sys.path when it runs

TEST = """\
import pytest


@pytest.mark.fakemachine
def test_trivial() -> None:
    assert True
"""

# In the guest only: its counters at conftest load and at the session's end.
CONFTEST = """\
import json, os

GUEST = os.path.isdir("/run/fakemachine")
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text.rpartition(")")[2].split()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    return comm, fields


def _uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


if GUEST:
    _, _f = _stat("self")
    import sys

    AT_CONFTEST = {"uptime": _uptime(), "self": (int(_f[11]) + int(_f[12])) / TICK,
                   "minflt": int(_f[7]), "started": int(_f[19]) / TICK,
                   "modules": sorted(sys.modules)}


def pytest_sessionfinish(session):
    if not GUEST:
        return
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm, f = _stat(pid)
        except OSError:
            continue
        kernel = int(f[5]) == 0 and pid != "1" or int(f[1]) == 2  # no session: a kernel thread
        procs[pid] = {"comm": comm, "ppid": int(f[1]), "kthread": kernel,
                      "self": (int(f[11]) + int(f[12])) / TICK,
                      "children": (int(f[13]) + int(f[14])) / TICK, "minflt": int(f[7])}
    with open("/proc/stat") as f:
        cpu = [int(x) / TICK for x in f.readline().split()[1:]]
    with open("/proc/vmstat") as f:
        vm = dict(line.split() for line in f)
    try:
        with open("/run/fakemachine/started") as f:
            started = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        started = None
    busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6]
    out = {"job_start": started, "at_conftest": AT_CONFTEST, "end_uptime": _uptime(),
           "me": str(os.getpid()), "procs": procs, "busy": busy,
           "pgfault": int(vm.get("pgfault", 0))}
    with open(os.path.join(os.path.dirname(__file__), "guest.json"), "w") as f:
        json.dump(out, f)  # the rootdir is the host's, writable in the guest
"""

HOST_PLUGIN = """\
import json, os, resource


def pytest_unconfigure(config):
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["FMCPU_HOST"], "w") as f:
        json.dump({"self": s.ru_utime + s.ru_stime, "children": c.ru_utime + c.ru_stime}, f)
"""

ROWS = (
    "host: pytest process CPU",
    "host: children CPU (UML and the guest)",
    "guest clock: job starts",
    "guest clock: runner starts",
    "guest clock: conftest loaded",
    "guest clock: session end",
    "guest CPU: PID 1 (systemd + what /init ran)",
    "guest CPU: runner until conftest (Python, pytest, plugins)",
    "guest CPU: runner after (collection, test, reports)",
    "guest CPU: kernel threads",
    "guest CPU: other processes (job shell, services)",
    "guest CPU: all (busy ticks)",
    "guest page faults",
    "runner: modules at conftest",
)


def one_run(tree: Path, work: Path, extra: list[str]) -> tuple[dict[str, float], list[str]]:
    out, host = work / "guest.json", work / "host.json"
    for f in (out, host):
        f.unlink(missing_ok=True)
    env = clean_env()  # bytecode caches written, as on a user's machine
    env.update(PYTHONPATH=f"{tree}{os.pathsep}{work}", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               FMCPU_HOST=str(host))  # fmt: skip
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
            "pytest_fakemachine.plugin", "-p", "fmcpu_host",
            *extra, "test_trivial.py"]  # fmt: skip
    proc = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"{argv} with {tree} failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    g = json.loads(out.read_text())
    h = json.loads(host.read_text())
    procs = g["procs"]
    me = procs[g["me"]]
    kthreads = sum(p["self"] for p in procs.values() if p["kthread"])
    pid1 = procs["1"]["self"] + procs["1"]["children"]
    runner = me["self"]
    others = sum(p["self"] for pid, p in procs.items()
                 if not p["kthread"] and pid not in ("1", g["me"]))  # fmt: skip
    row = dict(zip(ROWS, (
        h["self"], h["children"], g["job_start"] or 0.0, g["at_conftest"]["started"],
        g["at_conftest"]["uptime"],
        g["end_uptime"], pid1, g["at_conftest"]["self"], runner - g["at_conftest"]["self"],
        kthreads, others, g["busy"], float(g["pgfault"]), float(len(g["at_conftest"]["modules"])),
    )))  # fmt: skip
    return row, g["at_conftest"]["modules"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the other tree (e.g. 2834e98's)")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--kernel", help="--fakemachine-kernel for this tree's runs")
    args = parser.parse_args()
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    extras: dict[str, list[str]] = {"before": [], "after": []}
    if args.kernel:
        extras["after"] = [f"--fakemachine-kernel={args.kernel}"]
    load = [os.getloadavg()[0]]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fmcpu-") as tmp:
        work = Path(tmp)
        (work / "pytest.ini").write_text("[pytest]\n")
        (work / "test_trivial.py").write_text(TEST)
        (work / "conftest.py").write_text(CONFTEST)
        (work / "fmcpu_host.py").write_text(HOST_PLUGIN)
        for name, tree in trees.items():  # warm-up: caches, initramfs
            one_run(tree, work, extras[name])
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        modules: dict[str, list[str]] = {}
        for i in range(args.runs):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for name in order:
                row, modules[name] = one_run(trees[name], work, extras[name])
                results[name].append(row)
                print(".", end="", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(file=sys.stderr)
    print(f"{args.runs} runs each, interleaved; load average {load[0]:.2f} -> {load[1]:.2f}; "
          f"{time.monotonic() - started:.0f} s; before={trees['before']} after={trees['after']}"
          + (f" (kernel {args.kernel})" if args.kernel else ""))  # fmt: skip
    print(f"\n| {'medians':58} | before | after | after - before |")
    print(f"|{'-' * 60}|--------|-------|----------------|")
    for row in ROWS:
        b, a = (statistics.median(r[row] for r in results[n]) for n in trees)
        fmt = "{:.0f}" if row.endswith(("faults", "conftest")) else "{:.2f}"
        print(f"| {row:58} | {fmt.format(b):>6} | {fmt.format(a):>5} | {fmt.format(a - b):>14} |")
    for one, other in (("before", "after"), ("after", "before")):
        only = sorted(set(modules[one]) - set(modules[other]))
        print(f"\nmodules the runner had at conftest only {one}: {', '.join(only) or 'none'}")


if __name__ == "__main__":
    main()
