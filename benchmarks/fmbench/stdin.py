"""``bench.py stdin``: throughput of the command line's piped stdin, and its start-up.

Each ``--tree`` is a checkout of pytest-fakemachine (default: the installed
package), imported with PYTHONPATH by this interpreter; the runs take turns
across trees and rows, and the medians are printed.

Throughput: ``cat FILE | python -m pytest_fakemachine -- sha256sum`` with
``--mb`` MiB of random bytes, against the same with an empty pipe (the boot
and the rest); MiB/s is the size over the difference. The digest is checked
against the host's.

``--startup``: the interactive shell (``python -m pytest_fakemachine`` on a
pseudo-terminal, through pexpect) from start to its first prompt, and
``python -m pytest_fakemachine -- true`` as a whole process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import package as fm
from .runner import Row, Started, Step, StepFailed, clean_env, interleave, median, tail, timed

PROMPT = "root@fakemachine:"


def _env(tree: str | None) -> dict[str, str]:
    env = clean_env()
    if tree is not None:
        env["PYTHONPATH"] = tree
    return env


# Each run's working directory: not a checkout, whose package `python -m`
# would import ahead of PYTHONPATH's.
CWD = tempfile.gettempdir()
CLI = [sys.executable, "-m", fm.PACKAGE]


def piped_sha256(tree: str | None, data: Path) -> tuple[float, str]:
    """Wall time of `cat DATA | python -m pytest_fakemachine -- sha256sum`, and its digest."""
    start = time.monotonic()
    with open(data, "rb") as stdin:
        proc = subprocess.run([*CLI, "--", "sha256sum"], stdin=stdin, capture_output=True,
                              env=_env(tree), cwd=CWD, check=False, timeout=600)  # fmt: skip
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise StepFailed(f"exit {proc.returncode}: {tail(proc.stderr)}")
    return wall, proc.stdout.decode().split()[0]


def run_true(tree: str | None) -> float:
    proc = subprocess.run([*CLI, "--", "true"], stdin=subprocess.DEVNULL, capture_output=True,
                          env=_env(tree), cwd=CWD, check=False, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise StepFailed(f"exit {proc.returncode}: {tail(proc.stderr)}")
    return 0.0


def shell_to_prompt(tree: str | None) -> float:
    import pexpect  # type: ignore[import-untyped]  # noqa: PLC0415 (only --startup needs it)

    start = time.monotonic()
    child = pexpect.spawn(CLI[0], CLI[1:], env=_env(tree), cwd=CWD, timeout=120,
                          dimensions=(24, 80))  # fmt: skip
    try:
        child.expect_exact(PROMPT)
        wall = time.monotonic() - start
        child.sendline("exit")
        child.expect(pexpect.EOF)
    except pexpect.ExceptionPexpect as e:
        raise StepFailed(f"no prompt: {str(e).splitlines()[0]}") from None
    finally:
        child.close(force=True)
    return float(wall)


def _startup_step(name: str, fn: Callable[[str | None], float], whole: bool,
                  tree: str | None) -> tuple[Step, Row, Row]:  # fmt: skip
    """Wall time (of the whole run if ``whole``, else what ``fn`` says), and CPU time."""
    wall, cpu = Row(name, f"{name}, {tree or 'installed'}"), Row(name, "CPU")

    def run(round_no: int) -> str:
        measured: list[float] = []
        elapsed, used = timed(lambda: measured.append(fn(tree)))
        wall.values.append(elapsed if whole else measured[0])
        cpu.values.append(used)
        return f"{wall.values[-1]:.2f} s, CPU {used:.2f} s"

    return Step(wall.label, run, wall.failures.append), wall, cpu


def startup_steps(trees: list[str | None]) -> tuple[list[Step], list[tuple[Row, Row]]]:
    """Per tree and row: wall time, and the whole run's CPU time (guest included)."""
    rows: list[tuple[Row, Row]] = []
    steps: list[Step] = []
    for name, fn, whole in (("shell: start to first prompt", shell_to_prompt, False),
                            ("-- true: whole process", run_true, True)):  # fmt: skip
        for tree in trees:
            step, wall, cpu = _startup_step(name, fn, whole, tree)
            steps.append(step)
            rows.append((wall, cpu))
    return steps, rows


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    trees: list[str | None] = [str(Path(t).resolve()) for t in args.tree] or [None]
    if args.startup:
        steps, rows = startup_steps(trees)
        problems = interleave(steps, args.runs, log)
        print()
        for wall, cpu in rows:
            if wall.values:
                print(f"{wall.label:<60} median {median(wall.values) or 0.0:5.2f} s "
                      f"(min {min(wall.values):.2f}, max {max(wall.values):.2f}; "
                      f"whole run's CPU {median(cpu.values) or 0.0:.2f} s; "
                      f"n={len(wall.values)})")  # fmt: skip
        return 1 if problems else 0
    results: dict[str | None, tuple[list[float], list[float]]] = {t: ([], []) for t in trees}
    with tempfile.TemporaryDirectory(prefix="fmbench-stdin-") as tmp:
        big, empty = Path(tmp, "big"), Path(tmp, "empty")
        big.write_bytes(os.urandom(args.mb << 20))
        empty.write_bytes(b"")
        want = hashlib.sha256(big.read_bytes()).hexdigest()
        failures: list[str] = []

        def step(tree: str | None) -> Step:
            def run(round_no: int) -> str:
                wall, digest = piped_sha256(tree, big)
                if digest != want:
                    raise StepFailed(f"sha256 {digest}, the host's is {want}")
                base = piped_sha256(tree, empty)[0]
                results[tree][0].append(wall)
                results[tree][1].append(base)
                return f"{wall:.2f} s, empty pipe {base:.2f} s"

            return Step(f"{args.mb} MiB piped, {tree or 'installed'}", run, failures.append)

        problems = interleave([step(t) for t in trees], args.runs, log)
    print()
    for tree, (full, base) in results.items():
        if not full:
            continue
        rate = median(args.mb / max(f - b, 1e-3) for f, b in zip(full, base)) or 0.0
        print(f"{tree or 'installed'}: {args.mb} MiB piped to sha256sum: median "
              f"{median(full) or 0.0:.2f} s, empty pipe {median(base) or 0.0:.2f} s -> "
              f"{rate:.2f} MiB/s (n={len(full)}, digest matches)")  # fmt: skip
    return 1 if problems else 0
