#!/usr/bin/env python3
"""Side-by-side benchmark of pytest-fakemachine, a bare UML boot and Debian's fakemachine CLI.

Run from the repository root (the package must be installed, e.g. ``pip install -e .``)::

    python benchmarks/bench.py                      # 5 runs of everything
    python benchmarks/bench.py --quick              # 3 runs, fewer tests per pytest run
    python benchmarks/bench.py --markdown docs/performance.md

Every measurement is taken ``--runs`` times, interleaved round by round (one of
each per round) so that a change in the machine's load hits every row alike.
The table shows medians, min and max, ratios and the project's targets.
``--markdown PATH`` replaces the text between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` in PATH with the table and the time breakdown.

The script leaves nothing behind: it works in one temporary directory, makes
itself the child subreaper so every orphaned descendant (guests included) is
re-parented to it, and kills and reaps whatever it started that outlives a
measurement. Processes it did not start are never touched. Exit status: 0 when
every measurement ran (targets missed or not), 1 when one failed or something
had to be cleaned up after it, 2 when the host cannot boot a guest at all.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/bench.py` puts only benchmarks/ on sys.path
    sys.path.insert(0, str(REPO))

from pytest_fakemachine import FakeMachineError, Machine  # noqa: E402
from pytest_fakemachine._cpio import CpioWriter  # noqa: E402
from pytest_fakemachine._initramfs import _collect_inputs, write_base  # noqa: E402
from pytest_fakemachine._session import (  # noqa: E402
    FAST_BOOT_ARGS,
    SKIP_RAID_BENCHMARKS,
    command_body,
)
from pytest_fakemachine._uml import GuestProcess, find_kernel, leftovers  # noqa: E402

MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
FLOOR_TIMEOUT = 60.0  # a bare boot takes about a second
RUN_TIMEOUT = 300.0  # one Machine().run() process
CLI_TIMEOUT = 120.0  # Debian's fakemachine CLI can hang
PYTEST_TIMEOUT = 1800.0  # one whole pytest run
SAMPLE_SECONDS = 0.05  # memory sampling period
CHART_WIDTH = 50
_PR_SET_CHILD_SUBREAPER = 36
_SAFE_PATH = re.compile(r"[A-Za-z0-9/._+-]+")  # what may go on the kernel command line
_PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
# The job of the breakdown run: guest uptime before and after the `true` of run("true").
BREAKDOWN_COMMAND = "read -r a _ </proc/uptime; true; read -r b _ </proc/uptime; echo $a $b"

FLOOR_INIT = """\
#!/bin/busybox sh
exec /bin/busybox poweroff -f
"""
ONE_TEST = """\
import pytest


@pytest.mark.fakemachine
def test_trivial():
    pass
"""
MODULE_HEADER = """\
import pytest

pytestmark = pytest.mark.fakemachine(scope="module")
"""
FUNCTION_HEADER = """\
import pytest

pytestmark = pytest.mark.fakemachine
"""
TRIVIAL_TEST = """

def test_trivial_{n}():
    pass
"""


class StepFailed(Exception):
    """One measurement did not produce a valid number; the message says why."""


# --------------------------------------------------------------------------------------------
# Processes: find, kill and reap only what this script started


def _set_child_subreaper() -> bool:
    """Orphaned descendants (a guest whose parent died...) are re-parented to us, not init."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    comm: str


def _processes() -> dict[int, ProcInfo]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = ProcInfo(
            int(entry), int(fields[1]), int(fields[2]), int(fields[3]), fields[0], comm
        )
    return table


def descendants(root: int, table: dict[int, ProcInfo] | None = None) -> list[ProcInfo]:
    """Every process below ``root`` in the process tree (zombies included)."""
    table = _processes() if table is None else table
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: list[ProcInfo] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(table[pid])
        todo += children.get(pid, [])
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _reap_adopted() -> None:
    """Collect the exit status of orphans re-parented to us (they would stay zombies)."""
    me = os.getpid()
    for info in _processes().values():
        if info.ppid == me and info.state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)


def sweep(grace: float = 3.0) -> list[str]:
    """Kill every live descendant of this process; describe each one killed.

    Between measurements this process has no children of its own, so whatever
    is found is something a measurement left behind. Helpers that exit on
    their own (libslirp-helper --exit-with-parent...) get ``grace`` seconds.
    """
    deadline = time.monotonic() + grace
    while True:
        _reap_adopted()
        alive = [p for p in descendants(os.getpid()) if p.state != "Z"]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    described = []
    for info in alive:
        described.append(f"{info.comm} (pid {info.pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while alive and time.monotonic() < end:  # wait for them to die, and reap ours
        _reap_adopted()
        table = _processes()
        alive = [p for p in alive if p.pid in table and table[p.pid].state != "Z"]
        if alive:
            time.sleep(0.05)
    _reap_adopted()
    return described


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _clean_env() -> dict[str, str]:
    """Our environment without what would change how pytest loads plugins."""
    drop = {"PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _tail(text: str | bytes, lines: int = 8) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _python_error(stderr: str) -> str:
    """The exception line of a Python traceback in ``stderr``, then what follows it."""
    lines = stderr.rstrip().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Timeout|Exit)\b", line):
            return "\n".join(lines[i : i + 40])
    return "\n".join(lines[-40:])


# --------------------------------------------------------------------------------------------
# The measurements


@dataclass
class Context:
    tmp: Path
    kernel: Path
    initrd: Path
    floor_args: list[str]
    module_tests: int
    xdist_tests: int
    one_test: Path = field(init=False)
    module_file: Path = field(init=False)
    function_file: Path = field(init=False)
    fakemachine_cli: str | None = None
    cli_hung: bool = False
    cli_dirs: set[str] = field(default_factory=set)


def build_floor_initramfs(path: Path) -> None:
    """busybox, its libraries and an /init that powers off at once, in a newc archive."""
    with open(path, "wb") as out:
        cpio = CpioWriter(out)
        write_base(cpio, _collect_inputs().files, ["dev", "proc", "sys", "usr"])
        cpio.add_file("init", FLOOR_INIT.encode(), 0o755)
        cpio.close()


def floor_args(initrd: Path) -> list[str]:
    """Our Session's kernel command line, minus what serves systemd and the job.

    Taken from ``Session.kernel_args()`` itself, so the floor keeps up with the
    console wiring and boot-time skips (initcall_blacklist...) the Session uses.
    """
    with Machine().session() as session:
        work = str(session.workdir)
        args = session.kernel_args()
    drop = re.compile(r"(initrd|systemd\.[\w.]+|ubd\d+|vec\d+)=")
    return [f"initrd={initrd}", *(a for a in args if work not in a and not drop.match(a))]


Skips = Literal["ours", "issue", "none"]


def floor_variant(args: list[str], skips: Skips) -> list[str]:
    """The floor's kernel command line with one set of boot-time skips.

    ``ours``: every skip the Session passes (initcall_blacklist, FAST_BOOT_ARGS);
    ``issue``: the floor as the speed issue defines it, the RAID6/XOR boot
    benchmarks skipped and nothing else; ``none``: no skip at all.
    """
    if skips == "ours":
        return list(args)
    fast = {a.partition("=")[0] for a in FAST_BOOT_ARGS if not a.startswith("printk.")}
    kept = [
        a for a in args
        if not a.startswith("initcall_blacklist=") and a.partition("=")[0] not in fast
    ]  # fmt: skip
    if skips == "issue":
        kept.append("initcall_blacklist=" + ",".join(SKIP_RAID_BENCHMARKS))
    return kept


def floor_boot(ctx: Context, *, skips: Skips) -> float:
    """UML lifetime of a bare boot to an /init that powers off, started as our guests are.

    GuestProcess starts it (same environment, session, CPU pinning and
    parent-death signal as every guest); only the initramfs and the job differ.
    """
    args = floor_variant(ctx.floor_args, skips)
    uml_dir = Path(tempfile.mkdtemp(prefix="uml-", dir=ctx.tmp))
    guest = GuestProcess(ctx.kernel, [*args, f"uml_dir={uml_dir}"], workdir=uml_dir, network=False)
    try:
        guest.start()
        finished = guest.wait(FLOOR_TIMEOUT)
    finally:
        guest.kill()
        shutil.rmtree(uml_dir, ignore_errors=True)
    console = guest.console()
    if not finished:
        raise StepFailed(f"the bare guest did not power off within {FLOOR_TIMEOUT:g} s")
    if "Run /init as init process" not in console or "Kernel panic" in console:
        raise StepFailed(f"the bare guest did not run /init:\n{_tail(console)}")
    return guest.ended_at - guest.started_at


def _run(
    argv: list[str], cwd: Path, timeout: float, what: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` in its own session, output captured; StepFailed after ``timeout``."""
    try:
        return subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, start_new_session=True, env=env, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{what} took over {timeout:g} s") from None


def machine_process(ctx: Context) -> float:
    """A whole `python -c "...Machine().run('true')"` process, interpreter start included."""
    code = "from pytest_fakemachine import Machine; Machine().run('true', check=True)"
    start = time.monotonic()
    proc = _run([sys.executable, "-c", code], REPO, RUN_TIMEOUT, "Machine().run('true')")
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise StepFailed(f"exit status {proc.returncode}: {_python_error(proc.stderr)}")
    return elapsed


def fakemachine_cli(ctx: Context) -> float:
    """Debian's `fakemachine -q -b uml -- true`, stdin from /dev/null, at most CLI_TIMEOUT s."""
    assert ctx.fakemachine_cli is not None
    if ctx.cli_hung:
        raise StepFailed("skipped: an earlier run hung")
    start = time.monotonic()
    proc = subprocess.Popen(
        [ctx.fakemachine_cli, "-q", "-b", "uml", "--", "true"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # Watch its tree: its UML kernel runs in a session of its own, and names its
    # temporary directory (initrd=/tmp/fakemachine-NNN/...) on its command line.
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.25):
            for info in descendants(proc.pid):
                for arg in _cmdline(info.pid):
                    found = re.fullmatch(r"initrd=(/tmp/fakemachine-\d+)/initramfs\.cpio", arg)
                    if found:
                        ctx.cli_dirs.add(found.group(1))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=CLI_TIMEOUT)
        elapsed = time.monotonic() - start
    except subprocess.TimeoutExpired:
        ctx.cli_hung = True
        _kill_group(proc.pid)
        proc.communicate()
        raise StepFailed(f"hung: killed after {CLI_TIMEOUT:g} s") from None
    finally:
        stop.set()
        watcher.join()
    if proc.returncode != 0:
        raise StepFailed(f"exit status {proc.returncode} after {elapsed:.1f} s: {_tail(err, 3)}")
    return elapsed


def remove_cli_dirs(ctx: Context) -> list[str]:
    """Remove the temporary directories the CLI left behind (call once its tree is gone)."""
    removed = []
    for cli_dir in sorted(ctx.cli_dirs):
        if os.path.exists(cli_dir):
            shutil.rmtree(cli_dir, ignore_errors=True)
            removed.append(cli_dir)
    ctx.cli_dirs.clear()
    return removed


ONLY_OURS = ("pytest_fakemachine.plugin",)
WITH_XDIST = (*ONLY_OURS, "xdist.plugin")


def pytest_run(
    path: Path,
    passed: int,
    extra: tuple[str, ...] = (),
    plugins: tuple[str, ...] | None = ONLY_OURS,
) -> float:
    """A whole `python -m pytest -q -p no:cacheprovider [extra] FILE` run in FILE's directory.

    With ``plugins``, only those plugins load (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 and
    ``-p`` each), on the host and so in the guest: the time is pytest's and ours,
    not that of whatever else this environment has installed. ``None``: every
    installed plugin loads, as in a plain ``pytest`` run here.
    """
    env = _clean_env()
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if plugins is not None:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        for plugin in plugins:
            argv += ["-p", plugin]
    argv += [*extra, path.name]
    start = time.monotonic()
    proc = _run(argv, path.parent, PYTEST_TIMEOUT, "pytest", env)
    elapsed = time.monotonic() - start
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if (
        proc.returncode != 0
        or not re.search(rf"\b{passed} passed\b", summary)
        or re.search(r"failed|error|skipped|xfail|xpass|deselected", summary)
    ):
        raise StepFailed(f"pytest exit status {proc.returncode}:\n{_tail(proc.stdout, 40)}")
    return elapsed


def _memory_kib(pid: int) -> int:
    """PSS of ``pid`` (shared pages split among their users), or RSS where PSS is unreadable."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0


_SYS_KCMP = 312  # x86-64, the only architecture UML guests run on here
_KCMP_VM = 1


def _same_memory(a: int, b: int) -> bool | None:
    """Whether processes ``a`` and ``b`` share one address space; None if unknown.

    UML's helper threads are separate processes made with CLONE_VM: each one's
    smaps_rollup reports the whole shared address space again.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(_SYS_KCMP, a, b, _KCMP_VM, 0, 0)
    if result < 0:
        if ctypes.get_errno() == errno.ESRCH:  # one has just exited: count it as shared
            return True
        return None
    return bool(result == 0)


def guest_memory_kib(pids: list[int]) -> tuple[int, bool]:
    """Summed PSS of ``pids``, each address space once; and whether sharing was detected."""
    spaces: list[int] = []
    exact = True
    for pid in sorted(pids):
        same = [_same_memory(pid, other) for other in spaces]
        if None in same:
            exact = False
        if not any(same):
            spaces.append(pid)
    return sum(_memory_kib(pid) for pid in spaces), exact


def peak_memory(*, network: bool) -> float:
    """Peak PSS (MiB) of one guest's UML processes and slirp helper while it runs sleep 3."""
    peak = 0
    exact = True
    stop = threading.Event()
    owner = os.getpid()

    def sample() -> None:
        nonlocal peak, exact
        due = time.monotonic()
        while not stop.is_set():
            total, known = guest_memory_kib(leftovers(owner))
            peak = max(peak, total)
            exact = exact and known
            due += SAMPLE_SECONDS
            stop.wait(max(0.0, due - time.monotonic()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    machine = Machine(network=network)
    try:
        result = machine.run("sleep 3", timeout=RUN_TIMEOUT)
    except FakeMachineError as e:
        raise StepFailed(str(e)) from None
    finally:
        stop.set()
        sampler.join()
    if result.returncode != 0:
        raise StepFailed(f"sleep 3 exited {result.returncode}: {result.stderr.strip()}")
    if machine.last_workdir is not None and machine.last_workdir.exists():
        raise StepFailed(f"the work directory {machine.last_workdir} was left behind")
    if not peak:
        raise StepFailed("no guest process was found to sample")
    if not exact:
        raise StepFailed("kcmp() is unavailable: shared address spaces would be counted twice")
    return peak / 1024


# --------------------------------------------------------------------------------------------
# The time breakdown of one Machine().run("true")

SEGMENTS = (
    ("python", "python start-up + import (whole process - in-process)"),
    ("host_before", "host: Python before UML starts"),
    ("uml_outside", "UML outside the guest clock (checks, exit)"),
    ("kernel", "kernel start -> /init"),
    ("init", "/init -> systemd's first message"),
    ("systemd", "systemd -> job unit starts"),
    ("unit", "job unit starts -> command runs"),
    ("job", "the job (`true`)"),
    ("poweroff", "power-off (job end -> kernel halted)"),
    ("host_after", "host: after UML exits (results, clean-up)"),
)


def _stamp(console: str, pattern: str) -> float | None:
    """Guest clock (printk) of the first console line that matches ``pattern``."""
    for line in console.splitlines():
        found = _PRINTK.match(line.strip())
        if found and re.search(pattern, found.group(2)):
            return float(found.group(1))
    return None


def _boot_stamps(console: str) -> tuple[float, float, float, float]:
    """Guest clock of /init, systemd's first line, the job unit's start and the halt."""
    stamps = (
        _stamp(console, r"^Run /init as init process"),
        _stamp(console, r"^systemd\[1\]: "),
        _stamp(console, r"^systemd\[1\]: Starting fakemachine\.service"),
        _stamp(console, r"^reboot: "),
    )
    init, systemd, unit, halt = stamps
    if init is None or systemd is None or unit is None or halt is None:
        raise StepFailed(f"guest timestamps missing from the console:\n{_tail(console)}")
    return init, systemd, unit, halt


def breakdown_run() -> dict[str, float]:
    """One in-process run("true") with guest timestamps; seconds per segment, and 'total'."""
    machine = Machine()
    machine.extra_kernel_args = ["printk.time=1"]
    body = command_body(BREAKDOWN_COMMAND, "/scratch", {})
    start = time.monotonic()
    try:
        with machine.session() as session:  # what Machine.run() and Session.boot() do
            guest = session.launch(body)
            try:
                finished = guest.wait(RUN_TIMEOUT)
            finally:
                guest.kill()
            outcome = session.outcome(guest, finished, RUN_TIMEOUT)
            stdout = session.read_text("stdout")
            workdir = session.workdir
    except FakeMachineError as e:
        raise StepFailed(str(e)) from None
    end = time.monotonic()
    if outcome.status != 0:
        raise StepFailed(f"the breakdown command exited {outcome.status}")
    if workdir.exists():
        raise StepFailed(f"the work directory {workdir} was left behind")
    try:
        job_start, job_end = (float(x) for x in stdout.split())
    except ValueError:
        raise StepFailed(f"unexpected output of the uptime command: {stdout!r}") from None
    console = outcome.console
    init, systemd, unit, halt = _boot_stamps(console)
    lifetime = guest.ended_at - guest.started_at
    return {
        "host_before": guest.started_at - start,
        "uml_outside": lifetime - halt,
        "kernel": init,
        "init": systemd - init,
        "systemd": unit - systemd,
        "unit": job_start - unit,
        "job": job_end - job_start,
        "poweroff": halt - job_end,
        "host_after": end - guest.ended_at,
        "total": end - start,
    }


MARKED_SEGMENTS = (
    ("host_before", "host: pytest start-up and collection, until UML starts"),
    ("kernel", "kernel start -> /init"),
    ("init", "/init -> systemd's first message"),
    ("systemd", "systemd -> job unit starts"),
    ("unit", "job unit starts -> job runs"),
    ("guest_pytest", "guest: Python, pytest start-up, collection"),
    ("test", "the test (setup, call, teardown)"),
    ("guest_after", "guest: runner exit, job end, power-off"),
    ("host_after", "host: after UML exits (reports, clean-up, exit)"),
)


def marked_breakdown_run(ctx: Context) -> dict[str, float]:
    """One whole pytest run of one marked test (pytest and this plugin only), in segments.

    The guest's clock (printk, from boot) meets the host's wall clock at the
    job's start: the job writes its /proc/uptime into ``started`` in the work
    directory, whose host mtime is that moment. The test's phases come from
    the guest's own reports.
    """
    env = _clean_env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["TMPDIR"] = str(ctx.tmp)  # the kept work directory goes with the workspace, always
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", ONLY_OURS[0],
            "--fakemachine-keep", ctx.one_test.name]  # fmt: skip
    start = time.time()
    proc = _run(argv, ctx.one_test.parent, PYTEST_TIMEOUT, "pytest", env)
    end = time.time()
    kept = re.findall(r"^(/\S*fakemachine-\S+)$", proc.stdout, re.MULTILINE)
    try:
        if proc.returncode != 0 or len(kept) != 1:
            raise StepFailed(f"pytest exit status {proc.returncode}:\n{_tail(proc.stdout, 20)}")
        work = Path(kept[0])
        console = (work / "console.log").read_text(errors="replace")
        job_start_wall = (work / "started").stat().st_mtime
        job_start = float((work / "started").read_text().split()[0])
        events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    except (OSError, ValueError, IndexError) as e:
        raise StepFailed(f"the kept work directory is incomplete: {e}") from None
    finally:
        for path in kept:
            shutil.rmtree(path, ignore_errors=True)
    phases = [e["report"] for e in events if e.get("event") == "report"]
    if len(phases) != 3 or not all("start" in p and "stop" in p for p in phases):
        raise StepFailed(f"expected three reports with start and stop, got {len(phases)}")
    init, systemd, unit, halt = _boot_stamps(console)
    boot_wall = job_start_wall - job_start  # the wall-clock time of the guest's clock zero
    test_start, test_stop = phases[0]["start"], phases[-1]["stop"]
    return {
        "host_before": boot_wall - start,
        "kernel": init,
        "init": systemd - init,
        "systemd": unit - systemd,
        "unit": job_start - unit,
        "guest_pytest": test_start - job_start_wall,
        "test": test_stop - test_start,
        "guest_after": boot_wall + halt - test_stop,
        "host_after": end - (boot_wall + halt),
        "total": end - start,
    }


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    key: str
    label: str
    unit: str = "s"
    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def attempts(self) -> int:
        return len(self.values) + len(self.failures)


@dataclass
class Verdict:
    ratio: str
    target: str
    result: str


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} MiB" if unit == "MiB" else f"{value:.2f} s"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _check(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "n/a"
    return "PASS" if ok(value) else "FAIL"


def verdicts(rows: dict[str, Row], module_tests: int) -> dict[str, Verdict]:
    floor = rows["floor"].median
    run = rows["run"].median
    one = rows["one"].median
    out: dict[str, Verdict] = {}

    def times(x: float | None, of: str) -> str:
        return "-" if x is None else f"{x:.2f}x {of}"

    ours = rows["floor_ours"].median

    def both(x: float | None) -> str:
        """The ratio to the reference floor, then to the floor with all our skips."""
        a, b = _ratio(x, floor), _ratio(x, ours)
        return "-" if a is None else f"{a:.2f}x floor" + ("" if b is None else f" ({b:.1f}x ours)")

    out["floor"] = Verdict("1.00x (reference)", "", "")
    out["floor_ours"] = Verdict(times(_ratio(ours, floor), "floor"), "", "")
    out["floor_all"] = Verdict(times(_ratio(rows["floor_all"].median, floor), "floor"), "", "")
    r = _ratio(run, floor)
    out["run"] = Verdict(both(run), "<= 2.5x floor", _check(r, lambda x: x <= 2.5))
    if "cli" in rows:
        r = _ratio(rows["cli"].median, run)
        out["cli"] = Verdict(
            "-" if r is None else f"run('true') {r:.1f}x faster",
            "run('true') >= 10x faster",
            _check(r, lambda x: x >= 10),
        )
    r = _ratio(one, floor)
    out["one"] = Verdict(both(one), "<= 6x floor", _check(r, lambda x: x <= 6))
    out["one_all"] = Verdict(both(rows["one_all"].median), "", "")
    r = _ratio(rows["module"].median, one)
    out["module"] = Verdict(
        times(r, "one test"), f"{module_tests} tests <= 2x one", _check(r, lambda x: x <= 2)
    )
    out["n0"] = Verdict("", "", "")
    r = _ratio(rows["n0"].median, rows["n2"].median)
    out["n2"] = Verdict(
        "-" if r is None else f"{r:.2f}x the throughput of -n 0",
        ">= 1.6x throughput",
        _check(r, lambda x: x >= 1.6),
    )
    for key in ("mem", "mem_net"):
        m = rows[key].median
        out[key] = Verdict("", "<= 150 MiB", _check(m, lambda x: x <= 150))
    return out


def table_lines(rows: dict[str, Row], verdict: dict[str, Verdict], *, markdown: bool) -> list[str]:
    header = ["measurement", "median", "min", "max", "ok runs", "ratio", "target", "result"]
    body = []
    for key, row in rows.items():
        v = verdict.get(key, Verdict("", "", ""))
        lo = min(row.values) if row.values else None
        hi = max(row.values) if row.values else None
        label = row.label.replace("|", "\\|") if markdown else row.label
        body.append(
            [
                label,
                _fmt(row.median, row.unit),
                _fmt(lo, row.unit),
                _fmt(hi, row.unit),
                f"{len(row.values)}/{row.attempts}",
                v.ratio,
                v.target,
                v.result,
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return lines
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*cells) for cells in body]
    return lines


def _printable(text: str) -> str:
    """``text`` without terminal escapes and control characters (the console has them)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return "".join(c for c in text if c in "\n\t" or c.isprintable())


def failure_lines(rows: dict[str, Row], extra: list[str], *, markdown: bool) -> list[str]:
    """Each failure and note: a list item, then its detail (a fenced block in markdown)."""
    items = [(row.label, text) for row in rows.values() for text in row.notes + row.failures]
    items += [("time breakdown", text) for text in extra]
    lines = []
    for label, text in items:
        first, *rest = _printable(text).strip().splitlines() or [""]
        lines.append(f"- {label}: {first}")
        if rest and markdown:
            lines += ["", "  ```text", *(f"  {line}" for line in rest), "  ```", ""]
        else:
            lines += [f"    {line}" for line in rest]
    return lines


def chart_lines(
    parts: list[dict[str, float]],
    process_median: float | None,
    segments: tuple[tuple[str, str], ...] = SEGMENTS,
    title: str = "one Machine().run('true')",
    in_process: bool = True,
) -> list[str]:
    """A text Gantt chart of the medians of each segment, in the order they happen."""
    medians = {
        key: statistics.median(p[key] for p in parts) for key, _ in segments if key in parts[0]
    }
    total = statistics.median(p["total"] for p in parts)
    if process_median is not None:
        medians["python"] = max(0.0, process_median - total)
    span = sum(max(0.0, v) for v in medians.values()) or 1.0
    label_width = max(len(label) for _, label in segments)
    lines = [
        f"Where {title} spends its time: medians of {len(parts)} runs;",
        (f"in-process total {total:.2f} s" if in_process else f"total {total:.2f} s")
        + (f", whole process {process_median:.2f} s" if process_median is not None else ""),
        "",
    ]
    position = 0.0
    for key, label in segments:
        if key not in medians:
            continue
        seconds = medians[key]
        start = round(position / span * CHART_WIDTH)
        position += max(0.0, seconds)
        end = max(start + 1, round(position / span * CHART_WIDTH)) if seconds > 0.005 else start
        bar = " " * start + "#" * (end - start)
        lines.append(f"{label:<{label_width}} {seconds:6.2f} s |{bar:<{CHART_WIDTH}}|")
    return lines


def machine_lines(
    started: float, load_start: tuple[float, ...], others: int, floor: str
) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    uml = subprocess.run(
        [shutil.which("linux.uml") or "linux.uml", "--version"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    ).stdout.strip()
    load_end = os.getloadavg()
    return [
        f"- machine: {len(os.sched_getaffinity(0))} CPUs ({cpu}), host kernel "
        f"{platform.release()}, UML kernel {uml or 'unknown'}, Python {platform.python_version()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))}; "
        f"took {(time.time() - started) / 60:.1f} min",
        f"- load average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f}; "
        f"{others} linux.uml processes not started by the benchmark were running at the start",
        f"- floor kernel command line: `{floor}`",
    ]


def write_markdown(path: Path, section: list[str]) -> None:
    """Replace the lines between the marker lines of ``path`` (append them if missing)."""
    lines = path.read_text().splitlines() if path.exists() else []
    stripped = [line.strip() for line in lines]
    block = [MARK_START, *section, MARK_END]
    if MARK_START in stripped and MARK_END in stripped[stripped.index(MARK_START) :]:
        start = stripped.index(MARK_START)
        end = stripped.index(MARK_END, start)
        lines[start : end + 1] = block
    else:
        lines += ([""] if lines else []) + block
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Driver


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    base = tempfile.gettempdir()
    if not _SAFE_PATH.fullmatch(base):
        base = "/tmp"  # the paths go on the kernel command line
    tmp = Path(tempfile.mkdtemp(prefix="fakemachine-bench-", dir=base))
    try:
        yield tmp
    finally:
        sweep(grace=0)  # first, so no guest still writes there
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs of every measurement (default 5, or 3 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 runs, and 4 instead of 10 tests in the -n 2 / -n 0 runs",
    )
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        type=Path,
        help=f"replace the text between {MARK_START} and {MARK_END} in PATH with the results",
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_start = os.getloadavg()
    others = sum(1 for p in _processes().values() if p.comm == "linux.uml")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not _set_child_subreaper():
        print("bench: cannot become child subreaper; leftovers may escape", file=sys.stderr)
    if not any(e.name == "fakemachine" for e in importlib.metadata.entry_points(group="pytest11")):
        print("bench: pytest-fakemachine is not installed (pip install -e .)", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        kernel = find_kernel(None)
        log("bench: warming up (initramfs cache, page cache) with one Machine().run('true')")
        Machine().run("true", check=True, timeout=RUN_TIMEOUT)
    except (FakeMachineError, subprocess.CalledProcessError) as e:
        log(f"bench: this host cannot boot a guest: {e}")
        return 2
    problems: list[str] = []
    with workspace() as tmp:
        ctx = Context(
            tmp=tmp,
            kernel=kernel,
            initrd=tmp / "floor.cpio",
            floor_args=floor_args(tmp / "floor.cpio"),
            module_tests=30,
            xdist_tests=4 if args.quick else 10,
        )
        ctx.fakemachine_cli = shutil.which("fakemachine")
        build_floor_initramfs(ctx.initrd)
        for name, text in (
            ("one", ONE_TEST),
            (
                "module",
                MODULE_HEADER + "".join(TRIVIAL_TEST.format(n=n) for n in range(ctx.module_tests)),
            ),
            (
                "function",
                FUNCTION_HEADER + "".join(TRIVIAL_TEST.format(n=n) for n in range(ctx.xdist_tests)),
            ),
        ):
            directory = tmp / name
            directory.mkdir()
            (directory / "pytest.ini").write_text("")  # keeps the repository's config away
            (directory / f"test_{name}.py").write_text(text)
        ctx.one_test = tmp / "one" / "test_one.py"
        ctx.module_file = tmp / "module" / "test_module.py"
        ctx.function_file = tmp / "function" / "test_function.py"

        rows: dict[str, Row] = {}
        steps: list[tuple[str, Callable[[], float]]] = []

        def step(key: str, label: str, fn: Callable[[], float], unit: str = "s") -> None:
            rows[key] = Row(key, label, unit)
            steps.append((key, fn))

        n = ctx.xdist_tests
        step(
            "floor",
            "floor: bare UML boot, busybox /init powers off, RAID6/XOR skipped (the issue's)",
            lambda: floor_boot(ctx, skips="issue"),
        )
        step(
            "floor_ours",
            "floor with all our boot-time skips (what a guest's kernel costs)",
            lambda: floor_boot(ctx, skips="ours"),
        )
        step(
            "floor_all",
            "floor with no boot-time skip (RAID6/XOR benchmarks run)",
            lambda: floor_boot(ctx, skips="none"),
        )
        step(
            "run",
            "python -c \"Machine().run('true')\" (whole process)",
            lambda: machine_process(ctx),
        )
        if ctx.fakemachine_cli:
            step("cli", "fakemachine -q -b uml -- true (Debian CLI)", lambda: fakemachine_cli(ctx))
        step(
            "one",
            "pytest: 1 marked test, scope=function (pytest and this plugin only)",
            lambda: pytest_run(ctx.one_test, 1),
        )
        step(
            "one_all",
            "pytest: 1 marked test, every plugin installed here loaded",
            lambda: pytest_run(ctx.one_test, 1, plugins=None),
        )
        step(
            "module",
            f"pytest: {ctx.module_tests} marked tests, scope=module",
            lambda: pytest_run(ctx.module_file, ctx.module_tests),
        )
        step(
            "n0",
            f"pytest -n 0: {n} marked tests, scope=function",
            lambda: pytest_run(ctx.function_file, n, ("-n", "0"), WITH_XDIST),
        )
        step(
            "n2",
            f"pytest -n 2: {n} marked tests, scope=function",
            lambda: pytest_run(ctx.function_file, n, ("-n", "2"), WITH_XDIST),
        )
        step(
            "mem",
            "peak memory of one guest (PSS), defaults",
            lambda: peak_memory(network=False),
            "MiB",
        )
        step(
            "mem_net",
            "peak memory of one guest (PSS), network=True",
            lambda: peak_memory(network=True),
            "MiB",
        )
        parts: list[dict[str, float]] = []
        marked_parts: list[dict[str, float]] = []
        breakdown_failures: list[str] = []

        try:
            for round_no in range(1, args.runs + 1):
                for key, fn in steps:
                    row = rows[key]
                    log(f"bench: round {round_no}/{args.runs}: {row.label} ...")
                    try:
                        value = fn()
                    except StepFailed as e:
                        row.failures.append(str(e))
                        log(f"bench:   failed: {str(e).splitlines()[0]}")
                    else:
                        row.values.append(value)
                        log(f"bench:   {_fmt(value, row.unit)}")
                    stray = sweep()
                    if stray:
                        names = ", ".join(stray)
                        message = f"run {round_no} left running, killed by the benchmark: {names}"
                        row.notes.append(message)
                        if key != "cli":  # a known fault of the CLI; one of ours is a bug
                            problems.append(f"{row.label}: {message}")
                        log(f"bench:   {message}")
                    if key == "cli":  # the CLI's own temporary directory, once its tree is gone
                        for cli_dir in remove_cli_dirs(ctx):
                            row.notes.append(f"run {round_no} left {cli_dir} behind (removed)")
                log(f"bench: round {round_no}/{args.runs}: time breakdown ...")
                try:
                    parts.append(breakdown_run())
                except StepFailed as e:
                    breakdown_failures.append(str(e))
                    log(f"bench:   failed: {str(e).splitlines()[0]}")
                log(f"bench: round {round_no}/{args.runs}: marked test breakdown ...")
                try:
                    marked_parts.append(marked_breakdown_run(ctx))
                except StepFailed as e:
                    breakdown_failures.append(str(e))
                    log(f"bench:   failed: {str(e).splitlines()[0]}")
                stray = sweep()
                if stray:
                    problems.append(f"breakdown: left running: {', '.join(stray)}")
        finally:  # also on Ctrl-C or SIGTERM: the CLI's directory of an interrupted run
            sweep(grace=0)
            remove_cli_dirs(ctx)

    mine = leftovers(os.getpid())
    if mine:
        problems.append(f"guest processes still running at the end: {mine}")
    problems += [
        f"{row.label}: {f.splitlines()[0]}"
        for row in rows.values()
        for f in row.failures
        if row.key != "cli"
    ]
    problems += [f"breakdown: {f.splitlines()[0]}" for f in breakdown_failures]

    verdict = verdicts(rows, ctx.module_tests)
    process_median = rows["run"].median
    chart = chart_lines(parts, process_median) if parts else ["(no breakdown run succeeded)"]
    if marked_parts:
        chart += [
            "",
            *chart_lines(
                marked_parts,
                None,
                MARKED_SEGMENTS,
                "one marked test (a whole pytest run)",
                in_process=False,
            ),
        ]
    floor = " ".join([*ctx.floor_args, "uml_dir=<tmp>"]).replace(str(ctx.tmp), "<tmp>")
    info = machine_lines(started, load_start, others, floor)
    notes = failure_lines(rows, breakdown_failures, markdown=False)
    md_notes = failure_lines(rows, breakdown_failures, markdown=True)
    command = (
        "python benchmarks/bench.py"
        + (" --quick" if args.quick else "")
        + (f" --runs {args.runs}" if args.runs != (3 if args.quick else 5) else "")
    )

    print()
    print("\n".join(table_lines(rows, verdict, markdown=False)))
    if notes:
        print("\nFailures and notes:")
        print("\n".join(notes))
    print()
    print("\n".join(chart))
    print()
    print("\n".join(line.removeprefix("- ") for line in info))

    if args.markdown is not None:
        section = [
            f"Generated by `{command}`, {args.runs} runs of each row, interleaved.",
            "",
            *table_lines(rows, verdict, markdown=True),
            "",
            *(["Failures and notes:", "", *md_notes, ""] if md_notes else []),
            "```text",
            *chart,
            "```",
            "",
            *info,
        ]
        write_markdown(args.markdown, section)
        print(f"\nbench: wrote the results into {args.markdown}", file=sys.stderr)
    if problems:
        print("\nbench: problems:\n" + textwrap.indent("\n".join(problems), "  "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        sweep(grace=0)  # on any exit (Ctrl-C, SIGTERM...): nothing we started survives us
