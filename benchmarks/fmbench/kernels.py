"""``bench.py kernels``: UML kernels side by side, with and without UML's seccomp mode.

A kernel with the seccomp mode (Linux 6.15+) is measured twice, with
PYTEST_FAKEMACHINE_SECCOMP=off (guest processes under ptrace) and =auto (the
default: under seccomp where the host allows it). Each round, each
configuration in turn:

- run('true'): a whole Python process doing ``Machine(kernel=K).run("true")``
  (wall time, and the CPU time of the process and its children, the guest
  included, which a busy machine disturbs less);
- in one guest, timed there: 100 fork+exec of /bin/true, untar of 2,000
  small files to tmpfs, a Python start-up with common imports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pytest_fakemachine import FakeMachineError, Machine

from . import package as fm
from .runner import Row, Started, Step, StepFailed, clean_env, interleave, median, tail, timed

# Timed in the guest; prints one JSON object of seconds per workload.
GUEST_SCRIPT = r"""
set -e
mkdir -p /tmp/src/d && cd /tmp/src
python3 -c 'import os
for i in range(2000):
    open(f"d/f{i}", "w").write("x" * 100)'
tar cf /tmp/src.tar d && mkdir /tmp/dst
a=$(date +%s.%N); for i in $(seq 100); do /bin/true; done; b=$(date +%s.%N)
tar xf /tmp/src.tar -C /tmp/dst; c=$(date +%s.%N)
python3 -c 'import json, subprocess, pathlib, email.parser, http.client, unittest'
d=$(date +%s.%N)
python3 -c 'import json, sys; a, b, c, d = map(float, sys.argv[1:])
print(json.dumps({"fork_exec_100": b - a, "untar_2000": c - b, "python_imports": d - c}))' \
    "$a" "$b" "$c" "$d"
"""
ROWS = {
    "run_true_wall": "`Machine().run('true')` whole process, wall",
    "run_true_cpu": "the same, CPU (user+sys, guest included)",
    "fork_exec_100": "100 fork+exec of `/bin/true`",
    "untar_2000": "untar 2,000 small files to tmpfs",
    "python_imports": "`python3 -c 'import json, subprocess, pathlib, email.parser, "
    "http.client, unittest'`",
}
RUN_TRUE = (
    "import sys; from pytest_fakemachine import Machine; Machine(kernel=sys.argv[1]).run('true')"
)


@dataclass(frozen=True)
class Config:
    kernel: str
    version: str
    seccomp: str | None  # None: the kernel has no seccomp mode

    @property
    def label(self) -> str:
        mode = "" if self.seccomp is None else f" seccomp={self.seccomp}"
        return f"{self.version}{mode}"

    def env(self) -> dict[str, str]:
        env = clean_env()
        if self.seccomp is not None:
            env[fm.SECCOMP_ENV] = self.seccomp
        return env


def configs(kernels: list[str]) -> list[Config]:
    found = []
    for kernel in kernels:
        modes: list[str | None] = ["off", "auto"] if fm.kernel_has_seccomp(kernel) else [None]
        found += [Config(kernel, fm.kernel_version(kernel), mode) for mode in modes]
    return found


def run_true(config: Config) -> tuple[float, float]:
    """Wall and CPU seconds of a whole ``Machine(kernel=K).run('true')`` process."""
    argv = [sys.executable, "-c", RUN_TRUE, config.kernel]
    proc: list[subprocess.CompletedProcess[str]] = []

    def run() -> None:
        proc.append(subprocess.run(argv, env=config.env(), capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL, check=False))  # fmt: skip

    wall, cpu = timed(run)
    if proc[0].returncode != 0:
        raise StepFailed(f"run('true') exited {proc[0].returncode}: {tail(proc[0].stderr)}")
    return wall, cpu


def in_guest(config: Config, log: Callable[[str], None]) -> dict[str, float]:
    saved = os.environ.get(fm.SECCOMP_ENV)
    try:
        if config.seccomp is not None:
            os.environ[fm.SECCOMP_ENV] = config.seccomp
        result = Machine(kernel=config.kernel).run(GUEST_SCRIPT, timeout=600)
    except FakeMachineError as e:
        raise StepFailed(str(e)) from None
    finally:
        if saved is None:
            os.environ.pop(fm.SECCOMP_ENV, None)
        else:
            os.environ[fm.SECCOMP_ENV] = saved
    if result.returncode != 0:
        raise StepFailed(f"the guest's script exited {result.returncode}: {tail(result.stderr)}")
    if config.seccomp == "auto" and not fm.seccomp_used(result.console):
        log(f"bench:   note: {config.label}: the host refused seccomp; ran under ptrace")
    values: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


def step(config: Config, rows: dict[str, Row], log: Callable[[str], None]) -> Step:
    def run(round_no: int) -> str:
        wall, cpu = run_true(config)
        rows["run_true_wall"].values.append(wall)
        rows["run_true_cpu"].values.append(cpu)
        for key, value in in_guest(config, log).items():
            rows[key].values.append(value)
        return f"run('true') {wall:.2f} s, CPU {cpu:.2f} s"

    return Step(config.label, run, rows["run_true_wall"].failures.append)


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    todo = configs(args.kernel or [str(fm.default_kernel())])
    samples = {c: {key: Row(key, label) for key, label in ROWS.items()} for c in todo}
    for kernel in dict.fromkeys(c.kernel for c in todo):  # each kernel's initramfs, untimed
        log(f"bench: warming up {kernel}")
        Machine(kernel=kernel).run("true")
    problems = interleave([step(c, samples[c], log) for c in todo], args.runs, log)
    print(f"\n{args.runs} interleaved rounds, medians in seconds\n")
    print("| | " + " | ".join(c.label for c in todo) + " |")
    print("|---|" + "---|" * len(todo))
    for key, label in ROWS.items():
        cells = [median(samples[c][key].values) for c in todo]
        print(f"| {label} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in cells) + " |")
    load = os.getloadavg()[0]
    print(f"\nload average (1 min) {started.load[0]:.2f} -> {load:.2f}")
    for problem in problems:
        log(f"bench: {problem}")
    return 1 if problems else 0
