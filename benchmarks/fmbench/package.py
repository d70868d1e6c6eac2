"""The one door from the benchmarks into pytest-fakemachine's internals.

Every other module of fmbench takes what it needs of the package from here
(the public API, ``Machine`` and ``FakeMachineError``, it may import
directly). When the package moves or renames a module, only this file
changes: its names and signatures are the benchmarks' contract.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_fakemachine import FakeMachineError, Machine
from pytest_fakemachine.backend import leftovers
from pytest_fakemachine.backend.uml import boot as _uml_boot
from pytest_fakemachine.backend.uml.boot import FAST_BOOT_ARGS, SKIP_RAID_BENCHMARKS
from pytest_fakemachine.backend.uml.host import find_kernel
from pytest_fakemachine.backend.uml.kernel import SECCOMP_ENV, kernel_info, seccomp_used
from pytest_fakemachine.backend.uml.process import UmlProcess
from pytest_fakemachine.image.initramfs import initramfs, write_busybox_archive
from pytest_fakemachine.image.templates import UNIT_NAME
from pytest_fakemachine.image.workdir import command_body

__all__ = [
    "BACKEND_OPTION",
    "BOOT_TIMEOUT_OPTION",
    "ENTRY_POINT",
    "FAST_BOOT_ARGS",
    "KEEP_OPTION",
    "KEPT_CONSOLE",
    "KEPT_EVENTS",
    "KEPT_RE",
    "KEPT_STARTED",
    "KERNEL_OPTION",
    "PACKAGE",
    "PLUGIN",
    "SECCOMP_ENV",
    "SKIP_RAID_BENCHMARKS",
    "BareBoot",
    "FakeMachineError",
    "GuestRun",
    "bare_boot",
    "default_kernel",
    "kernel_has_seccomp",
    "kernel_version",
    "last_workdir",
    "leftovers",
    "seccomp_used",
    "session_kernel_args",
    "timed_guest_run",
    "write_busybox_initramfs",
]

PACKAGE = "pytest_fakemachine"  # the import name: `python -m`, a tree's package directory
PLUGIN = "pytest_fakemachine.plugin"  # `-p` it when plugin autoloading is off
ENTRY_POINT = "fakemachine"  # its name in the pytest11 entry points: installed or not
KERNEL_OPTION = "--fakemachine-kernel"
BACKEND_OPTION = "--fakemachine-backend"
BOOT_TIMEOUT_OPTION = "--fakemachine-boot-timeout"
KEEP_OPTION = "--fakemachine-keep"
# A work directory --fakemachine-keep kept, as pytest prints it, and its files.
KEPT_RE = re.compile(r"^(/\S*fakemachine-\S+)$", re.MULTILINE)
KEPT_CONSOLE, KEPT_STARTED, KEPT_EVENTS = "console.log", "started", "events.jsonl"


def default_kernel() -> Path:
    """The UML kernel a default Machine() boots."""
    return find_kernel(None)


def kernel_version(path: str | Path) -> str:
    return kernel_info(Path(path)).version


def kernel_has_seccomp(path: str | Path) -> bool:
    """Whether the kernel has UML's seccomp mode (Linux 6.15+)."""
    return bool(kernel_info(Path(path)).seccomp)


def last_workdir(machine: Machine) -> Path | None:
    """The work directory of ``machine``'s last run (it must be gone afterwards)."""
    return machine.last_workdir


def session_kernel_args() -> tuple[list[str], str]:
    """A default Machine()'s kernel command line, and its work directory's path."""
    with Machine().session() as session:
        layout = session.layout
        args = _uml_boot.kernel_args(session.prepared, session.boot_spec(), initramfs(layout),
                                     UNIT_NAME)  # fmt: skip
        return args, str(session.workdir)


def write_busybox_initramfs(path: Path, init: str) -> None:
    """busybox, its libraries and ``init`` as /init, in a newc archive at ``path``."""
    write_busybox_archive(path, init)


@dataclass
class BareBoot:
    finished: bool
    console: str
    lifetime: float  # seconds the UML process lived


def bare_boot(kernel: Path, args: list[str], workdir: Path, timeout: float) -> BareBoot:
    """``kernel`` with exactly ``args``, started as every guest is (environment,
    session, CPU pinning, parent-death signal), killed after ``timeout``."""
    guest = UmlProcess(kernel, args, workdir=workdir, network=False, memory_dir=None, memory_mib=0)
    try:
        guest.start()
        finished = guest.wait(timeout)
    finally:
        guest.kill()
    return BareBoot(finished, guest.console(), guest.ended_at - guest.started_at)


@dataclass
class GuestRun:
    """One in-process run of a shell command, with the host's clock around it."""

    status: int
    stdout: str
    console: str
    start: float  # time.monotonic() when the run was asked for
    uml_started: float  # when linux.uml started
    uml_ended: float  # when it exited
    end: float  # when the run's results were read and its work directory removed
    workdir_left: Path | None  # the work directory, if it outlived the run


def timed_guest_run(command: str, extra_kernel_args: list[str], timeout: float) -> GuestRun:
    """What ``Machine().run(command)`` does, step by step, timed on the host.

    FakeMachineError as the run raises it.
    """
    machine = Machine()
    machine.extra_kernel_args = list(extra_kernel_args)
    body = command_body(command, "/scratch", {})
    start = time.monotonic()
    with machine.session() as session:
        guest = session.launch(body)
        try:
            finished = guest.wait(timeout)
        finally:
            guest.kill()
        outcome = session.outcome(guest, finished, timeout)
        stdout = session.read_text("stdout")
        workdir = session.workdir
    end = time.monotonic()
    return GuestRun(
        outcome.status, stdout, outcome.console, start, guest.started_at, guest.ended_at, end,
        workdir if workdir.exists() else None,
    )  # fmt: skip
