"""A guest's host process, for every backend: start it, watch it, kill it.

A guest is one host program (``linux.uml``, ``qemu-system-*``) in a session of
its own (so its whole process tree can be killed as one group), with
``PR_SET_PDEATHSIG`` so it dies with the Python process that started it, even
when that one is SIGKILLed, and a watchdog (:class:`.watchdog.Reaper`) for the
rest of its group. The console goes to a pipe read by a thread. A backend's
subclass adds what is its own (helper processes, how a reboot shows, why a
guest died).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .watchdog import OWNER_ENV, Reaper, claim_cpu, pin_group, release_cpu

__all__ = ["GuestProcess"]

_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.02
_WATCH_SECONDS = 0.05


def _child_setup(cpu: int) -> Callable[[], None]:
    parent = os.getpid()

    def setup() -> None:
        # Runs in the child between fork and exec: SIGKILL when our process
        # dies; one CPU for the whole UML process tree (children inherit it).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # it died before the prctl: no signal is coming
            os.kill(os.getpid(), signal.SIGKILL)
        os.sched_setaffinity(0, {cpu})

    return setup


def _private_log(path: Path) -> IO[bytes]:
    """The console log, 0600 as every file of the work directory (the console
    shows what the guest's programs print)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # one left by an earlier boot of a kept work directory
    return os.fdopen(fd, "wb")


@dataclass
class _Console:
    """Collects the guest console from a pipe (in a thread of its own)."""

    pipe: IO[bytes]
    log: IO[bytes] | None
    # What the console says when the guest reboots, and at each start of the
    # guest's program (a second start is a reboot too); empty: never seen.
    reboot_line: bytes = b""
    start_line: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    rebooted: bool = False  # the console showed the guest restarting
    _tail: bytes = b""  # the end of the last chunk, where a line may have begun
    _starts: int = 0  # start-up lines seen

    def pump(self) -> None:
        keep = max(len(self.reboot_line), len(self.start_line))
        while chunk := self.pipe.read1(65536):  # type: ignore[attr-defined]
            self.chunks.append(chunk)
            if keep:
                self._look(chunk, keep)
            if self.log is not None:
                self.log.write(chunk)
                self.log.flush()

    def _look(self, chunk: bytes, keep: int) -> None:
        window = self._tail + chunk
        if self.start_line:  # only lines that end in this chunk: those in the tail were counted
            self._starts += window.count(
                self.start_line, max(0, len(self._tail) - len(self.start_line) + 1)
            )
        if (self.reboot_line and self.reboot_line in window) or self._starts > 1:
            self.rebooted = True
        self._tail = window[-keep:]

    def text(self, start: int = 0) -> str:
        return b"".join(self.chunks[start:]).decode(errors="replace")


class GuestProcess:
    """One running guest. Use as a context manager: leaving it kills everything.

    ``program`` and ``args`` start it; ``what`` names it in error messages.
    A backend's subclass may start helper processes (:meth:`_start_helpers`),
    watch more (:meth:`_watch_tick`) and explain a death (:meth:`_death_note`).
    """

    reboot_line = b""
    start_line = b""

    def __init__(
        self,
        program: Path,
        args: Sequence[str],
        *,
        workdir: Path,
        what: str,
        console_log: Path | None = None,
        echo: Callable[[str], None] | None = None,
        cleanup: Sequence[Path] = (),
        boot_timeout: float | None = None,
        started_file: Path | None = None,
        reaper: Reaper | None = None,
        pass_fds: Sequence[int] = (),
        boot_timeout_name: str = "boot_timeout",
        env: dict[str, str] | None = None,
    ) -> None:
        self._kernel = program
        self.what = what
        self._env = dict(env or {})
        self._pass_fds = tuple(pass_fds)  # host fds the arguments name
        # The boot ends when started_file appears; past boot_timeout without it,
        # the guest is killed (and ended_why says so).
        self._boot_timeout = boot_timeout
        self._boot_timeout_name = boot_timeout_name
        self._started_file = started_file
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        self._cpu: int | None = None
        # Why the guest was ended by us before it powered off (None: it was not).
        self.ended_why: str | None = None
        self._args = list(args)
        self._workdir = workdir
        self._console_log = console_log
        self._echo = echo
        self._uml: subprocess.Popen[bytes] | None = None  # the guest's main process
        self._helpers: list[subprocess.Popen[bytes]] = []  # started beside it, killed with it
        self._console: _Console | None = None
        self._reader: threading.Thread | None = None
        self._echoed = 0  # console chunks already passed to echo
        # The watchdog for our death: the caller's (which then removes the
        # directories), else one of our own that removes ``cleanup``.
        self._shared_reaper = reaper
        self._reaper: Reaper | None = None
        self._cleanup = tuple(cleanup)
        self.started_at = 0.0
        self.ended_at = 0.0

    def __enter__(self) -> GuestProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _start_helpers(self) -> tuple[list[str], list[int]]:
        """Start what the guest needs beside it (into ``self._helpers``): the
        arguments and inherited descriptors that reach them, which are
        closed here once the guest holds them."""
        return [], []

    def _watch_tick(self) -> None:
        """Called by the watcher thread while the guest runs."""

    def _death_note(self, console: str) -> str:
        """What the console tells of a death, appended to :meth:`failure`'s words."""
        return ""

    def start(self) -> None:
        extra_args, extra_fds = self._start_helpers()
        args = [str(self._kernel), *self._args, *extra_args]
        pass_fds = (*self._pass_fds, *extra_fds)
        log = _private_log(self._console_log) if self._console_log else None
        try:
            self.started_at = time.monotonic()
            self._cpu = claim_cpu()
            self._uml = subprocess.Popen(
                args,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,
                # preexec_fn only calls prctl and sched_setaffinity: safe with threads.
                preexec_fn=_child_setup(self._cpu),  # noqa: PLW1509
                env=self._guest_env(),
            )
        except BaseException:
            if log is not None:
                log.close()
            self.kill()
            raise
        finally:
            for fd in extra_fds:
                os.close(fd)
        self._start_reaper()
        assert self._uml.stdout is not None
        self._console = _Console(self._uml.stdout, log, self.reboot_line, self.start_line)
        self._reader = threading.Thread(target=self._console.pump, daemon=True)
        self._reader.start()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """End the guest when it reboots or overstays its boot limit.

        Runs in a thread of its own until kill() stops it, before the guest's
        process is reaped: until then its process group id cannot be reused.
        """
        assert self._uml is not None and self._console is not None
        deadline = None if self._boot_timeout is None else self.started_at + self._boot_timeout
        booted = self._started_file is None
        while not self._stop_watching.wait(_WATCH_SECONDS) and not self.exited():
            self._watch_tick()
            if self._console.rebooted:
                self._end("the guest rebooted; a reboot ends the run (its job never runs twice)")
                return
            if not booted:
                assert self._started_file is not None
                booted = self._started_file.exists()
                if not booted and deadline is not None and time.monotonic() >= deadline:
                    self._end(
                        f"the guest did not reach the command within {self._boot_timeout_name}="
                        f"{self._boot_timeout:g} s and was killed"
                    )
                    return

    def _end(self, why: str) -> None:
        assert self._uml is not None
        self.ended_why = why
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._uml.pid, signal.SIGKILL)

    def _start_reaper(self) -> None:
        """Have a watchdog kill the guest's process groups when we die, however.

        PR_SET_PDEATHSIG kills only the main process; its children and the
        helpers would survive it. See :class:`Reaper`.
        """
        if self._shared_reaper is None:
            self._reaper = Reaper(self._cleanup)
        reaper = self._shared_reaper or self._reaper
        assert reaper is not None
        reaper.watch([p.pid for p in (self._uml, *self._helpers) if p is not None])

    def _guest_env(self) -> dict[str, str]:
        # The guest's program needs little of ours. OWNER_ENV lets tests find
        # guests that outlived us.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "TMPDIR", "LANG")}
        env.update(self._env)
        env[OWNER_ENV] = str(os.getpid())
        return env

    def wait(self, timeout: float | None, poll: Callable[[], None] | None = None) -> bool:
        """Wait for the guest to power off; False if ``timeout`` elapsed first.

        ``poll`` and the console echo run here, in the caller's thread, so they
        may use pytest's terminal and capture machinery.
        """
        assert self._uml is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._echo_new()
            if poll is not None:
                poll()
            if not self.exited():
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(_POLL_SECONDS)
                continue
            self.ended_at = time.monotonic()
            # The guest's child processes may outlive it (UML's, killed from
            # outside) and hold the console pipe open: end them, so the console
            # is complete at once. (The main process is unreaped: its group id is ours.)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._uml.pid, signal.SIGKILL)
            if self._reader is not None:
                self._reader.join(timeout=5)
            self._echo_new()
            if poll is not None:
                poll()
            return True

    def _echo_new(self) -> None:
        if self._echo is None or self._console is None:
            return
        end = len(self._console.chunks)
        if end > self._echoed:
            self._echo(self._console.text(self._echoed))
            self._echoed = end

    def idle(self) -> None:
        """The guest waits (booted ahead of its test) and uses no CPU: give its CPU back."""
        if self._cpu is not None:
            release_cpu(self._cpu)
            self._cpu = None

    def resume(self) -> None:
        """After :meth:`idle`: claim the least busy CPU and move the guest there."""
        if self._cpu is None and self._uml is not None and not self.exited():
            self._cpu = claim_cpu()
            pin_group(self._uml.pid, self._cpu)

    @property
    def process_group(self) -> int | None:
        """The guest's process group (every process of its program), once started."""
        return None if self._uml is None else self._uml.pid

    def exited(self) -> bool:
        """Whether the guest's process has ended. It is left unreaped until kill():
        while it is a zombie, its process group id cannot be reused."""
        if self._uml is None or self._uml.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self._uml.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    @property
    def returncode(self) -> int | None:
        """The exit status of the guest's process, once kill() has reaped it."""
        return None if self._uml is None else self._uml.returncode

    def failure(self, started: bool) -> str:
        """Why the guest ended without an exit status (after :meth:`kill`)."""
        killed = -(self.returncode or 0)
        if self.ended_why is not None:
            what = self.ended_why
        elif not self._workdir.is_dir():
            what = f"the work directory {self._workdir} disappeared during the run"
        elif killed > 0 and killed != signal.SIGABRT:  # UML aborts on a kernel panic
            what = (
                f"{self.what} was killed by signal "
                f"{signal.Signals(killed).name} from outside "
                + ("during the command" if started else "before the command")
            )
        elif started:
            what = "the guest powered off during the command"
        else:
            what = "the guest did not boot to the command"
        what += self._death_note(self.console())
        program = self.what.rpartition("(")[2].rstrip(")") or "its process"
        return f"{what} ({program} exit status {self.returncode})"

    def console(self) -> str:
        if self._reader is not None and self.exited():
            self._reader.join(timeout=5)
        return "" if self._console is None else self._console.text()

    def kill(self) -> None:
        """Kill the guest's process group and its helpers; reap them."""
        self._stop_watching.set()  # before reaping: the watcher may kill the group
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        # Killed before the watchdog lets go of them (if this process dies
        # meanwhile, it kills them), unreaped: their group ids stay ours.
        for proc in (self._uml, *self._helpers):
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        # Before reaping, so the watchdog never kills a reused group id.
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None
        elif self._shared_reaper is not None:
            self._shared_reaper.watch([])
        for proc in (self._uml, *self._helpers):
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck kernel task
                print(f"pytest-fakemachine: pid {proc.pid} did not die", file=sys.stderr)
        if not self.ended_at and self.started_at:
            self.ended_at = time.monotonic()
        if self._cpu is not None:
            release_cpu(self._cpu)
            self._cpu = None
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._console is not None:
            self._console.pipe.close()
            if self._console.log is not None:
                self._console.log.close()
