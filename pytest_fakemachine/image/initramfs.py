"""Build the guest's initramfs from the host's own files, once per content.

The archive holds busybox with the dynamic linker and libraries it needs, the
``/init`` script, the guest's ``/etc`` (made from the host's, see
``image.system``) and symlinks into the run's work directory. Everything
else the guest runs comes from the host's ``/usr``, mounted as the backend's
layout says. The archive is cached in the user's cache directory under a
name derived from its inputs (the host's /etc entries included), so it is
built once and shared (under a file lock) by every pytest process of the
user; ``image.cache`` keeps it whole and private.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import stat
import subprocess
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from .._errors import BackendUnavailable
from ..backend.base import Layout
from . import system as gs
from . import templates as t
from .cache import cache_dir, stored
from .cpio import CpioWriter

__all__ = ["initramfs", "root_archive"]

# Bump when the cpio writer's output changes: the key sees what goes into the
# archive (host files, directories, generated files, links), not how it is written.
_FORMAT = "3"
_BUSYBOX = "/usr/bin/busybox"
# What the guest's init and job run as busybox applets (udhcpc only with network).
_APPLETS = ("sh", "mount", "poweroff", "sync", "mv", "env", "cpio")
_UDEV_RULE_DIRS = ("/usr/lib/udev/rules.d",)
# systemd looks here first; the host's own units only when a name is asked for.
UNIT_PATH = "/etc/systemd/system:/usr/lib/systemd/system"
# No such directory: systemd then runs no generators (fstab, getty... serve
# nothing here) and does not even fork to look for them.
NO_GENERATORS = "/run/fakemachine-no-generators"
_DIRS = (
    "dev", "proc", "sys", "run", "run/mount", "run/fakemachine", "tmp", "root", "scratch",
    "mnt", "usr", "usr/bin", "var", "var/tmp", "etc", "etc/systemd", "etc/systemd/system",
    "etc/systemd/system/mount.d", "etc/udev", "etc/udev/rules.d", *gs.FHS_DIRS,
    *sorted({"etc/systemd/system/" + os.path.dirname(name) for name in gs.UNIT_DROPINS}),
    gs.SYSINIT_WANTS, gs.SOCKETS_WANTS,
)  # fmt: skip
_MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


@dataclass(frozen=True)
class _Inputs:
    files: tuple[str, ...]  # host paths copied into the archive, links included
    udev_rules: tuple[str, ...]  # names of the host's udev rules
    # The host's /etc entries the guest gets: (path, mode, size, mtime_ns).
    etc: tuple[tuple[str, int, int, int], ...] = ()
    # The backend's fstab lines for the work directory and for /usr (see Layout).
    mounts: tuple[str, str] = ("", "")
    # The backend's own files (its kernel's modules for QEMU): (archive path,
    # host path), and the init's lines that use them before anything is mounted.
    early: tuple[tuple[str, str], ...] = ()
    early_init: str = ""

    def fingerprint(self) -> str:
        digest = hashlib.sha256(_FORMAT.encode())
        digest.update(repr((_DIRS, _generated_files(self), _links(self))).encode())
        for path in self.files:
            st = os.lstat(path)
            digest.update(f"{path}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        digest.update(repr(self.etc).encode())
        for name, path in self.early:
            st = os.stat(path)
            digest.update(f"{name}:{path}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=4)
def _library_paths(binary: str, _version: tuple[int, int]) -> tuple[str, ...]:
    """The shared objects ``binary`` loads, as ldd resolves them on this host.

    Cached per process and per (size, mtime) of ``binary``: ldd is a process start.
    """
    ldd = shutil.which("ldd") or "/usr/bin/ldd"
    try:
        out = subprocess.run(
            [ldd, binary], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        ).stdout
    except OSError as e:
        raise BackendUnavailable(f"cannot run ldd to find busybox's libraries: {e}") from None
    paths = []
    for line in out.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        fields = line.split()
        candidates = fields[2:3] if "=>" in fields else fields[:1]
        paths += [p for p in candidates if p.startswith("/")]
    return tuple(paths)


@functools.lru_cache(maxsize=4)
def _missing_applets(busybox: str, _version: tuple[int, int]) -> tuple[str, ...]:
    try:
        listed = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=False,
            stdin=subprocess.DEVNULL,
        ).stdout.split()  # fmt: skip
    except OSError as e:
        raise BackendUnavailable(f"cannot run {busybox} --list: {e}") from None
    return tuple(a for a in _APPLETS if a not in listed)


def _with_links(path: str) -> list[str]:
    """``path`` and every symlink met resolving it, expressed under /usr."""
    chain = []
    seen = set()
    current = path
    while current not in seen:
        seen.add(current)
        top, _, rest = current.lstrip("/").partition("/")
        if top in _MERGED_USR:  # /lib64/x is /usr/lib64/x on a merged-/usr host
            current = "/" + _MERGED_USR[top] + "/" + rest
        chain.append(current)
        if not os.path.islink(current):
            break
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return chain


def busybox_files() -> list[str]:
    """busybox, the libraries it loads and the links met on the way (host paths),
    checked: :class:`BackendUnavailable` says what the host lacks."""
    unmerged = [
        "/" + top for top, target in _MERGED_USR.items()
        if os.path.exists("/" + top) and not os.path.islink("/" + top)
    ]  # fmt: skip
    if unmerged:
        raise BackendUnavailable(
            f"the host has no merged /usr ({', '.join(unmerged)} are directories): the guest "
            "boots from the host's /usr alone; install usrmerge (apt-get install usrmerge)"
        )
    if not os.access(_BUSYBOX, os.X_OK):
        raise BackendUnavailable(
            f"{_BUSYBOX} is missing: the guest's init needs it; install it with "
            "`apt-get install busybox`"
        )
    st = os.stat(_BUSYBOX)
    version = (st.st_size, st.st_mtime_ns)
    missing = _missing_applets(_BUSYBOX, version)
    if missing:
        raise BackendUnavailable(
            f"{_BUSYBOX} lacks the applets {', '.join(missing)}, which the guest's init "
            "and job run; install Debian's build with `apt-get install busybox`"
        )
    files: list[str] = []
    for path in [_BUSYBOX, *_library_paths(_BUSYBOX, version)]:
        files += [p for p in _with_links(path) if p not in files]
    return files


def write_busybox_archive(path: Path, init: str) -> None:
    """A bare initramfs at ``path``: busybox, its libraries and ``init`` as /init
    (the KVM probe's, the benchmark's floor), no /etc and no systemd."""
    with open(path, "wb") as out:
        cpio = CpioWriter(out)
        write_base(cpio, busybox_files(), ["dev", "proc", "sys", "usr"])
        cpio.add_file("init", init.encode(), 0o755)
        cpio.close()


def _collect_inputs(layout: Layout) -> _Inputs:
    files = busybox_files()
    etc = tuple((path, st.st_mode, st.st_size, st.st_mtime_ns) for path, st in gs.etc_entries())
    usr = layout.share("/usr", "/usr", read_only=True)
    usr_line = t.FSTAB_LINE.format(source=usr.source, guest="/usr", fstype=usr.fstype,
                                   options=usr.options)  # fmt: skip
    early = tuple((name, str(path)) for name, path in layout.early_files())
    return _Inputs(tuple(files), _names_in(_UDEV_RULE_DIRS), etc, (layout.work_mount(), usr_line),
                   early, layout.early_init())  # fmt: skip


def _names_in(directories: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({n for d in directories if os.path.isdir(d) for n in os.listdir(d)}))


def write_base(cpio: CpioWriter, files: Iterable[str], dirs: Iterable[str]) -> None:
    """``dirs``, the merged-/usr links, and the host ``files`` with their parents."""
    made = set()
    for d in dirs:
        cpio.add_dir(d, _dir_mode(d))
        made.add(d)
    for link, target in _MERGED_USR.items():
        cpio.add_symlink(link, target)
    for path in files:
        parts = os.path.dirname(path).lstrip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                cpio.add_dir(d)
                made.add(d)
        if os.path.islink(path):
            cpio.add_symlink(path, os.readlink(path))
        else:
            cpio.add_file(path, Path(path).read_bytes(), os.stat(path).st_mode & 0o777)


def _generated_files(inputs: _Inputs) -> dict[str, tuple[bytes, int]]:
    """The archive's files written from templates: path -> (content, mode)."""
    work_mount, usr_line = inputs.mounts
    init = t.INIT.format(
        work_mount=work_mount,
        early_init=inputs.early_init,
        unit_path=UNIT_PATH,
        no_generators=NO_GENERATORS,
        new_root=t.NEW_ROOT,
        root_archive=t.ROOT_ARCHIVE,
        cpuinfo_copy=t.CPUINFO_COPY.format(cpuinfo=t.CPUINFO) if gs.procps_needs_core_id() else "",
    )
    return {
        "init": (init.encode(), 0o755),
        **gs.generated_etc(usr_line),
        "etc/systemd/system/mount.d/fakemachine.conf": (t.MOUNT_DROPIN.encode(), 0o644),
    }


def root_archive(bound: Collection[str]) -> bytes:
    """What init unpacks at / (see templates.INIT): the new root's own tree under
    NEW_ROOT (the archive's directories and links outside ROOT_TREES) and the
    static device nodes under /dev. Nothing at or under a path of ``bound``
    (what the run binds into the new root: ROOT_TREES and its volumes...):
    unpacking sets a directory's mode, owner and mtime, which must never reach
    a volume's host directory."""

    def kept(path: str) -> bool:
        return not any(path == b or path.startswith(b + "/") for b in bound)

    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    for d in dict.fromkeys(_DIRS):
        if kept("/" + d):
            cpio.add_dir(t.NEW_ROOT + "/" + d, _dir_mode(d))
    for link, target in (*_MERGED_USR.items(), *gs.FHS_LINKS):
        if kept("/" + link):
            cpio.add_symlink(t.NEW_ROOT + "/" + link, target)
    for d in sorted({os.path.dirname(name) for name, *_ in gs.STATIC_NODES} - {""}):
        cpio.add_dir("dev/" + d)
    for name, major, minor, mode, gid in gs.STATIC_NODES:
        cpio.add_char_device("dev/" + name, major, minor, mode, gid)
    cpio.close()
    return buf.getvalue()


def _dir_mode(d: str) -> int:
    return 0o1777 if d in ("tmp", "var/tmp", "run/lock") else 0o755


def _links(inputs: _Inputs) -> list[tuple[str, str]]:
    """The archive's symlinks: (path, target)."""
    links = [
        *gs.FHS_LINKS,
        *gs.guest_alternatives(),
        ("etc/mtab", "../proc/self/mounts"),
        (f"etc/systemd/system/{t.UNIT_NAME}", f"{t.GUEST_WORK}/{t.UNIT_NAME}"),
        ("etc/udev/rules.d/99-fakemachine.rules", f"{t.GUEST_WORK}/udev.rules"),
    ]
    links += [(f"{gs.SYSINIT_WANTS}/{name}", "/dev/null") for name in gs.SYSINIT_LEFT_OUT]
    links += [(f"{gs.SOCKETS_WANTS}/{name}", "/dev/null") for name in gs.SOCKETS_LEFT_OUT]
    links += [(f"etc/systemd/system/{name}", "/dev/null") for name in gs.MASKED_UNITS]
    links += [(f"etc/udev/rules.d/{name}", "/dev/null")
              for name in gs.udev_rules_to_mask(inputs.udev_rules)]  # fmt: skip
    if not inputs.etc:  # a host without /etc/os-release (tests): the guest still has one
        links.append(("etc/os-release", "../usr/lib/os-release"))
    return links


def _write_etc(cpio: CpioWriter, inputs: _Inputs, replaced: set[str]) -> None:
    """The host's /etc entries, minus what the archive holds otherwise."""
    made = {"etc", *_DIRS}
    for path, mode, _size, _mtime in inputs.etc:
        name = path.lstrip("/")
        if name in replaced:
            continue
        parts = name.split("/")
        for i in range(2, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                cpio.add_dir(d, os.stat("/" + d).st_mode & 0o7777)
                made.add(d)
        try:
            if stat.S_ISLNK(mode):
                cpio.add_symlink(name, os.readlink(path))
            else:
                cpio.add_file(name, Path(path).read_bytes(), mode & 0o7777)
        except OSError:  # changed or gone since the walk: the next key differs anyway
            continue


def _archive(inputs: _Inputs) -> bytes:
    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    write_base(cpio, inputs.files, _DIRS)
    generated = _generated_files(inputs)
    links = _links(inputs)
    _write_etc(cpio, inputs, {*generated, *(path for path, _ in links), *_DIRS})
    for name, (content, mode) in generated.items():
        cpio.add_file(name, content, mode)
    for path, target in links:
        cpio.add_symlink(path, target)
    for directory in sorted({os.path.dirname(name) for name, _ in inputs.early}):
        cpio.add_dir(directory)
    for name, host in inputs.early:
        cpio.add_file(name, Path(host).read_bytes(), 0o644)
    cpio.close()
    return buf.getvalue()


_memo: dict[str, Path] = {}


def initramfs(layout: Layout) -> Path:
    """The path of the cached initramfs for this host and a backend's ``layout``,
    checked, and built if needed."""
    inputs = _collect_inputs(layout)
    key = inputs.fingerprint()
    path = _memo.get(key) or cache_dir() / f"initramfs-{key}.cpio"
    stored(path, lambda: _archive(inputs), "initramfs-*.cpio", "initramfs")
    _memo[key] = path
    return path
