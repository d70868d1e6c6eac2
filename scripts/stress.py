"""Many boots in a row, to catch flakes: ``python scripts/stress.py [--boots 200] [--tests 100]``.

Runs ``--boots`` consecutive ``Machine().run()`` calls, ``--reboots`` guests
that reboot (each must end the run, its job run once), ``--threads`` threads
booting guests at once, ``--kills`` Python processes SIGKILLed at a random
instant while they prepare or boot a guest, ``--signals`` pytest sessions
signalled (mostly SIGTERM) at a random instant while guests boot ahead, then a
marked suite of ``--tests`` function-scoped tests in one pytest run; a count of
0 skips its part. Reports every failure, the timing spread, and whether
anything outlived its run: guest processes, or files in the private TMPDIR all
of it runs in. Not part of the test suite (CI runs a 20-boot version in
tests/guest/test_faults.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from pytest_fakemachine import BootError, FakeMachineError, Machine
from pytest_fakemachine.backend import leftovers


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


def reboots(count: int) -> int:
    """Guests that reboot: each run must end with "the guest rebooted", its job run once."""
    failures = 0
    with tempfile.TemporaryDirectory(prefix="fm-stress-") as tmp:
        for i in range(count):
            runs = Path(tmp) / f"runs{i}"
            machine = Machine(timeout=120)
            machine.add_volume(tmp, "/mnt/count")
            command = ["reboot -f", "systemctl reboot; sleep 60", "echo b > /proc/sysrq-trigger"]
            try:
                machine.run(f"echo ran >> /mnt/count/{runs.name}; sync; {command[i % 3]}")
                why = "the run returned"
            except BootError as e:
                why = "" if str(e).startswith("the guest rebooted") else str(e)[:300]
            except FakeMachineError as e:
                why = f"{type(e).__name__}: {str(e)[:300]}"
            if not why and runs.read_text() != "ran\n":
                why = f"the job ran {runs.read_text().count('ran')} times"
            if why:
                failures += 1
                print(f"reboot {i} ({command[i % 3]}): {why}")
    print(f"{count} reboots: {failures} failures")
    return failures


def threads(count: int, boots_each: int) -> int:
    """``count`` threads, each booting ``boots_each`` guests one after the other."""
    failures: list[str] = []

    def worker(n: int) -> None:
        machine = Machine(timeout=300)
        for i in range(boots_each):
            try:
                out = machine.run(["echo", f"{n}.{i}"]).stdout
                if out != f"{n}.{i}\n":
                    failures.append(f"thread {n} boot {i}: stdout {out!r}")
            except FakeMachineError as e:
                failures.append(f"thread {n} boot {i}: {type(e).__name__}: {str(e)[:300]}")

    start = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for failure in failures:
        print(failure)
    print(f"{count} threads x {boots_each} boots: {len(failures)} failures "
          f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    return len(failures)


KILLED = """
import sys
from pytest_fakemachine import Machine
machine = Machine(scratch=sys.argv[1])
machine.add_image(sys.argv[2], size="1G")
machine.run("sleep 30")
"""


def kills(count: int, tmp: Path) -> int:
    """Python processes SIGKILLed at a random instant of preparing or booting a guest:
    nothing of theirs may remain (work directory, scratch image, guest processes)."""
    failures = 0
    rng = random.Random(1)
    for i in range(count):
        before = set(os.listdir(tmp))
        image = tmp / f"kill{i}.img"
        proc = subprocess.Popen([sys.executable, "-c", KILLED, rng.choice(["64M", "50G"]),
                                 str(image)], stdin=subprocess.DEVNULL)  # fmt: skip
        # Until its work directory appears, then a random moment: formatting the
        # scratch disk, writing files, starting linux.uml, or booting.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            n.startswith("fakemachine-") for n in set(os.listdir(tmp)) - before
        ):
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        left: set[str] = set()
        while time.monotonic() < deadline:
            left = set(os.listdir(tmp)) - before - {image.name}
            if not left and not leftovers(proc.pid):
                break
            time.sleep(0.05)
        image.unlink(missing_ok=True)
        if left or leftovers(proc.pid):
            failures += 1
            print(f"kill {i}: left behind {sorted(left)} {leftovers(proc.pid)}")
    print(f"{count} kills during preparation or boot: {failures} left something behind")
    return failures


SIGNALED_SUITE = """
import time
import pytest

@pytest.mark.fakemachine(timeout=120)
@pytest.mark.parametrize("n", range(6))
def test_booted_ahead(n):
    time.sleep(0.5)
"""
# The dispositions pytest has when started from a terminal, however this script
# was started (a background job passes SIGINT on ignored, nohup SIGHUP).
SIGNALED = (
    "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " signal.signal(signal.SIGTERM, signal.SIG_DFL); signal.signal(signal.SIGHUP, signal.SIG_DFL);"
    " sys.exit(pytest.console_main())"
)
SIGNAL_GRACE_SECONDS = 1.0  # for the watchdogs of a process that died at once


def signals(count: int, tmp: Path) -> int:
    """pytest sessions of function-scoped marked tests, their guests booting
    ahead, signalled at a random instant (mostly SIGTERM, which pytest does not
    catch: the process dies at once; SIGINT, SIGHUP, SIGKILL): a moment after
    pytest has exited, none of its guests may run; its work directories go."""
    failures, busiest, slowest = 0, 0, 0.0
    rng = random.Random(2)
    suite = Path(tempfile.mkdtemp(prefix="signals-", dir=tmp))
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_signals.py").write_text(SIGNALED_SUITE)
    for i in range(count):
        before = set(os.listdir(tmp))
        sig = rng.choice([signal.SIGTERM] * 3 + [signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
        proc = subprocess.Popen([sys.executable, "-c", SIGNALED, "-q", "-p", "no:cacheprovider"],
                                cwd=suite, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            n.startswith("fakemachine-") for n in set(os.listdir(tmp)) - before
        ):
            time.sleep(0.001)
        # From the first guest's preparation on: its boot, the next ones
        # booting ahead, waiting for their turn, taking over.
        time.sleep(rng.uniform(0, 5))
        guests = len({_group(pid) for pid in leftovers(proc.pid)} - {None})
        busiest = max(busiest, guests)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        exited = time.monotonic()
        while leftovers(proc.pid) and time.monotonic() < exited + SIGNAL_GRACE_SECONDS:
            time.sleep(0.01)
        alive = leftovers(proc.pid)
        slowest = max(slowest, time.monotonic() - exited)
        deadline = time.monotonic() + 10
        while (left := set(os.listdir(tmp)) - before) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive or left:
            failures += 1
            ps = subprocess.run(["ps", "-o", "pid,ppid,pgid,stat,comm", "-p",
                                 ",".join(map(str, alive or [0]))],
                                capture_output=True, text=True, check=False).stdout  # fmt: skip
            print(f"signal {i} ({sig.name} with {guests} guests up): still running "
                  f"{SIGNAL_GRACE_SECONDS:g} s after pytest exited {alive}, left behind "
                  f"{sorted(left)}\n{ps}")  # fmt: skip
        while leftovers(proc.pid) and time.monotonic() < deadline + 30:  # not to blur the next
            time.sleep(0.1)
    shutil.rmtree(suite, ignore_errors=True)
    print(f"{count} signals while guests booted ahead (up to {busiest} guests at once): "
          f"{failures} left something behind; the guests were gone {slowest:.2f} s after "
          "pytest at the latest")  # fmt: skip
    return failures


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # gone meanwhile
        return None


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
    parser.add_argument("--reboots", type=int, default=12)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--thread-boots", type=int, default=10)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--signals", type=int, default=50)
    args = parser.parse_args()
    # A TMPDIR of its own: whatever a run leaves there is a leak.
    tmp = Path(tempfile.mkdtemp(prefix="fm-stress-tmp-"))
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)
    try:
        # Each part with a count of 0 is skipped.
        failures = boots(args.boots) if args.boots else 0
        failures += reboots(args.reboots) if args.reboots else 0
        failures += threads(args.threads, args.thread_boots) if args.threads else 0
        failures += kills(args.kills, tmp) if args.kills else 0
        failures += signals(args.signals, tmp) if args.signals else 0
        failures += marked_suite(args.tests) if args.tests else 0
        orphans = leftovers(None)
        if orphans:
            print(f"orphaned guest processes: {orphans}")
        left = os.listdir(tmp)
        if left:
            print(f"left behind in TMPDIR {tmp}: {sorted(left)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = not failures and not orphans and not left
    print("stress: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
