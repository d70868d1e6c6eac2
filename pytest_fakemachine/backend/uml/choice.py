"""Which UML kernel to offer, measured on this host (the doctor's "kernel choice").

With more than one kernel here (the one in use, and those ``scripts/setup.sh
--newer-kernel`` unpacked), each boots a few guests, the kernels taking turns,
and each guest runs the same small job: program starts and a Python start
with common imports, what tests spend their time on (docs/performance.md,
"Kernels"). The measure is the CPU a guest costs, user+sys of its UML process
and every guest process (reaped children of this one): unlike wall time it
hardly moves with the machine's load. The fastest kernel that keeps every
fidelity row is offered; a faster one that lacks a row is named, with what it
lacks, for suites that do not need it.

A measurement in which every guest ran is kept in the cache directory, keyed
by the kernel files (path, identity) and the workload, so the doctor measures
again only when a kernel changes: ``forget()``, or deleting the file, asks
for a new one.

The offered kernel is recorded there too (``record_choice``, by
``scripts/setup.sh`` and the doctor), with the identities of every kernel
measured: it is the default kernel (``find_kernel(None)``) while those are
the kernels installed here, unchanged. A session only reads the record; it
never measures, and without a valid record it boots the distribution's kernel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..._errors import FakeMachineError
from ...image.cache import cache_dir
from .kernel import KernelInfo

__all__ = [
    "ROUNDS",
    "WORKLOAD",
    "Boot",
    "Choice",
    "Measured",
    "cached_measure",
    "forget",
    "forget_choice",
    "guest_cpu",
    "measure",
    "offer",
    "record_choice",
    "recorded_choice",
]

ROUNDS = 3
_PYTHON = "/usr/bin/python3"  # the host's own /usr is the guest's
_STARTS = "i=0; while [ $i -lt 40 ]; do /bin/true; i=$((i+1)); done"
_IMPORTS = f"{_PYTHON} -c 'import json, subprocess, pathlib, email.parser, unittest'"
WORKLOAD = f"{_STARTS}; {_IMPORTS}" if os.access(_PYTHON, os.X_OK) else _STARTS
# Boots a guest of the kernel at the path and runs the command in it; raises
# FakeMachineError or CalledProcessError when either fails.
Boot = Callable[[Path, str], object]


@dataclass(frozen=True)
class Measured:
    """One kernel's result: the median CPU seconds of its guests, or why none ran."""

    info: KernelInfo
    cpu: float | None
    error: str | None = None

    def label(self) -> str:
        seccomp = ", seccomp" if self.info.seccomp else ""
        lacking = self.info.lacks(fidelity_only=True)
        lacks = f", lacks {'; '.join(f.name for f in lacking)}" if lacking else ""
        return f"Linux {self.info.version}{seccomp}{lacks}"


def guest_cpu(boot: Boot) -> Callable[[KernelInfo], float]:
    """The CPU seconds of one guest of a kernel running :data:`WORKLOAD`, booted by ``boot``."""

    def cpu(info: KernelInfo) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        boot(info.path, WORKLOAD)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime

    return cpu


def measure(
    kernels: Sequence[KernelInfo], guest_cpu: Callable[[KernelInfo], float], rounds: int = ROUNDS
) -> list[Measured]:
    """Each kernel's median guest CPU over ``rounds`` guests, the kernels taking
    turns (a burst of load elsewhere hits them alike); a kernel whose guest
    fails is measured no further and says why."""
    samples: dict[int, list[float]] = {i: [] for i in range(len(kernels))}
    errors: dict[int, str] = {}
    for _ in range(rounds):
        for i, info in enumerate(kernels):
            if i in errors:
                continue
            try:
                samples[i].append(guest_cpu(info))
            except FakeMachineError as e:
                errors[i] = f"{type(e).__name__}: {e}".splitlines()[0]
            except subprocess.CalledProcessError as e:  # the workload itself failed
                errors[i] = f"the workload exited with {e.returncode}: {(e.stderr or '').strip()}"
    return [
        Measured(info, None, errors[i]) if i in errors else
        Measured(info, statistics.median(samples[i]))
        for i, info in enumerate(kernels)
    ]  # fmt: skip


def offer(measured: Sequence[Measured]) -> tuple[Measured | None, Measured | None]:
    """The fastest kernel that keeps every fidelity row, and the fastest of
    all when that one lacks a row (else None)."""
    ran = [m for m in measured if m.cpu is not None]
    keeping = [m for m in ran if not m.info.lacks(fidelity_only=True)]
    best = min(keeping, key=lambda m: m.cpu or 0.0, default=None)
    fastest = min(ran, key=lambda m: m.cpu or 0.0, default=None)
    return best, (fastest if fastest is not None and fastest is not best else None)


def _cache_path(kernels: Sequence[KernelInfo]) -> Path | None:
    try:
        directory = cache_dir()
        stats = [(str(k.path), k.path.stat()) for k in kernels]
    except (FakeMachineError, OSError):
        return None
    identities = [(path, st.st_ino, st.st_size, st.st_mtime_ns) for path, st in stats]
    key = hashlib.sha256(json.dumps([identities, WORKLOAD, ROUNDS]).encode()).hexdigest()[:24]
    return directory / f"kernel-times-{key}.json"


def cached_measure(
    kernels: Sequence[KernelInfo], guest_cpu: Callable[[KernelInfo], float]
) -> tuple[list[Measured], float | None]:
    """:func:`measure`, or the kept measurement of these very kernel files;
    with the time it was taken when kept (None: measured now)."""
    path = _cache_path(kernels)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if path is not None:
            data = json.loads(path.read_text())
            cpus = [float(c) for c in data["cpu"]]
            if len(cpus) == len(kernels):
                return [Measured(k, c) for k, c in zip(kernels, cpus)], float(data["when"])
    measured = measure(kernels, guest_cpu)
    if path is not None and all(m.cpu is not None for m in measured):
        with contextlib.suppress(OSError):  # unkept: measured again next time, nothing more
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kernel-times-")
            with os.fdopen(fd, "w") as out:
                json.dump({"cpu": [m.cpu for m in measured], "when": time.time()}, out)
            os.replace(tmp, path)
    return measured, None


def forget() -> None:
    """Drop every kept measurement (the next doctor run measures again)."""
    with contextlib.suppress(FakeMachineError, OSError):
        for old in cache_dir().glob("kernel-times-*.json"):
            old.unlink()


_CHOICE = "kernel-choice.json"


@dataclass(frozen=True)
class Choice:
    """The recorded default kernel, and why (for the session header)."""

    path: Path
    why: str


def _identities(paths: Sequence[Path]) -> list[list[object]] | None:
    """The kernel files as a record keeps them: resolved path, size, mtime; sorted. No
    inode: a CI cache restores the same files (dpkg -x keeps their mtimes) as new inodes."""
    try:
        stats = [(str(p.resolve()), p.stat()) for p in paths]
    except OSError:
        return None
    return sorted([path, st.st_size, st.st_mtime_ns] for path, st in stats)


def record_choice(best: Measured, measured: Sequence[Measured], installed: Sequence[Path]) -> None:
    """Record ``best`` of ``measured`` as the default kernel while the ``installed``
    kernels (those measured, and any that could not be) stay as they are."""
    identities = _identities(installed)
    with contextlib.suppress(FakeMachineError, OSError):  # unrecorded: the distribution's
        directory = cache_dir()
        if identities is None:
            return
        record = {"path": str(best.info.path), "version": best.info.version, "cpu": best.cpu,
                  "measured": len(measured), "kernels": identities,
                  "when": time.time()}  # fmt: skip
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kernel-choice-")
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(tmp, directory / _CHOICE)


def recorded_choice(installed: Sequence[Path]) -> Choice | None:
    """The recorded default kernel, if the ``installed`` kernels are those measured, unchanged."""
    with contextlib.suppress(FakeMachineError, OSError, ValueError, KeyError, TypeError):
        record = json.loads((cache_dir() / _CHOICE).read_text())
        if record["kernels"] != _identities(installed):
            return None
        taken = time.strftime("%Y-%m-%d", time.localtime(float(record["when"])))
        why = (
            f"measured here on {taken} the fastest of {int(record['measured'])} kernels "
            f"that keeps every guest feature, {float(record['cpu']):.2f} s of CPU per guest"
        )
        return Choice(Path(record["path"]), why)
    return None


def forget_choice() -> None:
    """Drop the recorded default: the distribution's kernel is the default again."""
    with contextlib.suppress(FakeMachineError, OSError):
        (cache_dir() / _CHOICE).unlink(missing_ok=True)
