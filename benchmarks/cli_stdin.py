"""Throughput of ``pytest-fakemachine``'s piped stdin, and its start-up times.

    python benchmarks/cli_stdin.py [--mb 20] [--runs 5] [TREE ...]
    python benchmarks/cli_stdin.py --startup [--runs 9] [TREE ...]

Each TREE is a checkout of pytest-fakemachine (default: this one), imported
with PYTHONPATH by this interpreter (which needs pytest, filelock and, for
--startup, pexpect). Runs are interleaved across trees (A, B, A, B...) and
medians printed, so a busy machine disturbs the ratio less than the numbers.

Throughput: ``cat FILE | python -m pytest_fakemachine -- sha256sum`` with
--mb MiB of random bytes, against the same with an empty pipe (the boot and
the rest); MB/s is the size over the difference. The digest is checked
against the host's.

--startup: the interactive shell (``python -m pytest_fakemachine`` on a
pseudo-terminal, through pexpect) from start to its first prompt, and
``python -m pytest_fakemachine -- true`` as a whole process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = str(Path(__file__).resolve().parent.parent)
PROMPT = "root@fakemachine:"


def _env(tree: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": tree}


# Each run's working directory: not a checkout, whose package `python -m`
# would import ahead of PYTHONPATH's.
CWD = tempfile.gettempdir()


def piped_sha256(tree: str, data: Path) -> tuple[float, str]:
    """Wall time of `cat DATA | pytest-fakemachine -- sha256sum`, and its digest."""
    start = time.monotonic()
    cat = subprocess.Popen(["cat", str(data)], stdout=subprocess.PIPE)
    proc = subprocess.run([sys.executable, "-m", "pytest_fakemachine", "--", "sha256sum"],
                          stdin=cat.stdout, capture_output=True, env=_env(tree), cwd=CWD,
                          check=False)  # fmt: skip
    assert cat.stdout is not None
    cat.stdout.close()
    cat.wait()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{tree}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return wall, proc.stdout.decode().split()[0]


def run_true(tree: str) -> float:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest_fakemachine", "--", "true"],
                          stdin=subprocess.DEVNULL, capture_output=True, env=_env(tree), cwd=CWD,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"{tree}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return time.monotonic() - start


def shell_to_prompt(tree: str) -> float:
    import pexpect  # type: ignore[import-untyped]  # noqa: PLC0415 (only --startup needs it)

    start = time.monotonic()
    child = pexpect.spawn(sys.executable, ["-m", "pytest_fakemachine"], env=_env(tree),
                          cwd=CWD, timeout=120, dimensions=(24, 80))  # fmt: skip
    try:
        child.expect_exact(PROMPT)
        wall = time.monotonic() - start
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return wall


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def interleave(trees: list[str], runs: int, rows: dict[str, Callable[[str], float]]) -> None:
    """Medians of each row's wall time, and of the CPU time (user+sys, the
    guest's included) of the whole run, which a busy machine disturbs less."""
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(r, t): [] for r in rows
                                                               for t in trees}  # fmt: skip
    for _ in range(runs):
        for row, measure in rows.items():
            for tree in trees:
                cpu = _children_cpu()
                wall = measure(tree)
                times[row, tree].append((wall, _children_cpu() - cpu))
    for (row, tree), values in times.items():
        walls = [wall for wall, _ in values]
        cpu = statistics.median(cpu for _, cpu in values)
        print(f"{row:<30} {tree:<30} median {statistics.median(walls):5.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}; whole run's CPU {cpu:.2f} s; "
              f"n={len(values)})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", default=[HERE])
    ap.add_argument("--mb", type=int, default=20, help="MiB of random stdin (default 20)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--startup", action="store_true", help="time start-up instead")
    args = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    if args.startup:
        interleave(trees, args.runs, {"shell: start to first prompt": shell_to_prompt,
                                      "-- true: whole process": run_true})  # fmt: skip
        return
    with tempfile.TemporaryDirectory() as tmp:
        big, empty = Path(tmp, "big"), Path(tmp, "empty")
        big.write_bytes(os.urandom(args.mb << 20))
        empty.write_bytes(b"")
        want = hashlib.sha256(big.read_bytes()).hexdigest()
        times: dict[str, tuple[list[float], list[float]]] = {t: ([], []) for t in trees}
        for _ in range(args.runs):
            for tree in trees:
                wall, digest = piped_sha256(tree, big)
                if digest != want:
                    sys.exit(f"{tree}: sha256 {digest}, the host's is {want}")
                times[tree][0].append(wall)
                times[tree][1].append(piped_sha256(tree, empty)[0])
        for tree, (full, base) in times.items():
            per_run = [args.mb / max(f - b, 1e-3) for f, b in zip(full, base)]
            full_s, base_s, rate = (statistics.median(v) for v in (full, base, per_run))
            print(f"{tree}: {args.mb} MiB piped to sha256sum: median {full_s:.2f} s, "
                  f"empty pipe {base_s:.2f} s -> {rate:.2f} MiB/s "
                  f"(n={args.runs}, digest matches)")  # fmt: skip


if __name__ == "__main__":
    main()
