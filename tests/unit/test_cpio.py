"""Unit tests of the cpio (newc) writer and of what the initramfs holds; no guest boots."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_fakemachine import BackendUnavailable
from pytest_fakemachine.backend.uml.boot import UmlLayout
from pytest_fakemachine.image import initramfs as _initramfs
from pytest_fakemachine.image import templates as _templates
from pytest_fakemachine.image.cpio import CpioWriter

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
        _initramfs._collect_inputs(UmlLayout())


def test_initramfs_build_removes_only_archives_unused_for_a_week(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_initramfs, "_memo", {})
    monkeypatch.setattr(_initramfs, "_collect_inputs", lambda layout: NO_HOST_FILES)
    directory = tmp_path / "pytest-fakemachine"
    directory.mkdir()
    stale, recent, other = (directory / f"initramfs-{n}.cpio" for n in ("old", "new", "x"))
    for path in (stale, recent, other):
        path.write_bytes(b"07070")
    week = 7 * 24 * 3600
    os.utime(stale, (time.time() - week - 60, time.time() - week - 60))
    os.utime(recent, (time.time() - week + 3600, time.time() - 2 * week))  # read lately
    built = _initramfs.initramfs(UmlLayout())
    assert built.parent == directory and built.exists()
    assert not stale.exists()
    assert recent.exists() and other.exists()
