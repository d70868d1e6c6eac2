"""Fast unit tests of pytest-fakemachine's host-side parts; none of them boots a guest.

Every test that goes through ``Machine.run()`` replaces ``_session.GuestProcess``
with a class that fails the test when it is constructed, so a ConfigError that
came too late (after a guest process started) cannot pass unnoticed.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from pytest_fakemachine import (
    BackendUnavailable,
    BootError,
    ConfigError,
    FakeMachineError,
    GuestTimeout,
    Machine,
    RunResult,
    _initramfs,
    _machine,
    _session,
    _templates,
    _uml,
    in_fakemachine,
)
from pytest_fakemachine import _config as c
from pytest_fakemachine._cpio import CpioWriter
from pytest_fakemachine._session import GUEST_PATH, command_body
from pytest_fakemachine._settings import settings_key
from pytest_fakemachine._transport import EventReader, rebuild

LABEL_DIR = "/dev/disk/by-fakemachine-label"
SOURCE = "the unit test's source"


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytester runs are no xdist workers, even when this test runs in one.

    (Plugins that look at the variable, e.g. pytest-benchmark, would warn, and
    filterwarnings=error turns the warning into an error of the inner run.)
    """
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


# --------------------------------------------------------------------------------------
# 1. cpio (newc)
# --------------------------------------------------------------------------------------

NEWC_MAGIC = b"070701"
NEWC_HEADER_LEN = 6 + 13 * 8  # 110
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")


@dataclass(frozen=True)
class CpioEntry:
    offset: int
    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    check: int
    data: bytes


def parse_newc(blob: bytes) -> list[CpioEntry]:
    """A strict parser of a newc archive; checks magic, hex fields, padding and trailer."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"entry at offset {pos} is not 4-byte aligned"
        header = blob[pos : pos + NEWC_HEADER_LEN]
        assert len(header) == NEWC_HEADER_LEN, f"truncated header at offset {pos}"
        assert header[:6] == NEWC_MAGIC, f"bad magic {header[:6]!r} at offset {pos}"
        raw_fields = [header[6 + 8 * i : 14 + 8 * i] for i in range(13)]
        for raw in raw_fields:
            assert _HEX8.fullmatch(raw), f"field {raw!r} at offset {pos} is not 8 hex digits"
        (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
         namesize, check) = (int(raw, 16) for raw in raw_fields)  # fmt: skip
        name_start = pos + NEWC_HEADER_LEN
        name_bytes = blob[name_start : name_start + namesize]
        assert len(name_bytes) == namesize
        assert name_bytes.endswith(b"\0"), "name is not NUL-terminated"
        assert b"\0" not in name_bytes[:-1], "name has an inner NUL"
        name = name_bytes[:-1].decode()
        data_start = name_start + namesize
        name_pad = -data_start % 4
        assert blob[data_start : data_start + name_pad] == b"\0" * name_pad, "name padding"
        data_start += name_pad
        data = blob[data_start : data_start + filesize]
        assert len(data) == filesize, f"truncated data of {name!r}"
        end = data_start + filesize
        data_pad = -end % 4
        assert blob[end : end + data_pad] == b"\0" * data_pad, f"data padding of {name!r}"
        entry = CpioEntry(pos, name, ino, mode, uid, gid, nlink, mtime, devmajor, devminor,
                          rdevmajor, rdevminor, check, data)  # fmt: skip
        entries.append(entry)
        pos = end + data_pad
        if name == "TRAILER!!!":
            break
    assert pos == len(blob), f"{len(blob) - pos} bytes after the trailer"
    return entries


def _sample_archive() -> bytes:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add_dir("/")
    writer.add_dir("/etc")
    writer.add_dir("usr/bin", 0o700)
    writer.add_file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    writer.add_file("etc/empty", b"")
    writer.add_file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    writer.add_file("etc/secret", b"x" * 5, 0o600)
    writer.add_file("etc/\u00fcnicode-\u2713", b"\xff\x00\x01")  # a 2-byte and 3-byte char
    writer.add_symlink("/bin", "usr/bin")
    writer.add_symlink("etc/abs", "/etc/passwd")
    writer.close()
    return out.getvalue()


def test_cpio_entries_parse_back() -> None:
    entries = parse_newc(_sample_archive())
    by_name = {e.name: e for e in entries}
    assert [e.name for e in entries] == [
        ".", "etc", "usr/bin", "etc/passwd", "etc/empty", "usr/bin/tool", "etc/secret",
        "etc/\u00fcnicode-\u2713", "bin", "etc/abs", "TRAILER!!!",
    ]  # fmt: skip

    assert by_name["."].mode == stat.S_IFDIR | 0o755
    assert by_name["etc"].mode == stat.S_IFDIR | 0o755
    assert by_name["usr/bin"].mode == stat.S_IFDIR | 0o700
    assert by_name["etc"].nlink == 2
    assert by_name["etc"].data == b""

    assert by_name["etc/passwd"].mode == stat.S_IFREG | 0o644
    assert by_name["etc/passwd"].data == b"root:x:0:0:root:/root:/bin/sh\n"
    assert by_name["etc/empty"].data == b""
    assert by_name["usr/bin/tool"].mode == stat.S_IFREG | 0o755
    assert by_name["usr/bin/tool"].data == b"#!/bin/sh\necho hi\n"
    assert by_name["etc/secret"].mode == stat.S_IFREG | 0o600
    assert by_name["etc/secret"].data == b"xxxxx"
    assert by_name["etc/\u00fcnicode-\u2713"].data == b"\xff\x00\x01"

    assert by_name["bin"].mode == stat.S_IFLNK | 0o777
    assert by_name["bin"].data == b"usr/bin"  # the link target, without a NUL
    assert by_name["etc/abs"].data == b"/etc/passwd"

    trailer = by_name["TRAILER!!!"]
    assert trailer.mode == 0
    assert trailer.data == b""
    for entry in entries:
        assert entry.offset % 4 == 0
        assert (entry.uid, entry.gid, entry.mtime) == (0, 0, 0)
        assert (entry.devmajor, entry.devminor, entry.rdevmajor, entry.rdevminor) == (0, 0, 0, 0)
        assert entry.check == 0
    inodes = [e.ino for e in entries if e.name != "TRAILER!!!"]
    assert len(set(inodes)) == len(inodes), "inode numbers must be unique"
    assert all(ino > 0 for ino in inodes)


@pytest.mark.parametrize("length", range(9))
def test_cpio_padding_for_every_name_and_data_length(length: int) -> None:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add_file("n" * (length + 1), b"d" * length)
    writer.add_symlink("l" * (length + 1), "t" * (length + 1))
    writer.close()
    blob = out.getvalue()
    assert len(blob) % 4 == 0
    entries = parse_newc(blob)
    assert entries[0].name == "n" * (length + 1)
    assert entries[0].data == b"d" * length
    assert entries[1].data == b"t" * (length + 1)


def test_cpio_is_deterministic() -> None:
    assert _sample_archive() == _sample_archive()
    other = io.BytesIO()
    writer = CpioWriter(other)
    writer.add_file("etc/passwd", b"different")
    writer.close()
    assert other.getvalue() != _sample_archive()


def test_cpio_close_is_idempotent_and_final() -> None:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add_file("a", b"1")
    writer.close()
    size = len(out.getvalue())
    writer.close()
    assert len(out.getvalue()) == size, "a second close() must not add a second trailer"
    with pytest.raises(ValueError, match="closed"):
        writer.add_file("b", b"2")
    with pytest.raises(ValueError, match="closed"):
        writer.add_dir("d")
    with pytest.raises(ValueError, match="closed"):
        writer.add_symlink("s", "t")
    assert len(out.getvalue()) == size
    assert [e.name for e in parse_newc(out.getvalue())] == ["a", "TRAILER!!!"]


def test_cpio_empty_archive_is_just_a_trailer() -> None:
    out = io.BytesIO()
    CpioWriter(out).close()
    assert [e.name for e in parse_newc(out.getvalue())] == ["TRAILER!!!"]


def test_cpio_listed_by_gnu_cpio(tmp_path: Path) -> None:
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("cpio is not installed")
    blob = _sample_archive()

    def listing(*flags: str) -> list[str]:
        result = subprocess.run([cpio, "-i", "-t", "--quiet", *flags], input=blob,
                                capture_output=True, check=True)  # fmt: skip
        return result.stdout.decode().splitlines()

    assert listing() == [
        ".", "etc", "usr/bin", "etc/passwd", "etc/empty", "usr/bin/tool", "etc/secret",
        "etc/\u00fcnicode-\u2713", "bin", "etc/abs",
    ]  # fmt: skip
    verbose = listing("-v")
    modes = [line.split()[0] for line in verbose]
    assert modes == [
        "drwxr-xr-x", "drwxr-xr-x", "drwx------", "-rw-r--r--", "-rw-r--r--", "-rwxr-xr-x",
        "-rw-------", "-rw-r--r--", "lrwxrwxrwx", "lrwxrwxrwx",
    ]  # fmt: skip
    assert verbose[8].endswith(" bin -> usr/bin")
    assert verbose[9].endswith(" etc/abs -> /etc/passwd")
    assert all(" root " in line for line in verbose)

    # And it unpacks to what was written.
    dest = tmp_path / "root"
    dest.mkdir()
    subprocess.run([cpio, "-i", "-d", "--quiet", "--no-absolute-filenames"], input=blob,
                   cwd=dest, capture_output=True, check=True)  # fmt: skip
    assert (dest / "etc/passwd").read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"
    assert (dest / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((dest / "etc/secret").stat().st_mode) == 0o600
    assert os.readlink(dest / "bin") == "usr/bin"
    assert os.readlink(dest / "etc/abs") == "/etc/passwd"
    assert (dest / "etc/\u00fcnicode-\u2713").read_bytes() == b"\xff\x00\x01"


def test_cpio_listed_by_bsdtar() -> None:
    bsdtar = shutil.which("bsdtar")
    if bsdtar is None:
        pytest.skip("bsdtar is not installed")
    listing = subprocess.run(
        [bsdtar, "-tf", "-"], input=_sample_archive(), capture_output=True, check=True
    ).stdout.decode()
    names = set(listing.splitlines())
    assert {"etc/passwd", "usr/bin/tool", "bin", "etc/abs"} <= names


# Inputs without host files: what the archive holds of ours, on any host.
NO_HOST_FILES = _initramfs._Inputs(files=(), udev_rules=("55-dm.rules", "70-mouse.rules"))


def test_initramfs_holds_init_mount_dropin_and_our_links() -> None:
    entries = {e.name: e for e in parse_newc(_initramfs._archive(NO_HOST_FILES))}
    init = entries["init"].data.decode()
    assert entries["init"].mode & 0o777 == 0o755
    assert init.startswith("#!/bin/busybox sh\n")
    # The generator path names nothing in the archive, so systemd runs none.
    assert f"SYSTEMD_GENERATOR_PATH={_initramfs.NO_GENERATORS} " in init
    assert _initramfs.NO_GENERATORS.lstrip("/") not in entries
    assert "TARGET=/run/fakemachine ROOT=/ OPTS=x-initrd.mount" in init
    assert stat.S_ISDIR(entries["run/mount"].mode)  # where init writes utab
    dropin = entries["etc/systemd/system/mount.d/fakemachine.conf"].data.decode()
    assert "[Mount]\nStandardOutput=tty\n" in dropin
    # Rules for hardware the guest has not are masked; device-mapper's stay.
    assert entries["etc/udev/rules.d/70-mouse.rules"].data == b"/dev/null"
    assert "etc/udev/rules.d/55-dm.rules" not in entries
    assert (
        entries["etc/systemd/system/fakemachine.service"]
        .data.decode()
        .endswith("/fakemachine.service")
    )


def _set(target: object, name: str, value: object) -> Any:
    """A change for the cache-key test: set ``name`` on ``target``, same inputs."""

    def change(mp: pytest.MonkeyPatch) -> _initramfs._Inputs:
        mp.setattr(target, name, value)
        return NO_HOST_FILES

    return change


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("a template", _set(_templates, "MOUNT_DROPIN", "[Mount]\n")),
        ("the unit path", _set(_initramfs, "UNIT_PATH", "/etc/systemd/system")),
        ("a directory", _set(_initramfs, "_DIRS", (*_initramfs._DIRS, "srv"))),
        ("a masked rule", lambda mp: _initramfs._Inputs((), ("70-mouse.rules", "60-drm.rules"))),
        (
            "a host /etc file",
            lambda mp: _initramfs._Inputs((), ("70-mouse.rules",), (("/etc/x", 0o100644, 1, 2),)),
        ),
    ],
)
def test_initramfs_cache_key_changes_with_what_goes_in(
    monkeypatch: pytest.MonkeyPatch, what: str, change: Any
) -> None:
    before = NO_HOST_FILES.fingerprint()
    assert _initramfs._Inputs((), ("70-mouse.rules", "x.rules")).fingerprint() == before
    assert change(monkeypatch).fingerprint() != before, what


def test_initramfs_refuses_a_busybox_without_the_applets_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "busybox"
    fake.write_text("#!/bin/sh\nprintf 'sh\\nmount\\nsync\\nmv\\nenv\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(_initramfs, "_BUSYBOX", str(fake))
    with pytest.raises(BackendUnavailable, match=rf"{fake} lacks the applets poweroff,"):
        _initramfs._collect_inputs()


def test_initramfs_build_removes_only_archives_unused_for_a_week(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_initramfs, "_memo", {})
    monkeypatch.setattr(_initramfs, "_collect_inputs", lambda: NO_HOST_FILES)
    directory = tmp_path / "pytest-fakemachine"
    directory.mkdir()
    stale, recent, other = (directory / f"initramfs-{n}.cpio" for n in ("old", "new", "x"))
    for path in (stale, recent, other):
        path.write_bytes(b"07070")
    week = 7 * 24 * 3600
    os.utime(stale, (time.time() - week - 60, time.time() - week - 60))
    os.utime(recent, (time.time() - week + 3600, time.time() - 2 * week))  # read lately
    built = _initramfs.initramfs()
    assert built.parent == directory and built.exists()
    assert not stale.exists()
    assert recent.exists() and other.exists()


# --------------------------------------------------------------------------------------
# 2. sizes, memory, timeouts
# --------------------------------------------------------------------------------------

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (4096, 4096),
        ("512", 512),
        ("4k", 4 * K),
        ("4K", 4 * K),
        ("64M", 64 * M),
        ("64m", 64 * M),
        ("2G", 2 * G),
        ("2g", 2 * G),
        ("1GiB", G),
        ("1gib", G),
        ("1.5G", 3 * G // 2),
        ("1T", T),
        (" 8M ", 8 * M),
    ],
)
def test_parse_size_good(value: int | str, expected: int) -> None:
    assert c.parse_size(value, SOURCE) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (64, 64),
        (512, 512),
        ("512", 512),
        ("512M", 512),
        ("512m", 512),
        ("2G", 2048),
        ("2g", 2048),
        ("1GiB", 1024),
        ("1.5G", 1536),
        ("65536K", 64),
    ],
)
def test_parse_memory_good(value: int | str, expected: int) -> None:
    assert c.parse_memory(value, SOURCE) == expected


BAD_QUANTITIES: list[object] = [
    "many", "", "   ", "12X", "M", "1.2.3G", "0x10", "1e3", "-1", "-64M",
    -1, -512, 0, "0", "0M", "0.0G", True, False, None, 1.5, [64], b"64M",
]  # fmt: skip


@pytest.mark.parametrize("value", BAD_QUANTITIES, ids=repr)
def test_parse_size_bad(value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        c.parse_size(value, SOURCE)
    message = str(excinfo.value)
    assert repr(value) in message
    assert SOURCE in message
    assert message.startswith("size=")


@pytest.mark.parametrize("value", [*BAD_QUANTITIES, 1, 63, "63M", "32M", "1K"], ids=repr)
def test_parse_memory_bad(value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        c.parse_memory(value, SOURCE)
    message = str(excinfo.value)
    assert f"memory={value!r}" in message
    assert SOURCE in message


def test_size_error_names_what() -> None:
    with pytest.raises(ConfigError, match=r"^scratch='lots' from somewhere: not a size"):
        c.parse_size("lots", "somewhere", "scratch")


def test_negative_int_says_negative() -> None:
    with pytest.raises(ConfigError, match="must not be negative"):
        c.parse_size(-5, SOURCE)
    with pytest.raises(ConfigError, match="more than zero"):
        c.parse_size(0, SOURCE)
    with pytest.raises(ConfigError, match="at least 64M"):
        c.parse_memory("32M", SOURCE)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, FakeMachineError)
    assert issubclass(GuestTimeout, TimeoutError)
    for cls in (BackendUnavailable, BootError, GuestTimeout):
        assert issubclass(cls, FakeMachineError)
    with pytest.raises(ValueError):
        c.parse_size("many", SOURCE)


def test_parse_memory_explicit_bytes() -> None:
    assert c.parse_memory("4294967296B", SOURCE) == 4096


def test_parse_size_refuses_bare_ib() -> None:
    with pytest.raises(ConfigError):
        c.parse_size("512iB", SOURCE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (5, 5.0), (0.5, 0.5), ("2.5", 2.5), (" 7 ", 7.0), ("30", 30.0)],
)
def test_parse_timeout_good(value: object, expected: float | None) -> None:
    assert c.parse_timeout(value, SOURCE) == expected


@pytest.mark.parametrize(
    "value", [0, 0.0, -1, -0.5, "0", "-1", "soon", "", "nan", True, False, [], "5s"], ids=repr
)
def test_parse_timeout_bad(value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        c.parse_timeout(value, SOURCE)
    message = str(excinfo.value)
    assert f"timeout={value!r}" in message
    assert SOURCE in message


# --------------------------------------------------------------------------------------
# 3. labels, guest paths, volumes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["a", "data", "Disk_1.x-y", "fakedisk-0", "a" * 19, "0"])
def test_check_label_good(label: str) -> None:
    assert c.check_label(label, SOURCE) == label


@pytest.mark.parametrize(
    "label",
    ["", "a" * 20, "a" * 40, "a b", "a/b", "data\n", "\u00e9t\u00e9", "a:b", "a,b", "a*",
     None, 5, b"data", ["data"]],
    ids=repr,
)  # fmt: skip
def test_check_label_bad(label: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        c.check_label(label, SOURCE)
    message = str(excinfo.value)
    assert f"label={label!r}" in message
    assert SOURCE in message


def test_check_label_length_boundary() -> None:
    assert c.check_label("x" * 19, SOURCE) == "x" * 19
    with pytest.raises(ConfigError, match="20 characters, at most 19"):
        c.check_label("x" * 20, SOURCE)


@pytest.mark.parametrize("label", [".", ".."])
def test_check_label_refuses_dot_names(label: str) -> None:
    with pytest.raises(ConfigError):
        c.check_label(label, SOURCE)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/out", "/out"),
        ("/a/../b/", "/b"),
        ("/a/./b", "/a/b"),
        (PurePosixPath("/x/y"), "/x/y"),
        (Path("/srv"), "/srv"),
    ],
)
def test_check_guest_path_good(path: str | os.PathLike[str], expected: str) -> None:
    assert c.check_guest_path(path, SOURCE) == expected


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("out", "must be absolute"),
        ("./out", "must be absolute"),
        ("", "non-empty path"),
        ("/with space", "whitespace"),
        ("/tab\there", "whitespace"),
        ("/new\nline", "whitespace"),
        ("/nul\0byte", "must not"),
        (None, "expected a non-empty path"),
        (5, "expected a non-empty path"),
        (b"/out", "expected a non-empty path"),
    ],
    ids=repr,
)
def test_check_guest_path_bad(path: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as excinfo:
        c.check_guest_path(path, SOURCE)
    assert SOURCE in str(excinfo.value)
    assert repr(path) in str(excinfo.value)


def test_check_volume_missing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match="does not exist") as excinfo:
        c.check_volume(missing, None, False, SOURCE)
    assert str(missing) in str(excinfo.value)
    assert SOURCE in str(excinfo.value)


def test_check_volume_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="not a directory") as excinfo:
        c.check_volume(file, "/mnt", False, SOURCE)
    assert str(file) in str(excinfo.value)


def test_check_volume_device() -> None:
    with pytest.raises(ConfigError, match="not a directory") as excinfo:
        c.check_volume("/dev/null", "/mnt", False, SOURCE)
    assert "/dev/null" in str(excinfo.value)


def test_check_volume_not_a_path() -> None:
    with pytest.raises(ConfigError, match="expected a path"):
        c.check_volume(5, None, False, SOURCE)


def test_check_volume_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = c.check_volume(tmp_path, None, False, SOURCE)
    assert volume.host == tmp_path
    assert volume.guest == str(tmp_path)
    assert volume.read_only is False

    volume = c.check_volume(str(tmp_path), "/mnt/data/", True, SOURCE)
    assert volume.guest == "/mnt/data"
    assert volume.read_only is True

    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    volume = c.check_volume("sub", None, False, SOURCE)
    assert volume.host == tmp_path / "sub"
    assert volume.host.is_absolute()
    assert volume.guest == str(tmp_path / "sub")


@pytest.mark.parametrize("guest", ["relative", "/with space", "/", "/a/..", ""])
def test_check_volume_bad_guest_path(tmp_path: Path, guest: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        c.check_volume(tmp_path, guest, False, SOURCE)
    assert SOURCE in str(excinfo.value)


def test_check_volume_refuses_double_slash_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="over '/'"):
        c.check_volume(tmp_path, "//", False, SOURCE)


# --------------------------------------------------------------------------------------
# 4. disk images
# --------------------------------------------------------------------------------------


def test_prepare_image_creates_sparse(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    c.prepare_image(image, G, SOURCE)
    st = image.stat()
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == G
    assert st.st_blocks * 512 < M, f"{st.st_blocks} blocks allocated: not sparse"


def test_prepare_image_grows_without_touching_content(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    content = os.urandom(10_000)
    image.write_bytes(content)
    c.prepare_image(image, 4 * M, SOURCE)
    data = image.read_bytes()
    assert len(data) == 4 * M
    assert data[: len(content)] == content
    assert data[len(content) :].count(0) == 4 * M - len(content)


def test_prepare_image_same_size_untouched(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    content = os.urandom(8192)
    image.write_bytes(content)
    os.utime(image, ns=(1_000_000_000, 1_000_000_000))
    c.prepare_image(image, 8192, SOURCE)
    assert image.read_bytes() == content
    assert image.stat().st_mtime_ns == 1_000_000_000


def test_prepare_image_refuses_to_shrink(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    content = os.urandom(8192)
    image.write_bytes(content)
    with pytest.raises(ConfigError, match="refusing to truncate") as excinfo:
        c.prepare_image(image, 4096, SOURCE)
    assert str(image) in str(excinfo.value)
    assert SOURCE in str(excinfo.value)
    assert image.read_bytes() == content


def test_prepare_image_none_missing(tmp_path: Path) -> None:
    image = tmp_path / "missing.img"
    with pytest.raises(ConfigError, match="does not exist") as excinfo:
        c.prepare_image(image, None, SOURCE)
    assert str(image) in str(excinfo.value)
    assert not image.exists()


def test_prepare_image_none_existing_untouched(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    content = os.urandom(5000)
    image.write_bytes(content)
    os.utime(image, ns=(1_000_000_000, 2_000_000_000))
    c.prepare_image(image, None, SOURCE)
    assert image.read_bytes() == content
    assert image.stat().st_mtime_ns == 2_000_000_000


def test_prepare_image_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        c.prepare_image(tmp_path, None, SOURCE)
    with pytest.raises(ConfigError) as excinfo:
        c.prepare_image(tmp_path, M, SOURCE)
    assert str(tmp_path) in str(excinfo.value)


# --------------------------------------------------------------------------------------
# 5. Machine validation, before any guest
# --------------------------------------------------------------------------------------


class _GuestReached(Exception):
    """Raised by the stand-in GuestProcess of the positive control."""

    def __init__(self, job: str, kernel_args: list[str]) -> None:
        super().__init__("a guest process was constructed")
        self.job = job
        self.kernel_args = kernel_args


def test_guard_is_wired(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Positive control: a valid configuration does reach _session.GuestProcess."""
    kernel = tmp_path / "linux.uml"
    kernel.write_text("")

    def fake_find_kernel(kernel_arg: object) -> Path:
        return kernel

    def fake_module_dir(kernel_arg: Path) -> Path:
        return tmp_path

    def fake_initramfs() -> Path:
        return tmp_path / "initramfs.cpio"

    class ReachedGuest:
        def __init__(self, kernel: Path, args: list[str], *, workdir: Path, **kw: object) -> None:
            raise _GuestReached((workdir / "job.sh").read_text(), args)

    monkeypatch.setattr(_machine, "find_kernel", fake_find_kernel)
    monkeypatch.setattr(_machine, "module_dir", fake_module_dir)
    monkeypatch.setattr(_session, "initramfs", fake_initramfs)
    monkeypatch.setattr(_session, "GuestProcess", ReachedGuest)
    machine = Machine(memory="1G", env={"A": "1"})
    with pytest.raises(_GuestReached) as excinfo:
        machine.run(["echo", "a b"], env={"B": "2"}, cwd="/tmp")
    assert command_body(["echo", "a b"], "/tmp", {"A": "1", "B": "2"}) in excinfo.value.job
    assert "mem=1024M" in excinfo.value.kernel_args
    assert machine.last_workdir is not None
    assert not machine.last_workdir.exists(), "the work directory must be removed"


def test_add_image_default_labels(tmp_path: Path) -> None:
    machine = Machine()
    assert machine.add_image(tmp_path / "a.img", size="1M") == f"{LABEL_DIR}/fakedisk-0"
    assert machine.add_image(tmp_path / "b.img", size=4096) == f"{LABEL_DIR}/fakedisk-1"
    assert machine.add_image(tmp_path / "c.img", size="1M", label="data") == f"{LABEL_DIR}/data"
    assert [i.label for i in machine.images] == ["fakedisk-0", "fakedisk-1", "data"]
    assert [i.path for i in machine.images] == [tmp_path / n for n in ("a.img", "b.img", "c.img")]
    assert (tmp_path / "a.img").stat().st_size == M
    assert (tmp_path / "b.img").stat().st_size == 4096


def test_add_image_existing_as_is(tmp_path: Path) -> None:
    image = tmp_path / "mine.img"
    image.write_bytes(b"keep me")
    machine = Machine()
    assert machine.add_image(image, label="mine") == f"{LABEL_DIR}/mine"
    assert image.read_bytes() == b"keep me"


def test_add_image_relative_path_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    machine = Machine()
    machine.add_image("rel.img", size="1M")
    assert machine.images[0].path == tmp_path / "rel.img"


def test_add_image_duplicate_label(tmp_path: Path) -> None:
    machine = Machine()
    machine.add_image(tmp_path / "a.img", size="1M", label="data")
    with pytest.raises(ConfigError, match=r"'data'.*already used"):
        machine.add_image(tmp_path / "b.img", size="1M", label="data")
    assert not (tmp_path / "b.img").exists(), "a refused image must not be created"
    # An explicit label may also collide with a later default one.
    machine.add_image(tmp_path / "c.img", size="1M", label="fakedisk-2")
    with pytest.raises(ConfigError, match="already used"):
        machine.add_image(tmp_path / "d.img", size="1M")
    assert len(machine.images) == 2


def test_add_image_same_file_twice(tmp_path: Path) -> None:
    machine = Machine()
    machine.add_image(tmp_path / "a.img", size="1M")
    with pytest.raises(ConfigError, match="already attached"):
        machine.add_image(tmp_path / "a.img", label="again")
    assert len(machine.images) == 1


def test_add_image_bad_label_or_size_creates_nothing(tmp_path: Path) -> None:
    machine = Machine()
    with pytest.raises(ConfigError, match="label='bad label'"):
        machine.add_image(tmp_path / "a.img", size="1M", label="bad label")
    with pytest.raises(ConfigError, match="size='many'") as excinfo:
        machine.add_image(tmp_path / "a.img", size="many")
    assert "add_image()" in str(excinfo.value)
    with pytest.raises(ConfigError, match="does not exist"):
        machine.add_image(tmp_path / "a.img")
    assert not (tmp_path / "a.img").exists()
    assert machine.images == ()


def test_seventeenth_image_refused(tmp_path: Path) -> None:
    machine = Machine()
    for i in range(16):
        assert machine.add_image(tmp_path / f"{i}.img", size=4096) == f"{LABEL_DIR}/fakedisk-{i}"
    with pytest.raises(ConfigError, match="16 disks"):
        machine.add_image(tmp_path / "16.img", size=4096)
    assert not (tmp_path / "16.img").exists()
    assert len(machine.images) == 16


def test_sixteen_images_and_scratch_refused(tmp_path: Path, no_guest: None) -> None:
    machine = Machine(scratch="64M")
    for i in range(16):
        machine.add_image(tmp_path / f"{i}.img", size=4096)
    with pytest.raises(ConfigError, match=r"scratch disk.*16 disks"):
        machine.run("true")


def test_add_volume(tmp_path: Path) -> None:
    machine = Machine()
    machine.add_volume(tmp_path)
    machine.add_volume(str(tmp_path), "/out", read_only=True)
    assert [(v.host, v.guest, v.read_only) for v in machine.volumes] == [
        (tmp_path, str(tmp_path), False),
        (tmp_path, "/out", True),
    ]


@pytest.mark.parametrize(
    ("make", "guest", "message"),
    [
        ("missing", None, "does not exist"),
        ("file", None, "not a directory"),
        ("dir", "relative/dir", "must be absolute"),
        ("dir", "/has space", "whitespace"),
        ("dir", "/", "over '/'"),
    ],
)
def test_add_volume_errors(tmp_path: Path, make: str, guest: str | None, message: str) -> None:
    host = tmp_path / "host"
    if make == "file":
        host.write_text("x")
    elif make == "dir":
        host.mkdir()
    machine = Machine()
    with pytest.raises(ConfigError, match=re.escape(message)) as excinfo:
        machine.add_volume(host, guest)
    assert "add_volume()" in str(excinfo.value)
    assert machine.volumes == ()


def test_bogus_backend(no_guest: None) -> None:
    with pytest.raises(ConfigError, match="backend='bogus'"):
        Machine(backend="bogus").run("true")


def test_bad_memory(no_guest: None) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Machine(memory="many").run("true")
    assert "memory='many'" in str(excinfo.value)
    assert "Machine()" in str(excinfo.value)
    machine = Machine()
    machine.memory = "-1G"
    with pytest.raises(ConfigError, match=re.escape("memory='-1G'")):
        machine.run(["true"])


def test_source_names_the_machine(no_guest: None) -> None:
    machine = Machine(memory="many")
    machine.source = "the fakemachine fixture of test_x.py::test_y"
    with pytest.raises(ConfigError, match=re.escape("test_x.py::test_y")):
        machine.run("true")


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("scratch", "many", "scratch='many'"),
        ("scratch", -1, "scratch=-1"),
        ("network", "yes", "network='yes'"),
        ("timeout", -1, "timeout=-1"),
        ("timeout", "forever", "timeout='forever'"),
    ],
)
def test_bad_attributes(no_guest: None, attribute: str, value: object, message: str) -> None:
    machine = Machine()
    setattr(machine, attribute, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        machine.run("true")


@pytest.mark.parametrize(
    "env",
    [{"1BAD": "x"}, {"A-B": "x"}, {"A=B": "x"}, {"": "x"}, {"A B": "x"}, {5: "x"}],
    ids=repr,
)
def test_bad_env_name(no_guest: None, env: dict[Any, str]) -> None:
    with pytest.raises(ConfigError, match="env name"):
        Machine(env=env).run("true")
    with pytest.raises(ConfigError, match="env name"):
        Machine().run("true", env=env)
    machine = Machine()
    machine.env.update(env)
    with pytest.raises(ConfigError, match="env name"):
        machine.run("true")


@pytest.mark.parametrize("value", [1, None, b"x", ["x"], "nul\0"], ids=repr)
def test_bad_env_value(no_guest: None, value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"env['GOOD']={value!r}")):
        Machine(env={"GOOD": value}).run("true")
    with pytest.raises(ConfigError, match=re.escape("env['GOOD']")):
        Machine().run("true", env={"GOOD": value})


@pytest.mark.parametrize(
    "command",
    [[], (), "nul\0byte", ["echo", "nul\0byte"], ["echo", 5], [None], 5, None, b"true"],
    ids=repr,
)
def test_bad_command(no_guest: None, command: Any) -> None:
    with pytest.raises(ConfigError, match="command"):
        Machine().run(command)


@pytest.mark.parametrize("cwd", ["relative", "/with space", ""])
def test_bad_cwd(no_guest: None, cwd: str) -> None:
    with pytest.raises(ConfigError, match="guest path"):
        Machine().run("true", cwd=cwd)


def test_bad_run_timeout(no_guest: None) -> None:
    with pytest.raises(ConfigError, match=re.escape("timeout=0")):
        Machine().run("true", timeout=0)


def test_run_result_is_completed_process() -> None:
    result = RunResult(["a"], 3, "out", "err", "console")
    assert isinstance(result, subprocess.CompletedProcess)
    assert (result.args, result.returncode, result.stdout, result.stderr, result.console) == (
        ["a"], 3, "out", "err", "console",
    )  # fmt: skip
    with pytest.raises(subprocess.CalledProcessError):
        result.check_returncode()


def test_not_in_fakemachine() -> None:
    assert in_fakemachine() is False


# --------------------------------------------------------------------------------------
# 6. command_body, run by the host's /bin/sh
# --------------------------------------------------------------------------------------

_SHOW = "import sys, json, os; print(json.dumps([sys.argv[1:], dict(os.environ), os.getcwd()]))"
TRICKY_ARGS = [
    "$s'n\\akes", "a b", "", "*", "$(echo x)", "`echo y`", "\n", "--", "-c", "'", '"',
    "\\", "$HOME", "${PATH}", "a;b", "a|b", "&", "~", "!", "\t", "\u2713", "x=y", "-l",
]  # fmt: skip


def _run_body(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", body], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30, check=False)  # fmt: skip


def _show(argv_tail: list[str], cwd: Path, env: dict[str, str]) -> tuple[Any, ...]:
    result = _run_body(command_body([sys.executable, "-c", _SHOW, *argv_tail], str(cwd), env))
    assert result.returncode == 0, result.stderr
    args, environ, pwd = json.loads(result.stdout)
    return args, environ, pwd


def test_command_body_argv_unchanged(tmp_path: Path) -> None:
    args, _, pwd = _show(TRICKY_ARGS, tmp_path, {})
    assert args == TRICKY_ARGS
    assert pwd == str(tmp_path)


def test_command_body_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKEMACHINE_SECRET", "do-not-leak")
    env = {"GREETING": "hello world", "WEIRD": "a 'b' \"c\" $HOME `x` \n\\", "EMPTY": ""}
    _, environ, _ = _show([], tmp_path, env)
    assert "FAKEMACHINE_SECRET" not in environ
    # The shell that execs the program exports PWD of its own accord; nothing else is added.
    assert environ.pop("PWD", str(tmp_path)) == str(tmp_path)
    assert environ == {"HOME": "/root", "PATH": GUEST_PATH, "LANG": "C.UTF-8", **env}


def test_command_body_env_overrides_defaults(tmp_path: Path) -> None:
    _, environ, _ = _show([], tmp_path, {"HOME": "/elsewhere", "LANG": "C"})
    assert environ["HOME"] == "/elsewhere"
    assert environ["LANG"] == "C"
    assert environ["PATH"] == GUEST_PATH


def test_command_body_tricky_cwd(tmp_path: Path) -> None:
    cwd = tmp_path / "dir with 'quote' and $dollar"
    cwd.mkdir()
    _, _, pwd = _show([], cwd, {})
    assert pwd == str(cwd)
    result = _run_body(command_body("pwd", str(cwd), {}))
    assert result.stdout == f"{cwd}\n"


def test_command_body_missing_cwd_fails(tmp_path: Path) -> None:
    result = _run_body(command_body(["true"], str(tmp_path / "missing"), {}))
    assert result.returncode != 0


def test_command_body_missing_command_127(tmp_path: Path) -> None:
    assert _run_body(command_body(["no-such-command-fm"], str(tmp_path), {})).returncode == 127
    assert _run_body(command_body("no-such-command-fm", str(tmp_path), {})).returncode == 127
    missing = str(tmp_path / "no-such-file")
    assert _run_body(command_body([missing, "x"], str(tmp_path), {})).returncode == 127


def test_command_body_exit_status(tmp_path: Path) -> None:
    assert _run_body(command_body("exit 3", str(tmp_path), {})).returncode == 3
    assert _run_body(command_body(["sh", "-c", "exit 5"], str(tmp_path), {})).returncode == 5
    assert _run_body(command_body(["false"], str(tmp_path), {})).returncode == 1


def test_command_body_shell_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKEMACHINE_SECRET", "do-not-leak")
    script = (
        "echo $HOME $GREETING; x=20; echo $((x + 1)) > out.txt; "
        "false || echo fallback; for w in a 'b c'; do echo \"<$w>\"; done; "
        'echo "[${FAKEMACHINE_SECRET-unset}]"; echo err >&2'
    )
    result = _run_body(command_body(script, str(tmp_path), {"GREETING": "hi there"}))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "/root hi there\nfallback\n<a>\n<b c>\n[unset]\n"
    assert result.stderr == "err\n"
    assert (tmp_path / "out.txt").read_text() == "21\n"


def test_command_body_argv_is_not_a_shell_string(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = _run_body(command_body(["echo", f"; touch {marker}", f"$(touch {marker})"],
                                    str(tmp_path), {}))  # fmt: skip
    assert result.stdout == f"; touch {marker} $(touch {marker})\n"
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# 7. report transport
# --------------------------------------------------------------------------------------

INNER_TESTS = """
import sys
import tempfile
import pytest

def test_pass(record_property):
    record_property("key", "value")
    record_property("number", 3)
    print("out-pass \u2713")
    sys.stderr.write("err-pass\\n")

def test_fail():
    print("out-fail")
    assert 1 + 1 == 3, "arith-broken"

def test_skip():
    pytest.skip("skip-reason")

@pytest.mark.xfail(reason="xfail-reason")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="xpass-reason")
def test_xpass():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("setup-broken")

def test_setup_error(broken):
    pass

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown-broken")

def test_teardown_error(bad_teardown):
    pass
"""


class _Recorder:
    """A plugin for the inner run: keeps each report and its serialization."""

    def __init__(self) -> None:
        self.reports: list[pytest.TestReport] = []
        self.serialized: list[dict[str, Any]] = []
        self.config: pytest.Config | None = None

    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        assert self.config is not None
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        assert isinstance(data, dict)
        self.reports.append(report)
        self.serialized.append(data)


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> _Recorder:
    pytester.makepyfile(test_inner=INNER_TESTS)
    recorder = _Recorder()
    reprec = pytester.inline_run("-p", "no:fakemachine", "-p", "no:cacheprovider",
                                 plugins=[recorder])  # fmt: skip
    reprec.assertoutcome(passed=3, failed=3, skipped=2)
    assert len(recorder.reports) == 7 * 3 - 1  # test_setup_error has no call phase
    return recorder


def _pairs(value: Iterable[Iterable[object]]) -> list[tuple[object, ...]]:
    """A list of pairs as pytest makes it, whatever JSON made of the pairs."""
    return [tuple(pair) for pair in value]


def _split_points(blob: bytes) -> list[int]:
    """Cut points that fall mid-line and inside a multi-byte UTF-8 character."""
    inside_char = blob.index("\u2713".encode()) + 1
    first_newline = blob.index(b"\n")
    points = {first_newline // 2, first_newline, first_newline + 1, inside_char}
    points.update(range(0, len(blob), 1013))
    return [*sorted(p for p in points if 0 < p < len(blob)), len(blob)]


def test_event_reader_chunks_and_rebuild(
    recorded: _Recorder, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    events = [
        {"event": "report", "nodeid": data["nodeid"], "report": data}
        for data in recorded.serialized
    ]
    lines = [json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events]
    lines.insert(3, b"\n")  # an empty line is ignored
    blob = b"".join(lines)
    assert "\u2713".encode() in blob

    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.read() == []  # no file yet
    got: list[dict[str, Any]] = []
    start = 0
    saw_partial = False
    for end in _split_points(blob):
        with open(path, "ab") as f:
            f.write(blob[start:end])
        new = reader.read()
        got.extend(new)
        complete = [line for line in blob[:end].split(b"\n")[:-1] if line.strip()]
        assert len(got) == len(complete), f"after {end} bytes"
        saw_partial = saw_partial or not blob[:end].endswith(b"\n")
        start = end
    assert saw_partial
    assert reader.read() == []
    assert got == json.loads(json.dumps(events))

    # rebuild() once per event, as the host does: pytest's deserializer consumes its input.
    reports = [rebuild(pytestconfig, event["report"]) for event in got]
    for original, report in zip(recorded.reports, reports):
        assert isinstance(report, pytest.TestReport)
        assert report.nodeid == original.nodeid
        assert report.when == original.when
        assert report.outcome == original.outcome
        # JSON turns tuples into lists: compare values here, types in the xfail tests below.
        assert tuple(report.location) == original.location
        assert report.longreprtext == original.longreprtext
        assert _pairs(report.sections) == original.sections
        assert _pairs(report.user_properties) == original.user_properties
        assert report.duration == original.duration
        assert report.keywords == original.keywords
        assert getattr(report, "wasxfail", None) == getattr(original, "wasxfail", None)
        assert pytestconfig.hook.pytest_report_teststatus(
            report=report, config=pytestconfig
        ) == pytestconfig.hook.pytest_report_teststatus(report=original, config=pytestconfig)

    rebuilt = {(r.nodeid.split("::")[-1], r.when): r for r in reports}
    passed = rebuilt["test_pass", "call"]
    assert passed.passed
    assert _pairs(passed.user_properties) == [("key", "value"), ("number", 3)]
    assert ("Captured stdout call", "out-pass \u2713\n") in _pairs(passed.sections)
    assert ("Captured stderr call", "err-pass\n") in _pairs(passed.sections)
    assert passed.duration > 0

    failed = rebuilt["test_fail", "call"]
    assert failed.failed
    assert "arith-broken" in failed.longreprtext
    assert "assert 1 + 1 == 3" in failed.longreprtext
    assert ("Captured stdout call", "out-fail\n") in _pairs(failed.sections)

    skipped = rebuilt["test_skip", "call"]
    assert skipped.skipped
    assert isinstance(skipped.longrepr, tuple)  # what the terminal's skip summary asserts
    assert skipped.longrepr[2] == "Skipped: skip-reason"

    xfailed = rebuilt["test_xfail", "call"]
    assert xfailed.skipped
    assert xfailed.wasxfail == "xfail-reason"
    xpassed = rebuilt["test_xpass", "call"]
    assert xpassed.passed
    assert xpassed.wasxfail == "xpass-reason"

    setup_error = rebuilt["test_setup_error", "setup"]
    assert setup_error.failed
    assert "setup-broken" in setup_error.longreprtext
    assert ("test_setup_error", "call") not in rebuilt

    teardown_error = rebuilt["test_teardown_error", "teardown"]
    assert teardown_error.failed
    assert "teardown-broken" in teardown_error.longreprtext
    assert rebuilt["test_teardown_error", "call"].passed


def test_event_reader_waits_for_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    path.write_bytes(b'{"event": "start", "nodeid": "a"}\n{"event": "do')
    assert reader.read() == [{"event": "start", "nodeid": "a"}]
    assert reader.read() == []
    with open(path, "ab") as f:
        f.write(b'ne", "exitstatus": 0}')
    assert reader.read() == []  # still no newline
    with open(path, "ab") as f:
        f.write(b"\n")
    assert reader.read() == [{"event": "done", "exitstatus": 0}]
    assert reader.read() == []


def test_rebuild_refuses_collect_reports(pytestconfig: pytest.Config) -> None:
    report = pytest.CollectReport("test_x.py", "passed", None, [])
    data = pytestconfig.hook.pytest_report_to_serializable(config=pytestconfig, report=report)
    with pytest.raises(TypeError, match="CollectReport"):
        rebuild(pytestconfig, data)


def test_rebuild_constructed_report(pytestconfig: pytest.Config) -> None:
    original = pytest.TestReport(
        "test_x.py::test_y", ("test_x.py", 3, "test_y"), {"test_y": 1}, "failed",
        "Traceback: boom", "call", sections=[("Captured stdout call", "hi\n")], duration=1.25,
        user_properties=[("k", "v")],
    )  # fmt: skip
    data = pytestconfig.hook.pytest_report_to_serializable(config=pytestconfig, report=original)
    report = rebuild(pytestconfig, json.loads(json.dumps(data)))
    assert report.failed
    assert report.longreprtext == "Traceback: boom"
    assert _pairs(report.sections) == [("Captured stdout call", "hi\n")]
    assert report.duration == 1.25
    assert _pairs(report.user_properties) == [("k", "v")]
    assert tuple(report.location) == ("test_x.py", 3, "test_y")


def test_rebuild_keeps_tuples(pytestconfig: pytest.Config) -> None:
    original = pytest.TestReport(
        "test_x.py::test_y", ("test_x.py", 3, "test_y"), {}, "skipped",
        ("test_x.py", 4, "Skipped: why"), "call", sections=[("Captured stdout call", "hi\n")],
        user_properties=[("k", "v")],
    )  # fmt: skip
    data = pytestconfig.hook.pytest_report_to_serializable(config=pytestconfig, report=original)
    report = rebuild(pytestconfig, json.loads(json.dumps(data)))
    assert report.longrepr == ("test_x.py", 4, "Skipped: why")
    assert isinstance(report.longrepr, tuple)
    assert report.location == ("test_x.py", 3, "test_y")
    assert report.sections == [("Captured stdout call", "hi\n")]
    assert report.user_properties == [("k", "v")]


ROUND_TRIP_CONFTEST = """
import json
import pytest
from pytest_fakemachine._transport import rebuild

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # What a marked test's reports go through: guest serialization, JSON, rebuild().
    report = yield
    config = item.config
    data = config.hook.pytest_report_to_serializable(config=config, report=report)
    return rebuild(config, json.loads(json.dumps(data)))
"""


def test_rebuilt_skip_in_short_summary(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ROUND_TRIP_CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        def test_skip():
            pytest.skip("skip-reason")
        """
    )
    result = pytester.runpytest("-p", "no:fakemachine", "-p", "no:cacheprovider", "-rs")
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_*.py:*: skip-reason"])
    result.assert_outcomes(skipped=1)
    assert result.ret == 0


# --------------------------------------------------------------------------------------
# 8. command-line and ini settings
# --------------------------------------------------------------------------------------


def _usage_error(result: pytest.RunResult) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "passed" not in result.stdout.str()


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("", ["--fakemachine-memory=many"],
         "ERROR: memory='many' from --fakemachine-memory: not a size*"),
        ("fakemachine_memory = many", [],
         "ERROR: memory='many' from ini option fakemachine_memory in *tox.ini: not a size*"),
        ("", ["--fakemachine-timeout=-1"],
         "ERROR: timeout='-1' from --fakemachine-timeout: must be more than zero"),
    ],
)  # fmt: skip
def test_bad_settings_are_usage_errors(
    pytester: pytest.Pytester, ini: str, args: list[str], expected: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    _usage_error(result)
    result.stderr.fnmatch_lines([expected])


def test_command_line_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nfakemachine_memory = 512M\nfakemachine_timeout = 30\n"
        "fakemachine_kernel = /opt/linux.uml\n"
    )
    settings = pytester.parseconfigure().stash[settings_key]
    assert (settings.memory, settings.timeout, settings.kernel) == (512, 30.0, "/opt/linux.uml")
    assert settings.backend == "auto"
    settings = pytester.parseconfigure(
        "--fakemachine-memory=1G", "--fakemachine-timeout=2.5", "--fakemachine-backend=uml"
    ).stash[settings_key]
    assert (settings.memory, settings.timeout, settings.backend) == (1024, 2.5, "uml")


def test_default_settings(pytester: pytest.Pytester) -> None:
    settings = pytester.parseconfigure().stash[settings_key]
    assert settings.memory == c.DEFAULT_MEMORY_MIB == 2048
    assert settings.timeout is None
    assert settings.kernel is None
    assert settings.backend == "auto"
    assert settings.show_boot is False
    assert settings.keep is False


def test_help_lists_options_in_their_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*(fakemachine):",
        "  --fakemachine-backend={auto,uml}",
        "*--fakemachine-memory=SIZE*",
        "*--fakemachine-timeout=SECONDS*",
        "*--fakemachine-kernel=PATH*",
        "*--fakemachine-show-boot*",
        "*--fakemachine-keep*",
    ])  # fmt: skip
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.endswith("(fakemachine):"))
    end = lines.index("", start)
    group = "\n".join(lines[start:end])
    for option in ("backend", "memory", "timeout", "kernel", "show-boot", "keep"):
        assert f"--fakemachine-{option}" in group
    result.stdout.fnmatch_lines(["*fakemachine_memory (string):*"])


def test_markers_lists_the_marker(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.fakemachine(images=None, volumes=None, *"])
    result.stdout.fnmatch_lines(["*scope='function'): run the test*"])


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("", ["--fakemachine-memory=2X"], "memory='2X' from --fakemachine-memory: not a size"),
        ("", ["--fakemachine-memory="], "memory='' from --fakemachine-memory: not a size"),
        ("", ["--fakemachine-timeout=0"], "timeout='0' from --fakemachine-timeout: must be"),
        ("fakemachine_timeout = never", [],
         "timeout='never' from ini option fakemachine_timeout in *tox.ini: expected seconds"),
        ("fakemachine_backend = bogus", [],
         "backend='bogus' from ini option fakemachine_backend in *tox.ini: expected auto or uml"),
        ("fakemachine_memory = 32M", [],
         "memory='32M' from ini option fakemachine_memory in *tox.ini: a guest needs at least 64M"),
    ],
)  # fmt: skip
def test_in_process_usage_errors(
    pytester: pytest.Pytester, ini: str, args: list[str], expected: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    with pytest.raises(pytest.UsageError) as excinfo:
        pytester.parseconfigure(*args)
    assert fnmatch.fnmatchcase(str(excinfo.value), expected + "*"), str(excinfo.value)


@pytest.mark.parametrize(
    ("tmpdir", "shm_free_mib", "tmp_free_mib", "expected"),
    [
        ("/somewhere", 64, 10_000, None),  # TMPDIR set: UML uses it, as the user chose
        ("", 4096, 10_000, None),  # /dev/shm holds all of memory=2048M
        ("", 64, 10_000, "/tmp"),  # Docker's 64 MiB /dev/shm: the temporary directory
        ("", 64, 32, None),  # nowhere better: stay, and let the BootError explain
    ],
)
def test_memory_dir_moves_guest_memory_only_when_dev_shm_cannot_hold_it(
    monkeypatch: pytest.MonkeyPatch,
    tmpdir: str,
    shm_free_mib: int,
    tmp_free_mib: int,
    expected: str | None,
) -> None:
    free = {_uml.SHM: shm_free_mib << 20, "/tmp": tmp_free_mib << 20}
    monkeypatch.setenv("TMPDIR", tmpdir)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: "/tmp")
    monkeypatch.setattr(_uml, "_free_bytes", lambda path: free[path])
    assert _uml.memory_dir(2048) == expected


@pytest.mark.parametrize(
    ("os_release", "ubuntu"),
    [
        ('PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\n', True),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', True),
        ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n', False),
        (None, False),
    ],
)
def test_ubuntu_is_told_where_user_mode_linux_comes_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, os_release: str | None, ubuntu: bool
) -> None:
    path = tmp_path / "os-release"
    if os_release is not None:
        path.write_text(os_release)
    assert _uml._on_ubuntu(str(path)) is ubuntu
    monkeypatch.setattr(_uml, "_on_ubuntu", lambda: ubuntu)
    for package in ("user-mode-linux", "libslirp-helper"):
        fix = _uml.apt_fix(package)
        assert (fix == f"sudo apt-get install {package}") is not ubuntu
        assert ("install Debian 12's" in fix) is ubuntu
    assert _uml.apt_fix("busybox") == "sudo apt-get install busybox"


@pytest.mark.parametrize(
    ("console_line", "full"),
    [
        ("[0.02] Bus error - the host /dev/shm or /tmp mount likely just ran out of space", True),
        # Seen when systemd, not the kernel, touched the page that did not fit.
        ("[0.26] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000007", True),
        ("[0.26] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009", False),
        ("[0.02] Kernel panic - not syncing: VFS: Unable to mount root fs", False),
    ],
)
def test_memory_file_full_is_read_off_the_console(console_line: str, full: bool) -> None:
    assert _uml.memory_file_full(f"Run /init as init process\n{console_line}\n") is full
