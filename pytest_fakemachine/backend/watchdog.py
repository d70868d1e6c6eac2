"""Host-side care of running guests: the watchdog that cleans up if this
process dies, the CPU each guest runs on, and narrowing UML's own files."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import final

__all__ = [
    "OWNER_ENV",
    "Reaper",
    "claim_cpu",
    "leftovers",
    "make_private",
    "pin_group",
    "release_cpu",
]

OWNER_ENV = "PYTEST_FAKEMACHINE_OWNER"  # pid of the Python process that started a guest


@final
class Reaper:
    """A watchdog process that cleans up after this process when it dies, however.

    It waits on a pipe only we hold open: when our process ends, even by
    SIGKILL, the pipe closes, and the watchdog kills the process groups last
    given to :meth:`watch` and removes ``paths``. :meth:`disarm` ends it
    without doing either.
    """

    # Each line names the groups to kill (replacing the last); EOF: our death.
    _SCRIPT = 'g=; while read -r line; do g=$line; done; kill -9 $g 2>/dev/null; rm -rf -- "$@"'

    def __init__(self, paths: Sequence[Path]) -> None:
        read_end, self._pipe = os.pipe()
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                ["/bin/sh", "-c", self._SCRIPT, "fakemachine-reaper", *map(str, paths)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(self._pipe)
            raise
        finally:
            os.close(read_end)

    def watch(self, groups: Sequence[int]) -> None:
        """Kill the process groups ``groups`` (and no others) if we die.

        Call it with none before reaping a group's leader: from then on its id
        may be reused. The pipe keeps the order, so the watchdog never acts
        on an outdated list.
        """
        if self._proc is not None:
            with contextlib.suppress(BrokenPipeError):  # the watchdog was killed
                os.write(self._pipe, (" ".join(f"-{g}" for g in groups) + "\n").encode())

    def disarm(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            os.close(self._pipe)


_cpu_lock = threading.Lock()
_guests_on_cpu: dict[int, int] = {}  # CPU -> guests of this process running on it


def claim_cpu() -> int:
    """The one CPU a new guest runs on (UML is single-CPU, and its processes
    hopping between CPUs cost a third of a boot): the one with the fewest of
    this process's guests, so guests started from threads spread; ties go to
    this process's own CPU, so xdist workers and separate processes spread too.
    Give it back with :func:`release_cpu`."""
    allowed = sorted(os.sched_getaffinity(0))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker[2:].isdigit() else os.getpid()
    preferred = [allowed[(index + i) % len(allowed)] for i in range(len(allowed))]
    with _cpu_lock:
        cpu = min(preferred, key=lambda c: _guests_on_cpu.get(c, 0))  # the first of the least busy
        _guests_on_cpu[cpu] = _guests_on_cpu.get(cpu, 0) + 1
    return cpu


def release_cpu(cpu: int) -> None:
    with _cpu_lock:
        _guests_on_cpu[cpu] -= 1
        if not _guests_on_cpu[cpu]:
            del _guests_on_cpu[cpu]


def pin_group(group: int, cpu: int) -> None:
    """Move every thread of process group ``group`` to ``cpu`` (a guest that
    waited without a CPU of its own, now given one)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != group:
                continue
            for task in os.listdir(f"/proc/{entry}/task"):
                os.sched_setaffinity(int(task), {cpu})
        except OSError:  # gone meanwhile
            continue


def make_private(*paths: Path) -> bool:
    """chmod go-rwx ``paths``; False if one does not exist yet."""
    try:
        for path in paths:
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & 0o700)
    except FileNotFoundError:
        return False
    except OSError:  # not worth failing a run over: the work directory is 0700
        return True
    return True


def leftovers(owner: int | None, names: Sequence[str]) -> list[int]:
    """Pids of processes named one of ``names`` (a backend's) started by process ``owner``.

    With ``owner=None``: those whose starting process no longer exists (orphans).
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip().decode(errors="replace") not in names:
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                variables = f.read().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        tags = [v.partition(b"=")[2] for v in variables if v.startswith(OWNER_ENV.encode() + b"=")]
        if not tags:
            continue
        started_by = int(tags[0])
        if started_by == owner or (owner is None and not os.path.exists(f"/proc/{started_by}")):
            found.append(int(entry))
    return found
