"""Many boots in a row, to catch flakes: ``python scripts/stress.py [--boots 200] [--tests 100]``.

Runs ``--boots`` consecutive ``Machine().run()`` calls, then a marked suite
of ``--tests`` function-scoped tests in one pytest run, and reports every
failure, the timing spread, and whether any guest process outlived its run.
Not part of the test suite (CI runs a 20-boot version in tests/test_faults.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from pytest_fakemachine import FakeMachineError, Machine
from pytest_fakemachine._uml import leftovers


def boots(count: int) -> int:
    machine = Machine()
    failures = 0
    times = []
    for i in range(count):
        start = time.perf_counter()
        try:
            result = machine.run(["echo", str(i)], timeout=120)
            ok = result.returncode == 0 and result.stdout == f"{i}\n"
        except FakeMachineError as e:
            ok = False
            print(f"boot {i}: {type(e).__name__}: {str(e)[:500]}")
        times.append(time.perf_counter() - start)
        if not ok:
            failures += 1
        if leftovers(os.getpid()):
            print(f"boot {i}: guest processes left running: {leftovers(os.getpid())}")
            failures += 1
    print(
        f"{count} boots: {failures} failures; wall median {statistics.median(times):.2f} s, "
        f"min {min(times):.2f} s, max {max(times):.2f} s"
    )
    return failures


def marked_suite(count: int) -> int:
    with tempfile.TemporaryDirectory(prefix="fm-stress-") as tmp:
        path = Path(tmp)
        (path / "pytest.ini").write_text("[pytest]\n")
        (path / "test_stress.py").write_text(
            textwrap.dedent(f"""
            import pytest

            @pytest.mark.fakemachine(timeout=120)
            @pytest.mark.parametrize("n", range({count}))
            def test_trivial(n):
                with open("/proc/cpuinfo") as f:
                    assert "User Mode Linux" in f.read()
        """)
        )
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    print(f"{count} marked tests: {summary} ({elapsed:.0f} s)")
    return 0 if proc.returncode == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=200)
    parser.add_argument("--tests", type=int, default=100)
    args = parser.parse_args()
    failures = boots(args.boots) + marked_suite(args.tests)
    orphans = leftovers(None)
    if orphans:
        print(f"orphaned guest processes: {orphans}")
    print("stress: " + ("PASS" if not failures and not orphans else "FAIL"))
    return 1 if failures or orphans else 0


if __name__ == "__main__":
    sys.exit(main())
