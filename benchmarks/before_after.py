"""Before/after: two checkouts of pytest-fakemachine, interleaved whole-process runs.

    python benchmarks/before_after.py BEFORE_TREE AFTER_TREE [--runs 9]

Each run imports the package from one tree (PYTHONPATH) with this
interpreter, which must have pytest and filelock. Rows: `Machine().run("true")`
as a whole process, and one trivial marked test as a whole pytest run. Prints
medians of wall time and of CPU time (user+sys of the process and its
children, the guest included), which a busy machine disturbs much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST = """\
import pytest


@pytest.mark.fakemachine
def test_trivial() -> None:
    assert True
"""


def measure(argv: list[str], tree: str | os.PathLike[str], cwd: str) -> tuple[float, float]:
    """Wall and CPU time (the process and its children, the guest included) of one run."""
    env = {**os.environ, "PYTHONPATH": os.fspath(tree)}
    env.pop("PYTEST_ADDOPTS", None)  # the caller's options would change what is measured
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{argv} with {tree} failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    with tempfile.TemporaryDirectory() as work:
        Path(work, "test_trivial.py").write_text(TEST)
        rows = {
            'Machine().run("true")': [sys.executable, "-c",
                "from pytest_fakemachine import Machine; Machine().run('true', check=True)"],
            "one trivial marked test": [sys.executable, "-m", "pytest", "-q", "-p",
                                        "no:cacheprovider", "test_trivial.py"],
        }  # fmt: skip
        for argv in rows.values():  # warm up: initramfs caches, page cache
            for tree in trees.values():
                measure(argv, tree, work)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {
            (row, name): [] for row in rows for name in trees
        }
        for i in range(args.runs):
            for row, argv in rows.items():
                order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
                for name, tree in order:
                    results[(row, name)].append(measure(argv, tree, work))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.runs} runs each, load {load}")
    for row in rows:
        for index, what in ((0, "wall"), (1, "cpu")):
            b, a = (statistics.median(r[index] for r in results[(row, n)]) for n in trees)
            print(f"{row} {what}: before {b:.2f} s, after {a:.2f} s, {100 * (a / b - 1):+.0f}%")


if __name__ == "__main__":
    main()
