"""What every backend implements: the seam between a guest's configuration and
the machine that runs it.

A :class:`Backend` checks the host, prepares a boot from a machine's
configuration (its kernel and what that needs), says how the guest reaches
the host's files and disks (its :class:`Layout`, from which the backend-neutral
work directory and initramfs are written), and launches a :class:`Guest`. A
``Guest`` is one running guest: wait for it, kill it, read its console, let it
idle while booted ahead. The rest of the package reaches a backend only
through these protocols (see ``backend/__init__.py`` for the registry), as
pytest-xdist keeps its schedulers behind one protocol.

Serial lines: every backend offers the guest a few lines wired to host file
descriptors (:class:`Line`), numbered as below; the layout names the guest's
device of each.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .watchdog import Reaper

__all__ = [
    "GO_LINE",
    "STDERR_LINE",
    "STDIN_LINE",
    "TERMINAL_LINE",
    "WINCH_LINE",
    "Backend",
    "BootSpec",
    "Check",
    "Guest",
    "Layout",
    "Line",
    "Prepared",
    "Share",
]

# The guest's serial lines, by what they carry. The command line's stdout is
# the terminal's line (an interactive shell has one line both ways).
TERMINAL_LINE = 1
STDERR_LINE = 2
STDIN_LINE = 3
WINCH_LINE = 4  # window sizes, "ROWS COLS" lines
GO_LINE = 6  # a guest booted ahead waits on it for its turn


@dataclass(frozen=True)
class Check:
    """One line of the doctor: what was checked, and what is wrong (None: fine)."""

    name: str
    problem: str | None
    fix: str = ""
    required: bool = True  # False: a warning; the guests still boot


@dataclass(frozen=True)
class Line:
    """One serial line of the guest wired to host descriptors (None: not wired
    that way). The guest process inherits both; the host closes its copies of
    them once the guest is launched."""

    number: int
    to_guest: int | None = None  # the host end the guest reads from
    from_guest: int | None = None  # the host end the guest writes to

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.to_guest, self.from_guest) if fd is not None)


@dataclass(frozen=True)
class Share:
    """A host directory the guest mounts: an fstab line's source, type and options."""

    source: str
    fstype: str
    options: str


class Layout(Protocol):
    """How a backend's guest reaches the host: what the image and the work
    directory say differently per backend."""

    def share(self, host: str, guest: str, *, read_only: bool) -> Share:
        """How the guest mounts the host directory ``host`` at ``guest``."""
        ...

    def work_mount(self) -> str:
        """The guest init's fstab line for the run's work directory, whose host
        path the init finds in ``$FAKEMACHINE_WORK``."""
        ...

    def disk(self, index: int) -> str:
        """The kernel's name of the guest's disk ``index`` (0: the first image)."""
        ...

    def line_device(self, number: int) -> str:
        """The guest's device of serial line ``number``."""
        ...

    def network_device(self) -> str:
        """The guest's network interface (``network=True``)."""
        ...

    def early_files(self) -> list[tuple[str, Path]]:
        """Files the initramfs carries for this layout: (archive path, host path)."""
        ...

    def early_init(self) -> str:
        """Shell lines the guest's init runs before it mounts anything."""
        ...


@dataclass(frozen=True)
class Prepared:
    """A boot prepared from a machine's configuration: what the backend found on
    the host for it (its kernel, the kernel's modules), checked before anything starts."""

    kernel: Path
    modules: Path | None  # the directory the guest mounts at modules_mountpoint; None: none
    modules_mountpoint: Path
    kernel_args: tuple[str, ...] = ()  # the kernel's own (e.g. a mode it supports)
    version: str = ""  # the kernel's, where the backend needs it
    all_modules: Path | None = None  # where the kernel's modules are, mounted or not


@dataclass
class BootSpec:
    """One launch: the work directory and what goes into the guest."""

    workdir: Path
    memory_mib: int
    disks: Sequence[Path]  # in order; the layout names them
    network: bool
    lines: Sequence[Line] = ()
    shares: Sequence[tuple[str, bool]] = ()  # host directories the guest mounts: (path, read-only)
    cpus: int = 1
    kernel_args: Sequence[str] = ()  # the user's extra ones, last
    raid_benchmarks: bool = False
    console_log: Path | None = None
    echo: Callable[[str], None] | None = None
    cleanup: Sequence[Path] = ()  # removed if this process dies (no shared reaper)
    reaper: Reaper | None = None
    boot_timeout: float | None = None  # seconds from launch until started_file appears
    boot_timeout_name: str = "boot_timeout"  # what the user called it (for the message)
    started_file: Path | None = None


class Guest(Protocol):
    """One running guest. ``kill()`` must be called: it ends every process of it."""

    started_at: float
    ended_at: float
    ended_why: str | None  # why the host ended it before it powered off, if it did

    def wait(self, timeout: float | None, poll: Callable[[], None] | None = None) -> bool:
        """Wait for the guest to power off; False if ``timeout`` elapsed first.
        ``poll`` runs in the caller's thread while it waits."""
        ...

    def exited(self) -> bool: ...

    def kill(self) -> None: ...

    def console(self) -> str: ...

    def idle(self) -> None:
        """The guest waits (booted ahead) and needs no CPU of its own."""
        ...

    def resume(self) -> None: ...

    @property
    def process_group(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    def failure(self, started: bool) -> str:
        """Why a guest that left no exit status ended, once killed, as an error
        message's first part ("the guest did not boot to the command ...")."""
        ...


class Backend(Protocol):
    """A kind of guest: ``uml`` today. Registered in ``backend/__init__.py``."""

    name: str
    process_names: tuple[str, ...]  # of the host processes a guest runs (leak checks)

    def layout(self, prepared: Prepared) -> Layout:
        """How a guest of this boot reaches the host."""
        ...

    def prepare(
        self, kernel: str | os.PathLike[str] | None, network: bool, kernel_args: Sequence[str]
    ) -> Prepared:
        """Check the host for a boot of this configuration; raises
        :class:`BackendUnavailable` saying what to install."""
        ...

    def launch(self, prepared: Prepared, spec: BootSpec, initramfs: Path) -> Guest:
        """Start the guest; the caller kills it."""
        ...

    def max_disks(self) -> int: ...

    def describe(self, kernel: str | None) -> str:
        """The session header's words for the kernel this backend boots."""
        ...

    def doctor(
        self, kernel: str | None, say: Callable[[str], None], boot: Callable[[Path, str], object]
    ) -> list[Check]:
        """What a guest needs of this host, checked (``say`` tells of long checks;
        ``boot(kernel, command)`` runs a command in a guest of that kernel, to measure)."""
        ...

    def boot_check(self, name: str, console: str) -> Check:
        """The doctor's line for a test boot named ``name`` that left ``console``."""
        ...
