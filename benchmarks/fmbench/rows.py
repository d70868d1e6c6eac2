"""The measurements: a bare boot, Machine().run(), the CLI, pytest runs, memory."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pytest_fakemachine import FakeMachineError, Machine

from . import package as fm
from .runner import (
    StepFailed,
    children_cpu,
    clean_env,
    cmdline,
    descendants,
    kill_group,
    python_error,
    run_step,
    tail,
)

FLOOR_TIMEOUT = 60.0  # a bare boot takes about a second
RUN_TIMEOUT = 300.0  # one Machine().run() process
CLI_TIMEOUT = 120.0  # Debian's fakemachine CLI can hang
PYTEST_TIMEOUT = 1800.0  # one whole pytest run
SAMPLE_SECONDS = 0.05  # memory sampling period

FLOOR_INIT = """\
#!/bin/busybox sh
exec /bin/busybox poweroff -f
"""
# The one trivial test module every pytest row runs: n tests, one guest each
# (scope="function") or one guest for all (scope="module").
TRIVIAL_MODULE = """\
import pytest

pytestmark = pytest.mark.fakemachine(scope="{scope}")
{tests}"""
TRIVIAL_TEST = """

def test_trivial_{n}():
    pass
"""


def trivial_module(tests: int, scope: str = "function") -> str:
    """The text of a test module of ``tests`` trivial marked tests."""
    body = "".join(TRIVIAL_TEST.format(n=n) for n in range(tests))
    return TRIVIAL_MODULE.format(scope=scope, tests=body)


def write_trivial_module(directory: Path, tests: int, scope: str = "function") -> Path:
    """``directory``/test_trivial.py, beside an empty pytest.ini (keeps any config away)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text("")
    path = directory / "test_trivial.py"
    path.write_text(trivial_module(tests, scope))
    return path


@dataclass
class Context:
    tmp: Path
    kernel: Path
    initrd: Path
    floor_args: list[str]
    module_tests: int
    xdist_tests: int
    one_test: Path = field(init=False)  # each a test_trivial.py in a directory of its own
    module_file: Path = field(init=False)
    function_file: Path = field(init=False)
    fakemachine_cli: str | None = None
    cli_hung: bool = False
    cli_dirs: set[str] = field(default_factory=set)


def prepare_context(
    tmp: Path, kernel: Path, *, xdist_tests: int, module_tests: int = 30
) -> Context:
    """The floor's initramfs and the test files of the pytest rows, under ``tmp``."""
    ctx = Context(
        tmp=tmp,
        kernel=kernel,
        initrd=tmp / "floor.cpio",
        floor_args=floor_args(tmp / "floor.cpio"),
        module_tests=module_tests,
        xdist_tests=xdist_tests,
    )
    fm.write_busybox_initramfs(ctx.initrd, FLOOR_INIT)
    ctx.one_test = write_trivial_module(tmp / "one", 1)
    ctx.module_file = write_trivial_module(tmp / "module", module_tests, "module")
    ctx.function_file = write_trivial_module(tmp / "function", xdist_tests)
    return ctx


def floor_args(initrd: Path) -> list[str]:
    """Our Session's kernel command line, minus what serves systemd and the job.

    Taken from ``Session.kernel_args()`` itself, so the floor keeps up with the
    console wiring and boot-time skips (initcall_blacklist...) the Session uses.
    """
    args, work = fm.session_kernel_args()
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
    fast = {a.partition("=")[0] for a in fm.FAST_BOOT_ARGS if not a.startswith("printk.")}
    kept = [
        a for a in args
        if not a.startswith("initcall_blacklist=") and a.partition("=")[0] not in fast
    ]  # fmt: skip
    if skips == "issue":
        kept.append("initcall_blacklist=" + ",".join(fm.SKIP_RAID_BENCHMARKS))
    return kept


def floor_boot(ctx: Context, *, skips: Skips) -> float:
    """UML lifetime of a bare boot to an /init that powers off, started as our guests are.

    GuestProcess starts it (same environment, session, CPU pinning and
    parent-death signal as every guest); only the initramfs and the job differ.
    """
    args = floor_variant(ctx.floor_args, skips)
    uml_dir = Path(tempfile.mkdtemp(prefix="uml-", dir=ctx.tmp))
    try:
        boot = fm.bare_boot(ctx.kernel, [*args, f"uml_dir={uml_dir}"], uml_dir, FLOOR_TIMEOUT)
    finally:
        shutil.rmtree(uml_dir, ignore_errors=True)
    console = boot.console
    if not boot.finished:
        raise StepFailed(f"the bare guest did not power off within {FLOOR_TIMEOUT:g} s")
    if "Run /init as init process" not in console or "Kernel panic" in console:
        raise StepFailed(f"the bare guest did not run /init:\n{tail(console)}")
    return boot.lifetime


def machine_process(ctx: Context, tree: Path | None = None) -> float:
    """A whole `python -c "...Machine().run('true')"` process, interpreter start included;
    ``tree``: the package comes from there (PYTHONPATH), e.g. a reference checkout's copy."""
    start = time.monotonic()
    run_true_process(ctx.tmp, tree=tree)
    return time.monotonic() - start


def run_true_process(
    cwd: Path,
    *,
    backend: str | None = None,
    boot_timeout: float | None = None,
    tree: Path | None = None,
    timeout: float = RUN_TIMEOUT,
) -> None:
    """Run a whole `python -c "...Machine(...).run('true')"` process in ``cwd`` (not a
    checkout: `python -c` imports the package from its working directory first);
    StepFailed unless it succeeds. ``backend``, ``boot_timeout``: Machine's, where given."""
    given = {"backend": backend, "boot_timeout": boot_timeout}
    keywords = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
    code = f"from pytest_fakemachine import Machine; Machine({keywords}).run('true', check=True)"
    what = f"Machine({keywords}).run('true')"
    env = clean_env()
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    proc = run_step([sys.executable, "-c", code], cwd, timeout, what, env)
    if proc.returncode != 0:
        raise StepFailed(f"{what}: exit status {proc.returncode}: {python_error(proc.stderr)}")


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
                for arg in cmdline(info.pid):
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
        kill_group(proc.pid)
        proc.communicate()
        raise StepFailed(f"hung: killed after {CLI_TIMEOUT:g} s") from None
    finally:
        stop.set()
        watcher.join()
    if proc.returncode != 0:
        raise StepFailed(f"exit status {proc.returncode} after {elapsed:.1f} s: {tail(err, 3)}")
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


ONLY_OURS = (fm.PLUGIN,)
WITH_XDIST = (*ONLY_OURS, "xdist.plugin")


def pytest_run(
    path: Path,
    passed: int,
    extra: tuple[str, ...] = (),
    plugins: tuple[str, ...] | None = ONLY_OURS,
    tree: Path | None = None,
    *,
    cpu: list[float] | None = None,
) -> float:
    """A whole `python -m pytest -q -p no:cacheprovider [extra] FILE` run in FILE's directory.

    With ``plugins``, only those plugins load (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 and
    ``-p`` each), on the host and so in the guest: the time is pytest's and ours,
    not that of whatever else this environment has installed. ``None``: every
    installed plugin loads, as in a plain ``pytest`` run here. ``tree``: the
    plugin comes from there (PYTHONPATH), e.g. a reference checkout's copy.
    ``cpu``: the run's CPU seconds (pytest, its workers and guests) are appended to it.
    """
    env = clean_env()
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if plugins is not None:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        for plugin in plugins:
            argv += ["-p", plugin]
    argv += [*extra, path.name]
    start, cpu_start = time.monotonic(), children_cpu()
    proc = run_step(argv, path.parent, PYTEST_TIMEOUT, "pytest", env)
    elapsed = time.monotonic() - start
    used = children_cpu() - cpu_start
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if (
        proc.returncode != 0
        or not re.search(rf"\b{passed} passed\b", summary)
        or re.search(r"failed|error|skipped|xfail|xpass|deselected", summary)
    ):
        raise StepFailed(f"pytest exit status {proc.returncode}:\n{tail(proc.stdout, 40)}")
    if cpu is not None:
        cpu.append(used)
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
            total, known = guest_memory_kib(fm.leftovers(owner))
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
    workdir = fm.last_workdir(machine)
    if workdir is not None and workdir.exists():
        raise StepFailed(f"the work directory {workdir} was left behind")
    if not peak:
        raise StepFailed("no guest process was found to sample")
    if not exact:
        raise StepFailed("kcmp() is unavailable: shared address spaces would be counted twice")
    return peak / 1024
