"""What a UML kernel is: its version, its modules, what its configuration lacks, its seccomp mode.

A kernel is probed once (``linux.uml --version`` and ``--showconfig``, 50-70
ms together) and the answer kept in memory and in the initramfs cache
directory, keyed by the file's path and identity (device, inode, size, mtime),
so a kernel replaced on disk is probed again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import mmap
import os
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..._errors import BackendUnavailable, ConfigError, FakeMachineError
from ...image.cache import cache_dir

__all__ = [
    "FEATURES",
    "SECCOMP_ENV",
    "Feature",
    "KernelInfo",
    "boot_args",
    "download_dir",
    "installed_kernels",
    "kernel_info",
    "modules_for",
    "seccomp_arg",
    "seccomp_setting",
    "seccomp_used",
]

SYSTEM_MODULES = Path("/usr/lib/uml/modules")  # where Debian's package puts them
_SYSTEM_KERNEL = Path("/usr/bin/linux.uml")
# Since Linux 6.15 UML can run guest processes under seccomp instead of ptrace;
# the kernel argument is seccomp=on|auto|off and the binary carries this message.
_SECCOMP_MARK = b"Invalid seccomp option"
SECCOMP_ENV = "PYTEST_FAKEMACHINE_SECCOMP"
_SECCOMP_VALUES = ("auto", "on", "off")
_STALE_SECONDS = 7 * 24 * 3600  # a kept probe no one has read for a week goes


@dataclass(frozen=True)
class Feature:
    """A guest feature and the kernel options it needs (all of them, built in or as modules)."""

    name: str
    options: tuple[str, ...]
    fidelity: bool = True  # a documented fidelity row needs it (docs/guest.md)


# What the guest's documented behaviour needs from the kernel. nf_tables for
# ip/ip6/inet and time namespaces are not fidelity rows: no Debian UML kernel
# has the first, only 7.2 the second; a kernel is still told to have or lack them.
FEATURES = (
    Feature("kernel modules", ("CONFIG_MODULES",)),
    Feature("loop devices", ("CONFIG_BLK_DEV_LOOP",)),
    Feature("device mapper (LVM, cryptsetup, kpartx)", ("CONFIG_BLK_DEV_DM",)),
    Feature("software RAID (mdadm)", ("CONFIG_BLK_DEV_MD",)),
    Feature("ext4", ("CONFIG_EXT4_FS",)),
    Feature("FUSE", ("CONFIG_FUSE_FS",)),
    Feature("squashfs", ("CONFIG_SQUASHFS",)),
    Feature("network namespaces", ("CONFIG_NET_NS",)),
    Feature("user namespaces", ("CONFIG_USER_NS",)),
    Feature("tun/tap", ("CONFIG_TUN",)),
    Feature("veth", ("CONFIG_VETH",)),
    Feature("legacy iptables (iptables-legacy)", ("CONFIG_IP_NF_IPTABLES", "CONFIG_IP_NF_FILTER")),
    Feature("legacy ip6tables", ("CONFIG_IP6_NF_IPTABLES", "CONFIG_IP6_NF_FILTER")),
    Feature(
        "nf_tables for ip/ip6/inet (nft)",
        ("CONFIG_NF_TABLES_IPV4", "CONFIG_NF_TABLES_IPV6", "CONFIG_NF_TABLES_INET"),
        fidelity=False,
    ),
    Feature("time namespaces (unshare --time)", ("CONFIG_TIME_NS",), fidelity=False),
)


@dataclass(frozen=True)
class KernelInfo:
    path: Path
    version: str  # `linux.uml --version`: "6.1.176", the guest's `uname -r`
    config: dict[str, str]  # CONFIG_X -> "y"/"m"/value; empty: the kernel printed none
    seccomp: bool  # has the seccomp mode (seccomp=on|auto|off)

    def has(self, feature: Feature) -> bool | None:
        """Whether the kernel has ``feature``; None when it carries no configuration."""
        if not self.config:
            return None
        return all(self.config.get(option, "n") in ("y", "m") for option in feature.options)

    def lacks(self, *, fidelity_only: bool = False) -> list[Feature]:
        return [f for f in FEATURES if (f.fidelity or not fidelity_only) and self.has(f) is False]

    def summary(self) -> str:
        """One line: version, seccomp mode, what it lacks (for the doctor and setup.sh)."""
        parts = [f"Linux {self.version}", "seccomp mode" if self.seccomp else "no seccomp mode"]
        if not self.config:
            parts.append("no configuration to check (--showconfig printed none)")
        else:
            lacking = self.lacks()
            parts.append(
                "lacks " + "; ".join(f"{f.name} ({', '.join(f.options)})" for f in lacking)
                if lacking
                else "lacks nothing checked"
            )
        return ", ".join(parts)


def _parse_config(text: str) -> dict[str, str]:
    config = {}
    for line in text.splitlines():
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:].split()[0]] = "n"
            continue
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            config[name] = value
    return config


# Where a distribution's own dynamic loader lives; a kernel whose loader is
# elsewhere was given its own (setup.sh --newer-kernel, on a host whose glibc
# is older than the kernel's).
_SYSTEM_LOADER_DIRS = frozenset(
    (
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
    )
)
_PT_INTERP = 3
_NEWER_KERNEL = "scripts/setup.sh --newer-kernel"


def interpreter(kernel: Path) -> str | None:
    """The dynamic loader named in ``kernel``'s ELF header; None: none, or not a 64-bit ELF."""
    try:
        with open(kernel, "rb") as f:
            header = f.read(64)
            if header[:5] != b"\x7fELF\x02" or header[5] != 1:  # ELF64, little-endian
                return None
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                (kind,) = struct.unpack_from("<I", table, i * phentsize)
                if kind == _PT_INTERP:
                    (offset,) = struct.unpack_from("<Q", table, i * phentsize + 8)
                    (size,) = struct.unpack_from("<Q", table, i * phentsize + 32)
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode(errors="replace")
    except (OSError, struct.error, IndexError):
        return None
    return None


def own_loader(kernel: Path) -> str | None:
    """The kernel's own loader (not the system's), as setup.sh --newer-kernel patches in."""
    loader = interpreter(kernel)
    if loader is None or os.path.dirname(loader) in _SYSTEM_LOADER_DIRS:
        return None
    return loader


def failure_hint(loader: str | None, why: str) -> str:
    """What to add to a kernel's failure to run: its own libc, or the host's too old."""
    if loader is not None:
        return (
            f"; it runs with its own loader and libc in {os.path.dirname(loader)} (given by "
            f"{_NEWER_KERNEL}, for a host whose glibc is older): if they are missing or were "
            f"moved, run {_NEWER_KERNEL} again"
        )
    if "GLIBC_" in why:
        return (
            f"; it needs a newer glibc than this host's: {_NEWER_KERNEL} unpacks Debian's newer "
            "kernels with their own loader and libc, which run here"
        )
    return ""


def _run(kernel: Path, flag: str) -> str:
    try:
        done = subprocess.run(
            [str(kernel), flag],
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        # exec() of a file whose loader is gone fails as if the file itself were.
        loader = own_loader(kernel) if isinstance(e, FileNotFoundError) else None
        if loader is not None and not os.path.exists(loader):
            raise BackendUnavailable(
                f"UML kernel {kernel} does not run: its loader {loader} is missing"
                + failure_hint(loader, "")
            ) from e
        raise BackendUnavailable(f"UML kernel {kernel} does not run: {e}") from e
    if done.returncode != 0:
        # A newer Debian UML on an older glibc: "version `GLIBC_2.38' not found".
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise BackendUnavailable(
            f"UML kernel {kernel} does not run here ({kernel} {flag} exited with "
            f"{done.returncode}: {why[0]})" + failure_hint(own_loader(kernel), why[0])
        )
    return done.stdout


def _has_seccomp_mode(kernel: Path) -> bool:
    with open(kernel, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(_SECCOMP_MARK) != -1


def _cache_file(path: Path, identity: tuple[int, int, int, int]) -> Path | None:
    """Where the probe of this kernel file is kept (the initramfs cache, private to the user)."""
    try:
        directory = cache_dir()
    except FakeMachineError:
        return None
    key = hashlib.sha256(f"{path}\0{identity}".encode()).hexdigest()[:24]
    return directory / f"kernel-{key}.json"


def _load(cached: Path, path: Path) -> KernelInfo | None:
    try:
        data = json.loads(cached.read_text())
        return KernelInfo(path, str(data["version"]), dict(data["config"]), bool(data["seccomp"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: probe again


def _store(cached: Path, info: KernelInfo) -> None:
    data = {"version": info.version, "config": info.config, "seccomp": info.seccomp}
    try:
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".kernel-")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, cached)
    except OSError:  # a cache that cannot be written costs a probe next time, nothing more
        return
    cutoff = time.time() - _STALE_SECONDS
    for old in cached.parent.glob("kernel-*.json"):  # kernels replaced or gone
        with contextlib.suppress(OSError):
            if old != cached and old.stat().st_atime < cutoff:
                old.unlink()


@functools.lru_cache(maxsize=8)
def _probe(path: Path, identity: tuple[int, int, int, int]) -> KernelInfo:
    # Kept on disk too: two runs of the kernel cost 50-70 ms of every process's first boot.
    cached = _cache_file(path, identity)
    if cached is not None and (info := _load(cached, path)) is not None:
        return info
    version = _run(path, "--version").strip().splitlines()
    if not version:
        raise BackendUnavailable(f"UML kernel {path}: --version printed nothing")
    info = KernelInfo(
        path=path,
        version=version[-1].split()[-1],  # "6.1.176"; older builds print "User Mode Linux v6.1"
        config=_parse_config(_run(path, "--showconfig")),
        seccomp=_has_seccomp_mode(path),
    )
    if cached is not None:
        _store(cached, info)
    return info


def kernel_info(kernel: Path) -> KernelInfo:
    """Probe ``kernel`` (cached while the file stays the same)."""
    path = kernel.resolve()
    st = path.stat()
    return _probe(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def module_candidates(kernel: Path, version: str) -> list[Path]:
    """Where the modules of ``kernel`` may be, best first: beside the kernel, then Debian's.

    Beside it: the layout of the kernel's package unpacked anywhere
    (``dpkg -x user-mode-linux_*.deb DIR`` gives DIR/usr/bin/linux.uml and
    DIR/usr/lib/uml/modules/VERSION), or ``modules/VERSION`` or
    ``lib/modules/VERSION`` in the kernel's own directory.
    """
    here = kernel.resolve().parent
    found = [
        here.parent / "lib" / "uml" / "modules",
        here / "modules",
        here / "lib" / "modules",
        SYSTEM_MODULES,
    ]
    unique: list[Path] = []
    for candidate in found:
        if candidate not in unique:
            unique.append(candidate)
    return [c / version for c in unique]


def modules_for(kernel: Path, package_fix: str = "") -> Path | None:
    """The directory holding ``<version>/`` of the kernel's modules (mounted at /usr/lib/modules).

    None for a kernel built without module support. A kernel whose modules are
    nowhere is an error rather than a boot without them: loop devices, file
    systems and the firewall would then fail inside the tests, far from the cause.
    """
    info = kernel_info(kernel)
    if info.config and info.config.get("CONFIG_MODULES") != "y":
        return None
    candidates = module_candidates(kernel, info.version)
    for candidate in candidates:
        if (candidate / "modules.dep").is_file():
            return candidate.parent
    where = ", ".join(str(c) for c in candidates)
    fix = (
        f"the modules come with Debian's user-mode-linux package: {package_fix}"
        if kernel.resolve() == _SYSTEM_KERNEL
        else f"run {_NEWER_KERNEL} again: it unpacks this kernel with its modules"
        if own_loader(kernel) is not None
        else "unpack the kernel's package beside it (dpkg -x user-mode-linux_*.deb DIR, "
        "then kernel=DIR/usr/bin/linux.uml), or put the modules in one of those directories"
    )
    raise BackendUnavailable(
        f"no modules for UML kernel {kernel} (Linux {info.version}): looked for "
        f"VERSION/modules.dep in {where}; {fix}"
    )


def boot_args(kernel: Path, extra_kernel_args: Sequence[str]) -> tuple[str, ...]:
    """Kernel arguments this kernel gets beyond the common ones (its seccomp mode)."""
    seccomp = seccomp_arg(kernel_info(kernel), extra_kernel_args)
    return () if seccomp is None else (seccomp,)


def seccomp_used(console: str) -> bool | None:
    """From a guest's console: whether its processes ran under seccomp; None: no such mode."""
    if "seccomp filters can be installed" not in console:
        return None  # a kernel without the mode, or seccomp=off: UML checks nothing
    return "Checking that seccomp filters can be installed...OK" in console


def seccomp_setting(environ: dict[str, str] | None = None) -> str:
    """The user's choice of UML's seccomp mode: auto (the default), on or off."""
    value = (os.environ if environ is None else environ).get(SECCOMP_ENV, "").strip().lower()
    if not value:
        return "auto"
    if value not in _SECCOMP_VALUES:
        raise ConfigError(
            f"{SECCOMP_ENV}={value!r} from the environment: expected one of "
            + ", ".join(_SECCOMP_VALUES)
        )
    return value


def seccomp_arg(info: KernelInfo, extra_kernel_args: Sequence[str]) -> str | None:
    """The seccomp= kernel argument to pass, if any.

    ``auto``: UML checks at start-up that the host lets it install its seccomp
    filter (a container's seccomp profile may not) and runs guest processes
    under ptrace when not; ``on`` makes that a fatal error. A seccomp= of the
    user's own (extra_kernel_args) is left alone; a kernel without the mode
    gets nothing (it would take the argument for init's).
    """
    setting = seccomp_setting()  # a bad value is an error on any kernel
    if not info.seccomp or any(a.startswith("seccomp=") for a in extra_kernel_args):
        return None
    return f"seccomp={setting}"


def download_dir() -> Path:
    """Where ``scripts/setup.sh --newer-kernel`` unpacks newer Debian UML kernels."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "pytest-fakemachine"


def installed_kernels(path_kernel: str | None) -> list[Path]:
    """The UML kernels on this host: linux.uml on PATH and those setup.sh unpacked."""
    found = [Path(path_kernel)] if path_kernel else []
    found += sorted(download_dir().glob("uml-*/usr/bin/linux.uml"))
    return found
