"""``bench.py unit-costs``: what one system call, page fault, hostfs lookup and program
start cost, on the host and in a guest of each kernel.

Each round runs one small Python script on the host and in one guest per
kernel, kernels taking turns; medians:

- a system call: ``os.getppid()`` in a loop, minus the empty loop;
- a page fault: one write per 4 KiB page of a fresh 64 MiB anonymous mapping;
- a hostfs lookup: the first ``os.stat`` of each of 1,500 files under
  ``/usr/share`` (in a guest ``/usr`` is the host's over hostfs), and the
  second;
- a program start: ``posix_spawn`` of ``/bin/true`` and its wait.

``--counts-from DIR`` also counts, with ``strace -f`` on the host as root (in
``unshare -mn --propagation private``), the system calls and path lookups of
the pytest suite in DIR: the same programs make the same calls in a guest.
Priced by each kernel's unit costs, the second table is the floor of that
suite on each kernel. Page faults are the guest's to count (the realsuite
probe): they are given per 10,000.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pytest_fakemachine import FakeMachineError, Machine

from . import package as fm
from .runner import Started, Step, StepFailed, clean_env, interleave, median, tail

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


SCRIPT_PYTHON = "/usr/bin/python3"  # the host's, which a guest runs too (its /usr is the host's)


def host_costs() -> dict[str, float]:
    proc = subprocess.run([SCRIPT_PYTHON, "-c", SCRIPT], capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL, env=clean_env())  # fmt: skip
    if proc.returncode != 0:
        raise StepFailed(f"the host's script exited {proc.returncode}: {tail(proc.stderr)}")
    values: dict[str, float] = json.loads(proc.stdout)
    return values


def guest_costs(kernel: str) -> dict[str, float]:
    try:
        result = Machine(kernel=kernel, timeout=300).run([SCRIPT_PYTHON, "-c", SCRIPT])
    except FakeMachineError as e:
        raise StepFailed(str(e)) from None
    if result.returncode != 0:
        raise StepFailed(f"the guest's script exited {result.returncode}: {tail(result.stderr)}")
    values: dict[str, float] = json.loads(result.stdout)
    return values


_FILE_CALLS = re.compile(r'^\d+\s+(\w+)\((?:AT_FDCWD, )?"([^"]*)"')
_LOCAL = ("/proc", "/sys", "/dev", "/tmp", "/run", "/etc", "/var/tmp")


def suite_counts(suite: Path, python: str, log: Callable[[str], None]) -> dict[str, int]:
    """System calls, and path lookups a guest would make over hostfs, of one run of ``suite``."""
    with tempfile.TemporaryDirectory(prefix="fm-counts-") as tmp:
        trace = Path(tmp) / "trace"
        argv = ["unshare", "-mn", "--propagation", "private", "strace", "-f", "-qq", "-o",
                str(trace), python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                f"no:{fm.ENTRY_POINT}", str(suite.resolve())]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=clean_env(),
                              cwd=tmp, stdin=subprocess.DEVNULL)  # fmt: skip
        summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        calls = lookups = 0
        with open(trace, errors="replace") as f:
            for line in f:
                if "resumed>" in line or "+++" in line or "---" in line:
                    continue
                calls += 1
                m = _FILE_CALLS.match(line)
                if m and not m.group(2).startswith(_LOCAL):
                    lookups += 1  # outside the guest's own trees, or relative: hostfs
    log(f"bench: counted: {summary}")
    return {"calls": calls, "lookups": lookups}


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    kernels = args.kernel or [str(fm.default_kernel())]
    samples: dict[str, list[dict[str, float]]] = {"host": [], **{k: [] for k in kernels}}
    failures: list[str] = []

    def step(name: str, measure: Callable[[], dict[str, float]]) -> Step:
        def run(round_no: int) -> str:
            samples[name].append(measure())
            return f"a system call {samples[name][-1]['syscall'] * 1e6:.2f} us"

        return Step(name, run, failures.append)

    steps = [step("host", host_costs)]
    steps += [step(k, functools.partial(guest_costs, k)) for k in kernels]
    problems = interleave(steps, args.runs, log)
    counts = suite_counts(args.counts_from, args.python, log) if args.counts_from else None
    names = [n for n in samples if samples[n]]
    med = {n: {u: median(s[u] for s in samples[n]) or 0.0 for u, *_ in UNITS} for n in names}
    print(f"\n{args.runs} rounds, interleaved, medians\n")
    print("| one... | " + " | ".join(names) + " |")
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
    print(f"\nload average (1 min) {started.load[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    return 1 if problems else 0
