"""The user's cache directory, and the files kept in it with a record of their digest.

A cache directory that is not the user's alone (another user's, or writable
by others: they could plant the guest's init) is not used; a private one in
the temporary directory takes its place. A cached file's size and SHA-256 are
recorded next to it when it is written and checked before it is used: a
damaged file is rebuilt, not booted. Files are built under a file lock, so
every pytest process of the user shares one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .._errors import BackendUnavailable

__all__ = ["NO_RECORD", "archive_problem", "cache_dir", "cache_note", "stored"]

# A cached file unused this long (atime; relatime updates it daily) is another
# version's leftover, removed when a new one is built.
_STALE_SECONDS = 7 * 24 * 3600


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


def _link_target(path: Path) -> str:
    """`` (to TARGET)`` for the symlink ``path``, empty if unreadable."""
    try:
        return f" (to {os.readlink(path)!r})"
    except OSError:
        return ""


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
    if stat.S_ISLNK(st.st_mode):  # another user may have planted it
        return f"a symlink{_link_target(path)}, which is not a directory: remove the link"
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


def _remove_stale(directory: Path, keep: Path, pattern: str) -> None:
    """Remove files of other versions that no guest has read for a week."""
    cutoff = time.time() - _STALE_SECONDS
    for old in directory.glob(pattern):
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


def _write_with_digest(path: Path, data: bytes) -> None:
    _write_atomically(path, data)
    digest = hashlib.sha256(data).hexdigest()
    _write_atomically(_digest_file(path), f"{len(data)} {digest}\n".encode())


def _lock_file(directory: Path) -> Path:
    """The cache's lock file; a symlink in its place (it holds no data) is
    removed, never followed, when the directory is this user's alone."""
    lock = directory / "build.lock"
    try:
        st = os.lstat(lock)
    except FileNotFoundError:
        return lock
    if stat.S_ISREG(st.st_mode):
        return lock
    link = stat.S_ISLNK(st.st_mode)
    what = f"a symlink{_link_target(lock)}" if link else "not a regular file"
    where = f"{lock} is {what}, where the cache's lock file belongs"
    if link and _not_private(os.stat(directory), directory=True) is None:
        with contextlib.suppress(FileNotFoundError):  # another process of ours removed it
            os.unlink(lock)
        print(f"pytest-fakemachine: warning: {where}; removed it", file=sys.stderr)
        return lock
    raise BackendUnavailable(f"cannot lock the cache {directory}: {where}; remove it")


def stored(path: Path, make: Callable[[], bytes], pattern: str, name: str) -> None:
    """Make sure ``path`` holds an intact file, writing ``make()`` there if not
    (under the cache's lock); older files matching ``pattern`` unused for a week go."""
    if archive_problem(path) is None:
        return
    directory = path.parent
    # Imported here: filelock pulls in asyncio, and guests import this module too.
    from filelock import FileLock  # noqa: PLC0415

    try:
        with FileLock(str(_lock_file(directory))):
            problem = archive_problem(path)
            if problem is not None:
                if problem not in ("missing", NO_RECORD):
                    print(f"pytest-fakemachine: warning: the cached {name} {path} {problem}; "
                          "rebuilding it", file=sys.stderr)  # fmt: skip
                _write_with_digest(path, make())
                _remove_stale(directory, path, pattern)
    except OSError as e:
        raise BackendUnavailable(
            f"cannot write the guest's {name} in {directory}: {e}; set XDG_CACHE_HOME to "
            "a directory of yours with room"
        ) from None
    problem = archive_problem(path)
    if problem is not None:  # pragma: no cover - the file changed under our lock
        raise BackendUnavailable(f"the cached file {path} {problem} right after it was written")
