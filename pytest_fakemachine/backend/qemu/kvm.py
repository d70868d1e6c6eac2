"""Whether KVM really runs a guest here.

``/dev/kvm`` opening is no proof: on hosts whose CPU shows no ``vmx``/``svm``
(some nested clouds), ``KVM_CREATE_VM`` succeeds and a KVM guest then never
runs. So the answer is a real boot: the kernel with a busybox init that
prints a word and powers off, under ``-accel kvm``, with a deadline. It is kept
in the cache directory per host kernel, ``/dev/kvm``, QEMU and guest kernel, so
a session asks it once. The CPU flags only explain a failure (arm64 has none).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import tempfile
from pathlib import Path

from ...image.cache import cache_dir
from ...image.initramfs import write_busybox_archive
from .host import Arch

__all__ = ["DEVICE", "kvm_problem"]

DEVICE = "/dev/kvm"
PROBE_SECONDS = 6.0  # a KVM boot to a busybox init takes under a second
_WORD = "fakemachine-kvm-runs"
_INIT = f"#!/bin/busybox sh\necho {_WORD}\n/bin/busybox poweroff -f\n"


def _device_problem() -> str | None:
    if not os.path.exists(DEVICE):
        return f"no {DEVICE} (the host gives no KVM: a virtual machine without nested KVM?)"
    if not os.access(DEVICE, os.R_OK | os.W_OK):
        return f"no access to {DEVICE} (add the user to its group: sudo adduser $USER kvm)"
    return None


def _cpu_has_virtualization() -> bool | None:
    """vmx/svm among the CPU flags; None where the architecture has no such flags."""
    if platform.machine() not in ("x86_64", "i686"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split()}
    except OSError:
        return None
    return bool(flags & {"vmx", "svm"})


def _key(qemu: str, kernel: Path) -> str:
    parts = [platform.release(), os.stat(DEVICE).st_rdev]
    for path in (qemu, kernel):
        st = os.stat(path)
        parts += [str(path), st.st_ino, st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _boot(qemu: str, host: Arch, kernel: Path) -> bool:
    """Whether a KVM guest reached its init and powered off within the deadline."""
    with tempfile.TemporaryDirectory(prefix="fakemachine-kvm-") as tmp:
        initrd = Path(tmp) / "probe.cpio"
        write_busybox_archive(initrd, _INIT)
        argv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-machine", f"{host.machine},accel=kvm", "-cpu", "host", "-m", "256M",
                "-kernel", str(kernel), "-initrd", str(initrd), "-serial", "stdio",
                "-append", f"console={host.console} panic=-1 quiet"]  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=PROBE_SECONDS)
        except subprocess.TimeoutExpired:
            return False
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return _WORD.encode() in out


def kvm_problem(qemu: str, host: Arch, kernel: Path) -> str | None:
    """Why KVM does not run a guest here (None: it does), from the cache or a probe."""
    problem = _device_problem()
    if problem is not None:
        return problem
    cached = cache_dir() / f"kvm-{_key(qemu, kernel)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads(cached.read_text())["problem"]  # type: ignore[no-any-return]
    if _boot(qemu, host, kernel):
        problem = None
    elif _cpu_has_virtualization() is False:
        problem = "the CPU has no vmx/svm: a KVM guest does not run"
    else:
        problem = f"a KVM guest did not reach its init within {PROBE_SECONDS:g} s"
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".kvm-")
        with os.fdopen(fd, "w") as out:
            json.dump({"problem": problem}, out)
        os.replace(tmp, cached)
    return problem
