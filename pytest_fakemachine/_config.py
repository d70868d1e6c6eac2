"""Parsing and validation of a machine's configuration values.

Every check raises :class:`ConfigError` with the bad value and ``source``:
where the value came from (``Machine(memory=...)``, ``--fakemachine-memory``,
``@pytest.mark.fakemachine on tests/test_x.py::test_y``...).
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Union, final

from ._errors import ConfigError

__all__ = [
    "DEFAULT_BOOT_TIMEOUT",
    "DEFAULT_MEMORY_MIB",
    "Image",
    "Size",
    "Volume",
    "check_env",
    "check_guest_path",
    "check_label",
    "check_memory_fits",
    "check_text",
    "in_guest",
    "parse_memory",
    "parse_size",
    "parse_timeout",
]

Size = Union[int, str]
DEFAULT_MEMORY_MIB = 2048
DEFAULT_BOOT_TIMEOUT = 120.0  # seconds; a boot takes 1-3 s, so only a hang reaches it
MAX_LABEL_LENGTH = 19
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_RE = re.compile(r"[A-Za-z0-9._-]+")
# "512", "64M", "2GiB", "1.5g", "4096B": a number, then a unit with optional
# "iB"/"B", or a bare "B" for bytes.
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|(B))?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MAX_BYTES = (1 << 63) - 1  # a file offset (off_t) holds no more
# The guest's system directories: a volume may go below one (/etc/myapp), not over it.
_SYSTEM_DIRS = frozenset({"/", "/etc", "/var", "/tmp", "/home", "/run"})
# Trees of the guest's kernel, of the host's /usr and of the run's own files:
# a volume may go neither at nor under them.
# /fakemachine-root: where the run's mounts are gathered before it becomes "/".
_SYSTEM_TREES = ("/proc", "/sys", "/dev", "/usr", "/run/fakemachine", "/fakemachine-root")
# The guest's own symlinks (image/system.py's FHS_LINKS, merged /usr): a path
# through one is the path it leads to.
_GUEST_LINKS = (
    ("/var/run", "/run"),
    ("/var/lock", "/run/lock"),
    *((f"/{name}", f"/usr/{name}") for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32")),
)


def _parse_quantity(value: object, what: str, source: str, default_unit: str) -> int:
    """``value`` in bytes: an int counts ``default_unit``s, a string may carry its unit."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(
            f"{what}={value!r} from {source}: expected an int or a string like '512M'"
        )
    if isinstance(value, int):
        number, unit = float(value), default_unit
    else:
        match = _SIZE_RE.fullmatch(value)
        if not match:
            raise ConfigError(
                f"{what}={value!r} from {source}: not a size (use a number with an optional "
                "unit K, M, G or T, e.g. '512M', '2G', '1GiB')"
            )
        number = float(match.group(1))
        unit = match.group(2) or ("" if match.group(3) else default_unit)
        unit = unit.upper()
    if number < 0:
        raise ConfigError(f"{what}={value!r} from {source}: must not be negative")
    if not math.isfinite(number) or number * _UNITS[unit] > _MAX_BYTES:
        raise ConfigError(f"{what}={value!r} from {source}: too large (at most 8 EiB)")
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise ConfigError(f"{what}={value!r} from {source}: must be more than zero")
    return result


def parse_size(value: object, source: str, what: str = "size") -> int:
    """A disk size in bytes: an int is bytes, a bare number string too."""
    return _parse_quantity(value, what, source, "")


def parse_memory(value: object, source: str) -> int:
    """Guest memory in MiB: an int (or a bare number string) is MiB."""
    mib = _parse_quantity(value, "memory", source, "M") // (1 << 20)
    if mib < 64:
        raise ConfigError(f"memory={value!r} from {source}: a guest needs at least 64M")
    return mib


def _host_memory_mib() -> int | None:
    """The host's memory plus swap in MiB, from /proc/meminfo (None if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return sum(int(fields[name].split()[0]) for name in ("MemTotal", "SwapTotal")) >> 10
    except (OSError, KeyError, ValueError, IndexError):
        return None


def check_memory_fits(mib: int, value: object, source: str) -> None:
    """Refuse guest memory the host cannot back: the guest kernel would panic on it."""
    host = _host_memory_mib()
    if host is not None and mib > host:
        raise ConfigError(
            f"memory={value!r} from {source}: {mib} MiB, more than this host's memory and "
            f"swap together ({host} MiB)"
        )


def parse_timeout(value: object, source: str, what: str = "timeout") -> float | None:
    """Seconds, or None for no limit; zero or a negative number is refused."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{what}={value!r} from {source}: expected seconds")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} from {source}: expected seconds") from None
    if not seconds > 0:
        raise ConfigError(f"{what}={value!r} from {source}: must be more than zero")
    return seconds


def check_text(text: str, what: str, source: str) -> str:
    """``text`` if it is valid UTF-8 text (what the guest's files and command line hold)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(
            f"{what} {text!r} from {source}: not valid UTF-8 (it holds "
            f"{text[e.start : e.end]!r}, an undecodable byte as os.fsdecode gives it)"
        ) from None
    return text


def check_label(label: object, source: str) -> str:
    if not isinstance(label, str) or not label:
        raise ConfigError(f"label={label!r} from {source}: must be a non-empty string")
    if len(label) > MAX_LABEL_LENGTH:
        raise ConfigError(
            f"label={label!r} from {source}: {len(label)} characters, at most "
            f"{MAX_LABEL_LENGTH} allowed"
        )
    if not _LABEL_RE.fullmatch(label):
        raise ConfigError(
            f"label={label!r} from {source}: only letters, digits, '.', '_' and '-' allowed"
        )
    if label in (".", ".."):  # would name the link directory itself
        raise ConfigError(f"label={label!r} from {source}: not a usable file name")
    return label


def check_guest_path(path: object, source: str) -> str:
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text:
        raise ConfigError(f"guest path {path!r} from {source}: expected a non-empty path")
    if not text.startswith("/"):
        raise ConfigError(f"guest path {text!r} from {source}: must be absolute")
    if any(c.isspace() for c in text) or "\0" in text:
        raise ConfigError(f"guest path {text!r} from {source}: must not contain whitespace")
    if "\\" in text:  # fstab reads "\040" as a space, "\134" as a backslash...
        raise ConfigError(f"guest path {text!r} from {source}: must not contain a backslash")
    check_text(text, "guest path", source)
    return "/" + os.path.normpath(text).lstrip("/")  # normpath keeps a leading "//"


def in_guest(path: str) -> str:
    """``path`` (normalized) with the guest's own symlinks resolved."""
    for link, target in _GUEST_LINKS:  # none leads into another
        if path == link or path.startswith(link + "/"):
            return target + path[len(link) :]
    return path


def _system_conflict(guest: str) -> str | None:
    """Why a volume at ``guest`` would break the guest's system (None if it would not)."""
    target = in_guest(guest)
    via = "" if target == guest else f" (that is {target} in the guest)"
    tree = next((t for t in _SYSTEM_TREES if target == t or target.startswith(t + "/")), None)
    if tree is not None:
        return f"{via} is at or under {tree}, which the guest's system provides".lstrip()
    if target in _SYSTEM_DIRS:
        return (f"{via} is a system directory of the guest; mount below it instead "
                "(e.g. /etc/myapp, /var/lib/myapp)").lstrip()  # fmt: skip
    return None


@final
@dataclass(frozen=True)
class Image:
    """A disk image file of the user's, for the marker's ``images`` keyword.

    ``size=None`` uses the file as it is (it must exist); a size creates or
    grows it sparsely.
    """

    path: str | os.PathLike[str]
    size: Size | None = None


@dataclass(frozen=True)
class ImageSpec:
    path: Path
    label: str


@dataclass(frozen=True)
class Volume:
    host: Path
    guest: str
    read_only: bool


def check_volume(host_dir: object, guest_dir: object, read_only: bool, source: str) -> Volume:
    """The volume ``host_dir`` at ``guest_dir`` (``None``: the path given).

    A host path through a symlink is mounted as the directory it leads to
    (a guest cannot mount a host's link); with ``guest_dir=None`` the guest path stays
    the one given, and the target is refused where it would be given itself.
    """
    if not isinstance(host_dir, (str, os.PathLike)):
        raise ConfigError(f"volume {host_dir!r} from {source}: expected a path")
    given = os.path.abspath(os.fspath(host_dir))
    try:
        mode = os.stat(given).st_mode
    except FileNotFoundError:
        raise ConfigError(f"volume {given!r} from {source}: does not exist") from None
    except OSError as e:
        raise ConfigError(f"volume {given!r} from {source}: {e.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"volume {given!r} from {source}: not a directory")
    host = os.path.realpath(given)
    name = repr(given) if host == given else f"{given!r} (a symlink to {host!r})"
    guest = check_guest_path(given if guest_dir is None else guest_dir, source)
    conflict = _system_conflict(host) if guest_dir is None and host != given else None
    if conflict is not None:  # the target is refused as it would be given itself
        raise ConfigError(f"volume {name} from {source}: refused as {host!r} is without "
                          f"a guest path: {host!r} {conflict}")  # fmt: skip
    if guest == "/":
        raise ConfigError(f"volume {name} from {source}: cannot be mounted over '/'")
    conflict = _system_conflict(guest)
    if conflict is not None:
        raise ConfigError(f"volume {name} from {source}: guest path {guest!r} {conflict}")
    return Volume(Path(host), guest, bool(read_only))


def prepare_image(path: Path, size: int | None, source: str) -> None:
    """Create or grow ``path`` sparsely to ``size``; with None it must exist.

    An existing file is never shrunk or rewritten: only its length may grow.
    """
    if size is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ConfigError(
                f"image {str(path)!r} from {source}: does not exist (give a size to create it)"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"image {str(path)!r} from {source}: not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"image {str(path)!r} from {source}: not readable and writable")
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"image {str(path)!r} from {source}: {e.strerror}") from None
    try:
        current = os.fstat(fd).st_size
        if current > size:
            raise ConfigError(
                f"image {str(path)!r} from {source}: the file holds {current} bytes, more than "
                f"size={size}; refusing to truncate it"
            )
        if current < size:
            try:
                os.ftruncate(fd, size)  # grows sparsely: no blocks are written
            except OSError as e:
                raise ConfigError(
                    f"image {str(path)!r} from {source}: cannot grow to {size} bytes: {e.strerror}"
                ) from None
    finally:
        os.close(fd)


def check_env(env: dict[str, object], source: str) -> dict[str, str]:
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ConfigError(f"env name {key!r} from {source}: not a valid variable name")
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"env[{key!r}]={value!r} from {source}: expected a string")
        check_text(value, f"env[{key!r}]", source)
    return {k: str(v) for k, v in env.items()}
