"""UML kernels side by side: boot and in-guest work, with and without UML's seccomp mode.

    python benchmarks/kernels.py [--rounds 5] [KERNEL...]

KERNEL: paths of linux.uml binaries (default: linux.uml on PATH). A kernel
with the seccomp mode (Linux 6.15+) is measured twice, with
PYTEST_FAKEMACHINE_SECCOMP=off (guest processes under ptrace) and =auto (the
default: under seccomp where the host allows it). The configurations take
turns within each round (A, B, C, A, B, C...), and the table gives medians:

- run('true'): a whole Python process doing `Machine(kernel=K).run("true")`
  (wall time, and CPU time of the process and its children, the guest
  included, which a busy machine disturbs less);
- in one guest per round, timed there: 100 fork+exec of /bin/true, untar of
  2,000 small files to tmpfs, and a Python start-up with imports.

Needs a host whose glibc runs every kernel given (Debian 13's and testing's
need glibc >= 2.38: measure them in a Debian 13 chroot on a Debian 12 host).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_fakemachine import Machine
from pytest_fakemachine.backend.uml.kernel import SECCOMP_ENV, kernel_info

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
ROWS = ("run_true_wall", "run_true_cpu", "fork_exec_100", "untar_2000", "python_imports")
LABELS = {
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
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        if self.seccomp is not None:
            env[SECCOMP_ENV] = self.seccomp
        return env


def configs(kernels: list[str]) -> list[Config]:
    found = []
    for kernel in kernels:
        info = kernel_info(Path(kernel))
        modes: list[str | None] = ["off", "auto"] if info.seccomp else [None]
        found += [Config(kernel, info.version, mode) for mode in modes]
    return found


def run_true(config: Config) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", RUN_TRUE, config.kernel], env=config.env(), check=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def in_guest(config: Config) -> dict[str, float]:
    saved = os.environ.get(SECCOMP_ENV)
    try:
        if config.seccomp is not None:
            os.environ[SECCOMP_ENV] = config.seccomp
        result = Machine(kernel=config.kernel).run(GUEST_SCRIPT, check=True)
    finally:
        if saved is None:
            os.environ.pop(SECCOMP_ENV, None)
        else:
            os.environ[SECCOMP_ENV] = saved
    seccomp_used = "seccomp filters can be installed...OK" in result.console
    if config.seccomp == "auto" and not seccomp_used:
        print(f"note: {config.label}: the host refused seccomp; ran under ptrace", file=sys.stderr)
    values: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="*", default=[shutil.which("linux.uml") or "linux.uml"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    todo = configs(args.kernels)
    samples: dict[Config, dict[str, list[float]]] = {c: {r: [] for r in ROWS} for c in todo}
    Machine(kernel=todo[0].kernel).run("true")  # builds the initramfs outside the rounds
    for round_ in range(args.rounds):
        for config in todo:
            wall, cpu = run_true(config)
            samples[config]["run_true_wall"].append(wall)
            samples[config]["run_true_cpu"].append(cpu)
            for row, value in in_guest(config).items():
                samples[config][row].append(value)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.rounds} interleaved rounds, medians in seconds\n")
    print("| | " + " | ".join(c.label for c in todo) + " |")
    print("|---|" + "---|" * len(todo))
    for row in ROWS:
        cells = [f"{statistics.median(samples[c][row]):.2f}" for c in todo]
        print(f"| {LABELS[row]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
