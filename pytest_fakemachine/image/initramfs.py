"""Build the guest's initramfs from the host's own files, once per content.

The archive holds busybox with the dynamic linker and libraries it needs, the
``/init`` script, the guest's ``/etc`` (made from the host's, see
``_guest_system``) and symlinks into the run's work directory. Everything
else the guest runs comes from the host's ``/usr`` over hostfs. The archive
is cached in the user's cache directory under a name derived from its inputs
(the host's /etc entries included), so it is built once and shared (under a
file lock) by every pytest process of the user. Its size and SHA-256 are
recorded next to it when it is written and checked before it is used: a
damaged archive is rebuilt, not booted. A cache directory that is not the user's alone (another
user's, or writable by others: they could plant the guest's init) is not
used; a private one in the temporary directory takes its place.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .._errors import BackendUnavailable
from . import system as gs
from . import templates as t
from .cpio import CpioWriter

__all__ = ["archive_problem", "cache_dir", "cache_note", "initramfs"]

# Bump when the cpio writer's output changes: the key sees what goes into the
# archive (host files, directories, generated files, links), not how it is written.
_FORMAT = "3"
_BUSYBOX = "/usr/bin/busybox"
# What the guest's init and job run as busybox applets (udhcpc only with network).
_APPLETS = ("sh", "mount", "poweroff", "sync", "mv", "env", "cpio")
# An archive unused this long (atime; relatime updates it daily) is another
# version's leftover, removed when a new one is built.
_STALE_SECONDS = 7 * 24 * 3600
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
# Unpacked by init into the devtmpfs at /dev: the static device nodes.
STATIC_NODES_ARCHIVE = "run/fakemachine-static-nodes.cpio"
_MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


def _usual_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-fakemachine"


def _fallback_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"pytest-fakemachine-{os.geteuid()}"


def _not_private(st: os.stat_result, *, directory: bool) -> str | None:
    """Why a file with ``st`` is not this user's alone (None if it is)."""
    uid, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
    checks = (
        (stat.S_ISDIR(st.st_mode) != directory or stat.S_ISLNK(st.st_mode),
         "not a directory" if directory else "not a regular file"),
        (st.st_uid != uid, f"owned by uid {st.st_uid}, not by this user (uid {uid})"),
        (bool(mode & 0o022), f"writable by group or others (mode {mode:o})"),
    )  # fmt: skip
    return next((why for bad, why in checks if bad), None)


def _unusable(path: Path, *, follow: bool) -> str | None:
    """Why ``path`` cannot be a private cache directory (made if missing); None if it can.

    ``follow=False``: a symlink is refused (another user may plant one in /tmp).
    """
    if not path.is_absolute():
        return "not an absolute path (is HOME set?)"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        pass  # there, but not a directory: said below
    except OSError as e:
        return f"unusable: {e.strerror}"
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as e:
        return f"unusable: {e.strerror}"
    problem = _not_private(st, directory=True)
    if problem is None and not os.access(path, os.W_OK | os.X_OK):
        problem = "not writable"
    return problem


_note: list[str] = []  # why the cache is not where it usually is, once said


def cache_note() -> str | None:
    """Why the cache is in the temporary directory instead of its usual place, if it is."""
    return _note[0] if _note else None


def cache_dir() -> Path:
    """The directory of cached archives: the user's cache, else a private temporary one.

    Raises :class:`BackendUnavailable` when neither is usable.
    """
    usual = _usual_cache_dir()
    problem = _unusable(usual, follow=True)
    if problem is None:
        return usual
    fallback = _fallback_cache_dir()
    fallback_problem = _unusable(fallback, follow=False)
    if fallback_problem is not None:
        raise BackendUnavailable(
            f"no usable cache directory for the guest's initramfs: {usual} is {problem}, and "
            f"{fallback} is {fallback_problem}; set XDG_CACHE_HOME to a directory of yours "
            "that only you can write"
        )
    note = f"the cache {usual} is {problem}; using {fallback} instead"
    if not _note or _note[0] != note:
        _note[:] = [note]
        print(f"pytest-fakemachine: warning: {note}", file=sys.stderr)
    return fallback


@dataclass(frozen=True)
class _Inputs:
    files: tuple[str, ...]  # host paths copied into the archive, links included
    udev_rules: tuple[str, ...]  # names of the host's udev rules
    # The host's /etc entries the guest gets: (path, mode, size, mtime_ns).
    etc: tuple[tuple[str, int, int, int], ...] = ()

    def fingerprint(self) -> str:
        digest = hashlib.sha256(_FORMAT.encode())
        digest.update(repr((_DIRS, _generated_files(), _links(self))).encode())
        for path in self.files:
            st = os.lstat(path)
            digest.update(f"{path}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        digest.update(repr(self.etc).encode())
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


def _collect_inputs() -> _Inputs:
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
    etc = tuple((path, st.st_mode, st.st_size, st.st_mtime_ns) for path, st in gs.etc_entries())
    return _Inputs(tuple(files), _names_in(_UDEV_RULE_DIRS), etc)


def _names_in(directories: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({n for d in directories if os.path.isdir(d) for n in os.listdir(d)}))


def write_base(cpio: CpioWriter, files: Iterable[str], dirs: Iterable[str]) -> None:
    """``dirs``, the merged-/usr links, and the host ``files`` with their parents."""
    made = set()
    for d in dirs:
        cpio.add_dir(d, 0o1777 if d in ("tmp", "var/tmp", "run/lock") else 0o755)
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


def _generated_files() -> dict[str, tuple[bytes, int]]:
    """The archive's files written from templates: path -> (content, mode)."""
    init = t.INIT.format(
        unit_path=UNIT_PATH,
        no_generators=NO_GENERATORS,
        static_nodes="/" + STATIC_NODES_ARCHIVE,
        cpuinfo_copy=t.CPUINFO_COPY.format(cpuinfo=t.CPUINFO) if gs.procps_needs_core_id() else "",
    )
    return {
        "init": (init.encode(), 0o755),
        **gs.generated_etc(),
        "etc/systemd/system/mount.d/fakemachine.conf": (t.MOUNT_DROPIN.encode(), 0o644),
        STATIC_NODES_ARCHIVE: (_static_nodes(), 0o644),
    }


def _static_nodes() -> bytes:
    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    for d in sorted({os.path.dirname(name) for name, *_ in gs.STATIC_NODES} - {""}):
        cpio.add_dir(d)
    for name, major, minor, mode, gid in gs.STATIC_NODES:
        cpio.add_char_device(name, major, minor, mode, gid)
    cpio.close()
    return buf.getvalue()


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
    generated = _generated_files()
    links = _links(inputs)
    _write_etc(cpio, inputs, {*generated, *(path for path, _ in links), *_DIRS})
    for name, (content, mode) in generated.items():
        cpio.add_file(name, content, mode)
    for path, target in links:
        cpio.add_symlink(path, target)
    cpio.close()
    return buf.getvalue()


def _remove_stale(directory: Path, keep: Path) -> None:
    """Remove archives of other versions that no guest has read for a week."""
    cutoff = time.time() - _STALE_SECONDS
    for old in directory.glob("initramfs-*.cpio"):
        try:
            if old != keep and old.stat().st_atime < cutoff:
                old.unlink()
                _digest_file(old).unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours: not worth failing a boot over
            pass


def _digest_file(archive: Path) -> Path:
    return archive.with_suffix(".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# What archive_problem says of an archive written by a version that kept no
# digest: rebuilt without a warning.
NO_RECORD = "has no record of its digest"
# Archives found intact, by (inode, size, mtime): each is hashed once per process.
_verified: dict[Path, tuple[int, int, int]] = {}


def archive_problem(path: Path) -> str | None:
    """What is wrong with the cached archive ``path`` ("missing" if absent); None if intact.

    Intact: a regular file of this user's that no one else may write, whose
    size and SHA-256 match what was recorded when it was written.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror}"
    problem = _not_private(st, directory=False)
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    if problem is None and _verified.get(path) != stamp:
        problem = _digest_problem(path, st.st_size)
        if problem is None:
            _verified[path] = stamp
    return problem


def _digest_problem(path: Path, size: int) -> str | None:
    try:
        recorded_size, digest = _digest_file(path).read_text().split()
        expected_size = int(recorded_size)
    except (OSError, ValueError):
        return NO_RECORD
    if size != expected_size:
        return f"holds {size} bytes where {expected_size} were written (damaged)"
    try:
        actual = _sha256(path)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if actual != digest:
        return "does not match the SHA-256 recorded when it was written (damaged)"
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".initramfs-")  # 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # a crash must not leave a renamed, empty archive
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _build(path: Path, inputs: _Inputs) -> None:
    data = _archive(inputs)
    _write_atomically(path, data)
    digest = hashlib.sha256(data).hexdigest()
    _write_atomically(_digest_file(path), f"{len(data)} {digest}\n".encode())


_memo: dict[str, Path] = {}


def initramfs() -> Path:
    """The path of the cached initramfs for this host, checked, and built if needed."""
    inputs = _collect_inputs()
    key = inputs.fingerprint()
    path = _memo.get(key) or cache_dir() / f"initramfs-{key}.cpio"
    if archive_problem(path) is None:
        _memo[key] = path
        return path
    directory = path.parent
    # Imported here: filelock pulls in asyncio, and guests import this module too.
    from filelock import FileLock  # noqa: PLC0415

    try:
        with FileLock(str(directory / "build.lock")):
            problem = archive_problem(path)
            if problem is not None:
                if problem not in ("missing", NO_RECORD):
                    print(f"pytest-fakemachine: warning: the cached initramfs {path} {problem}; "
                          "rebuilding it", file=sys.stderr)  # fmt: skip
                _build(path, inputs)
                _remove_stale(directory, path)
    except OSError as e:
        raise BackendUnavailable(
            f"cannot write the guest's initramfs in {directory}: {e}; set XDG_CACHE_HOME to "
            "a directory of yours with room"
        ) from None
    problem = archive_problem(path)
    if problem is not None:  # pragma: no cover - the file changed under our lock
        raise BackendUnavailable(f"the initramfs {path} {problem} right after it was written")
    _memo[key] = path
    return path
