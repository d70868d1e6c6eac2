"""What one system call, page fault, hostfs lookup and program start cost, per UML kernel.

    python benchmarks/unit_costs.py [--rounds 3] [--kernel K]... [--counts-from SUITE_DIR]

Each round runs one small Python script on the host and in one guest per
kernel (default: linux.uml on PATH), kernels taking turns; medians:

- a system call: ``os.getppid()`` in a loop, minus the empty loop;
- a page fault: one write per 4 KiB page of a fresh 64 MiB anonymous mapping;
- a hostfs lookup: the first ``os.stat`` of each of 1,500 files under
  ``/usr/share`` (in a guest ``/usr`` is the host's over hostfs), and the
  second (the guest's cache);
- a program start: ``posix_spawn`` of ``/bin/true`` and its wait.

``--counts-from DIR`` also counts, with ``strace -f`` on the host as root (in
``unshare -mn --propagation private``), the system calls and path lookups of
the pytest suite in DIR (``python -m pytest -q -p no:cacheprovider DIR``):
the same programs make the same calls in a guest. Times them by each kernel's
unit costs, so the table shows what the floor of a suite is on each kernel:
``calls x cost``. Page faults are the guest's to count (the realsuite probe,
docs/performance.md): they are given per 10,000.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmbench.runner import clean_env  # beside this script, on sys.path when it runs

from pytest_fakemachine import Machine

SCRIPT = r"""
import json, mmap, os, time

def per(n, f):
    t = time.perf_counter(); f(n); return (time.perf_counter() - t) / n

def loop(n):
    for _ in range(n): pass

def calls(n):
    g = os.getppid
    for _ in range(n): g()

N = 20000
base = per(N, loop)
syscall = per(N, calls) - base
PAGES = 16384
m = mmap.mmap(-1, PAGES * 4096)
t = time.perf_counter()
for i in range(0, PAGES * 4096, 4096):
    m[i] = 1
fault = (time.perf_counter() - t) / PAGES - base
files = []
for d, _, names in os.walk("/usr/share/zoneinfo"):
    files += [os.path.join(d, n) for n in names]
    if len(files) >= 1500:
        break
files = files[:1500]
t = time.perf_counter()
for f in files:
    try: os.stat(f)
    except OSError: pass
miss = (time.perf_counter() - t) / len(files)
t = time.perf_counter()
for f in files:
    try: os.stat(f)
    except OSError: pass
hit = (time.perf_counter() - t) / len(files)
t = time.perf_counter()
for _ in range(40):
    os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)
spawn = (time.perf_counter() - t) / 40
print(json.dumps({"syscall": syscall, "fault": fault, "lookup": miss, "stat": hit,
                  "spawn": spawn, "files": len(files)}))
"""

UNITS = (
    ("syscall", "a system call", 1e6, "us"),
    ("fault", "a page fault", 1e6, "us"),
    ("lookup", "a stat over hostfs, first", 1e6, "us"),
    ("stat", "the same stat again", 1e6, "us"),
    ("spawn", "a program start", 1e3, "ms"),
)


def host_costs() -> dict[str, float]:
    # Drop the dentry cache's hold on nothing: on the host the first stat is a cached one
    # too (the files were read before); the row shows the host's floor for each.
    proc = subprocess.run(["/usr/bin/python3", "-c", SCRIPT], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(proc.stdout)


def guest_costs(kernel: str) -> dict[str, float]:
    result = Machine(kernel=kernel, timeout=300).run(["/usr/bin/python3", "-c", SCRIPT], check=True)
    return json.loads(result.stdout)


_FILE_CALLS = re.compile(r'^\d+\s+(\w+)\((?:AT_FDCWD, )?"([^"]*)"')
_LOCAL = ("/proc", "/sys", "/dev", "/tmp", "/run", "/etc", "/var/tmp")


def suite_counts(suite: Path, python: str) -> dict[str, int]:
    """System calls, and path lookups a guest would make over hostfs, of one run of ``suite``."""
    with tempfile.TemporaryDirectory(prefix="fm-counts-") as tmp:
        log = Path(tmp) / "trace"
        argv = ["unshare", "-mn", "--propagation", "private", "strace", "-f", "-qq", "-o",
                str(log), python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                "no:fakemachine", str(suite.resolve())]  # fmt: skip
        env = clean_env()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, cwd=tmp)
        summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        calls = lookups = 0
        with open(log, errors="replace") as f:
            for line in f:
                if "resumed>" in line or "+++" in line or "---" in line:
                    continue
                calls += 1
                m = _FILE_CALLS.match(line)
                if m and not m.group(2).startswith(_LOCAL):
                    lookups += 1  # outside the guest's own trees, or relative: hostfs
    print(f"counted: {summary}", file=sys.stderr)
    return {"calls": calls, "lookups": lookups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kernel", action="append", default=[])
    parser.add_argument("--counts-from", type=Path, help="a pytest suite to count calls of")
    parser.add_argument("--python", default=sys.executable, help="runs --counts-from's suite")
    args = parser.parse_args()
    kernels = args.kernel or [shutil.which("linux.uml") or "linux.uml"]
    started, load = time.monotonic(), [os.getloadavg()[0]]
    samples: dict[str, list[dict[str, float]]] = {"host": [], **{k: [] for k in kernels}}
    for _ in range(args.rounds):
        samples["host"].append(host_costs())
        for kernel in kernels:
            samples[kernel].append(guest_costs(kernel))
            print(".", end="", file=sys.stderr, flush=True)
    counts = suite_counts(args.counts_from, args.python) if args.counts_from else None
    load.append(os.getloadavg()[0])
    print(file=sys.stderr)
    med = {name: {u: statistics.median(s[u] for s in runs) for u, *_ in UNITS}
           for name, runs in samples.items()}  # fmt: skip
    names = list(samples)
    print(f"{args.rounds} rounds; load average {load[0]:.2f} -> {load[1]:.2f}; "
          f"{time.monotonic() - started:.0f} s\n")  # fmt: skip
    print("| medians | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for unit, label, scale, suffix in UNITS:
        cells = " | ".join(f"{med[n][unit] * scale:.2f} {suffix}" for n in names)
        print(f"| {label} | {cells} |")
    if counts is not None:
        print(f"\n{args.counts_from}: {counts['calls']:,} system calls, {counts['lookups']:,} "
              "path lookups outside /proc, /sys, /dev, /tmp, /run, /etc "
              "(strace -f on the host)")  # fmt: skip
        print("\n| the floor of those, per kernel | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        rows = (("system calls", "syscall", counts["calls"]),
                ("path lookups (hostfs misses in a guest)", "lookup", counts["lookups"]),
                ("10,000 page faults", "fault", 10000))  # fmt: skip
        for label, unit, n in rows:
            print(f"| {label} | " + " | ".join(f"{n * med[x][unit]:.2f} s" for x in names) + " |")


if __name__ == "__main__":
    main()
