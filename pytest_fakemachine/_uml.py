"""The User-Mode-Linux backend: find the kernel, start a guest, watch it, kill it.

A guest is a ``linux.uml`` process in a session of its own (so the whole UML
process tree can be killed as one group), with ``PR_SET_PDEATHSIG`` so it dies
with the Python process that started it, even when that one is SIGKILLed. The
console goes to a pipe read by a thread: UML's console cannot write to a
regular file (epoll refuses it).
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, final

from ._errors import BackendUnavailable

__all__ = ["GuestProcess", "find_kernel", "find_slirp", "module_dir"]

_UML_PACKAGE = "user-mode-linux"
_SLIRP = "libslirp-helper"
_UML_MODULES = Path("/usr/lib/uml/modules")
_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.02


def find_kernel(kernel: str | os.PathLike[str] | None) -> Path:
    """The UML kernel to boot; :class:`BackendUnavailable` says what to install."""
    if platform.machine() != "x86_64":
        raise BackendUnavailable(
            f"User-Mode-Linux guests need an x86-64 host; this one is {platform.machine()}"
        )
    if kernel is None:
        found = shutil.which("linux.uml")
        if found is None:
            raise BackendUnavailable(
                "linux.uml is not on PATH: install it with `apt-get install user-mode-linux`"
            )
        return Path(found)
    path = Path(kernel)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise BackendUnavailable(f"UML kernel {str(path)!r} is not an executable file")
    return path


def module_dir(kernel: Path) -> Path:
    """The directory of modules of the Debian UML kernel (mounted at /lib/modules)."""
    if not _UML_MODULES.is_dir() or not any(_UML_MODULES.iterdir()):
        raise BackendUnavailable(
            f"{_UML_MODULES} is missing or empty: the UML kernel's modules come with "
            f"`apt-get install {_UML_PACKAGE}`"
        )
    return _UML_MODULES


def find_slirp() -> str:
    found = shutil.which(_SLIRP)
    if found is None:
        raise BackendUnavailable(
            f"{_SLIRP} is not on PATH, and network=True needs it: install it with "
            f"`apt-get install {_SLIRP}`"
        )
    return found


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL when our process dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class _Console:
    """Collects the guest console from a pipe (in a thread of its own)."""

    pipe: IO[bytes]
    log: IO[bytes] | None
    chunks: list[bytes] = field(default_factory=list)

    def pump(self) -> None:
        while chunk := self.pipe.read1(65536):  # type: ignore[attr-defined]
            self.chunks.append(chunk)
            if self.log is not None:
                self.log.write(chunk)
                self.log.flush()

    def text(self, start: int = 0) -> str:
        return b"".join(self.chunks[start:]).decode(errors="replace")


@final
class GuestProcess:
    """One running guest. Use as a context manager: leaving it kills everything."""

    def __init__(
        self,
        kernel: Path,
        kernel_args: Sequence[str],
        *,
        workdir: Path,
        network: bool,
        console_log: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self._kernel = kernel
        self._args = list(kernel_args)
        self._workdir = workdir
        self._network = network
        self._console_log = console_log
        self._echo = echo
        self._uml: subprocess.Popen[bytes] | None = None
        self._slirp: subprocess.Popen[bytes] | None = None
        self._console: _Console | None = None
        self._reader: threading.Thread | None = None
        self._echoed = 0  # console chunks already passed to echo
        self.started_at = 0.0
        self.ended_at = 0.0

    def __enter__(self) -> GuestProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        args = [str(self._kernel), *self._args]
        pass_fds: tuple[int, ...] = ()
        guest_end: socket.socket | None = None
        if self._network:
            slirp = find_slirp()
            guest_end, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                self._slirp = subprocess.Popen(
                    [slirp, "--exit-with-parent", f"--fd={host_end.fileno()}"],
                    pass_fds=(host_end.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            finally:
                host_end.close()
            args.append(f"vec0:transport=fd,fd={guest_end.fileno()},vec=0")
            pass_fds = (guest_end.fileno(),)
        log = open(self._console_log, "wb") if self._console_log else None  # noqa: SIM115
        try:
            self.started_at = time.monotonic()
            self._uml = subprocess.Popen(
                args,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads fork here)
                env=self._uml_env(),
            )
        except BaseException:
            if log is not None:
                log.close()
            self.kill()
            raise
        finally:
            if guest_end is not None:
                guest_end.close()
        assert self._uml.stdout is not None
        self._console = _Console(self._uml.stdout, log)
        self._reader = threading.Thread(target=self._console.pump, daemon=True)
        self._reader.start()

    def _uml_env(self) -> dict[str, str]:
        # UML keeps its memory in a file of TMPDIR; point it at our work dir's
        # file system only if the user chose one, else UML uses /dev/shm.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "TMPDIR", "LANG")}
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
            try:
                self._uml.wait(_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            self.ended_at = time.monotonic()
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

    @property
    def returncode(self) -> int | None:
        return None if self._uml is None else self._uml.returncode

    def console(self) -> str:
        if self._reader is not None and self._uml is not None and self._uml.poll() is not None:
            self._reader.join(timeout=5)
        return "" if self._console is None else self._console.text()

    def kill(self) -> None:
        """Kill the UML process group and the slirp helper; reap them."""
        for proc in (self._uml, self._slirp):
            if proc is None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck kernel task
                print(f"pytest-fakemachine: pid {proc.pid} did not die", file=sys.stderr)
        if not self.ended_at and self.started_at:
            self.ended_at = time.monotonic()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._console is not None:
            self._console.pipe.close()
            if self._console.log is not None:
                self._console.log.close()
