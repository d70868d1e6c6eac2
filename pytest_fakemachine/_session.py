"""One guest boot: its work directory, its launch through the backend, the one
wait for it, and what it left behind.

The work directory is private to the user (0700), holds every per-run file
the guest reads (mounted at ``/run/fakemachine``) and the files it writes back
(``stdout``, ``stderr``, ``status``), and is removed afterwards unless kept.
Every boot has one deadline for reaching its command (``boot_timeout``,
watched by the backend's guest from its launch) and, for :meth:`Session.run`,
one for powering off.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._config import ImageSpec, Volume
from ._errors import BootError, FakeMachineError, GuestTimeout
from .backend.base import Backend, BootSpec, Guest, Layout, Line, Prepared
from .backend.watchdog import Reaper
from .image.initramfs import initramfs
from .image.workdir import Contents, write_job, write_static_files

__all__ = ["BootOutcome", "Session", "console_tail"]

_CONSOLE_TAIL_LINES = 30
_SAFE_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+")


def console_tail(console: str, lines: int = _CONSOLE_TAIL_LINES) -> str:
    return "\n".join(console.rstrip().splitlines()[-lines:])


@dataclass
class BootOutcome:
    """What the host found after the guest powered off."""

    status: int
    console: str
    seconds: float


@dataclass
class Session:
    """A validated configuration with its work directory; use as a context manager."""

    backend: Backend
    prepared: Prepared
    memory_mib: int
    scratch_bytes: int | None
    network: bool
    images: tuple[ImageSpec, ...]
    volumes: tuple[Volume, ...]
    keep: bool = False
    echo: Callable[[str], None] | None = None
    extra_kernel_args: tuple[str, ...] = ()
    raid_benchmarks: bool = False
    lines: list[Line] = field(default_factory=list)  # serial lines wired to host fds
    cleanup: list[Path] = field(default_factory=list)  # removed even if the host dies
    boot_timeout: float | None = None  # seconds from launch until the job starts
    boot_timeout_name: str = "boot_timeout"  # as the user knows it, for the message
    cpus: int = 1
    workdir: Path = field(init=False)
    layout: Layout = field(init=False)
    _disks: list[Path] = field(init=False, default_factory=list)
    _shares: list[tuple[str, bool]] = field(init=False, default_factory=list)
    _locks: list[int] = field(init=False, default_factory=list)
    _reaper: Reaper | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.layout = self.backend.layout(self.prepared)

    @property
    def kernel(self) -> Path:
        return self.prepared.kernel

    def __enter__(self) -> Session:
        try:
            self.workdir = _make_workdir()
        except OSError as e:
            raise FakeMachineError(
                f"cannot create a work directory in {tempfile.gettempdir()}: {e.strerror}"
            ) from None
        try:
            if not self.keep:  # before anything goes in: a kill at any point leaves nothing
                self._reaper = Reaper([self.workdir, *self.cleanup])
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        try:
            self._lock_images()
            self._disks, self._shares = write_static_files(self.workdir, self.layout,
                                                     self._contents())  # fmt: skip
        except OSError as e:
            self.__exit__()
            raise FakeMachineError(
                f"cannot prepare the guest's work directory {self.workdir}: {e}"
            ) from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __repr__(self) -> str:
        workdir = getattr(self, "workdir", None)  # set by __enter__
        return (
            f"<Session kernel={str(self.kernel)!r} memory={self.memory_mib}M "
            f"images={[i.label for i in self.images]} volumes={[v.guest for v in self.volumes]} "
            f"workdir={None if workdir is None else str(workdir)!r}>"
        )

    def __exit__(self, *exc: object) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None

    def _contents(self) -> Contents:
        modules = self.prepared.modules
        return Contents(
            images=self.images,
            volumes=self.volumes,
            scratch_bytes=self.scratch_bytes,
            network=self.network,
            modules=None if modules is None else (modules, self.prepared.modules_mountpoint),
        )

    def _lock_images(self) -> None:
        for image in self.images:
            fd = os.open(image.path, os.O_RDONLY | os.O_CLOEXEC)
            self._locks.append(fd)
            try:
                # flock, not fcntl: a backend may take fcntl locks of its own on disk files.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FakeMachineError(
                    f"image {str(image.path)!r} (label {image.label!r}) is attached to another "
                    "running guest; two kernels writing one disk would corrupt it"
                ) from None

    def boot_spec(self) -> BootSpec:
        """What the backend launches for this session."""
        work = self.workdir
        return BootSpec(
            workdir=work,
            memory_mib=self.memory_mib,
            disks=tuple(self._disks),
            network=self.network,
            lines=tuple(self.lines),
            shares=tuple(self._shares),
            cpus=self.cpus,
            kernel_args=self.extra_kernel_args,
            raid_benchmarks=self.raid_benchmarks,
            console_log=work / "console.log" if self.keep else None,
            echo=self.echo,
            cleanup=() if self.keep else (work, *self.cleanup),
            reaper=self._reaper,
            boot_timeout=self.boot_timeout,
            boot_timeout_name=self.boot_timeout_name,
            started_file=work / "started",
        )

    def launch(self, body: str) -> Guest:
        """Write the job with ``body`` and start the guest; the caller must kill it."""
        layout = self.layout
        write_job(self.workdir, layout, body, disks=bool(self.images),
                          network=self.network)  # fmt: skip
        return self.backend.launch(self.prepared, self.boot_spec(), initramfs(layout))

    def outcome(self, guest: Guest, finished: bool, timeout: float | None) -> BootOutcome:
        """What the guest left behind; GuestTimeout or BootError if it has no status."""
        console = guest.console()
        if not finished:
            raise GuestTimeout(
                f"the guest timed out after {timeout or 0:g} s and was killed; last console "
                f"lines:\n{console_tail(console)}",
                timeout or 0.0,
                console,
            )
        try:
            status = int((self.workdir / "status").read_text())
        except (FileNotFoundError, ValueError):
            started = (self.workdir / "started").exists()
            raise BootError(
                f"{guest.failure(started)}; last console lines:\n{console_tail(console)}",
                console,
            ) from None
        return BootOutcome(status, console, guest.ended_at - guest.started_at)

    def run(
        self,
        body: str,
        timeout: float | None,
        poll: Callable[[], None] | None = None,
        launched: Callable[[Guest], None] | None = None,
    ) -> BootOutcome:
        """Boot once with ``body`` as the job and wait for the guest to power off.

        ``launched(guest)`` runs once the guest is started (the caller's
        wiring takes over there); ``poll`` runs while the host waits.
        """
        guest = self.launch(body)
        try:
            if launched is not None:
                launched(guest)
            finished = guest.wait(timeout, poll)
        finally:
            guest.kill()
        return self.outcome(guest, finished, timeout)

    def read_text(self, name: str) -> str:
        try:
            return (self.workdir / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _make_workdir() -> Path:
    base = tempfile.gettempdir()
    # mkdtemp makes it 0700: the guest's files are the user's business only.
    if not set(base) <= _SAFE_PATH_CHARS:
        base = "/tmp"  # the path goes on the kernel command line: no spaces or commas
    return Path(tempfile.mkdtemp(prefix="fakemachine-", dir=base))
