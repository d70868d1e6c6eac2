"""Unit tests of configuration checks: sizes, memory, timeouts, labels, paths, volumes, images."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

import pytest

from pytest_fakemachine import (
    BackendUnavailable,
    BootError,
    ConfigError,
    FakeMachineError,
    GuestTimeout,
)
from pytest_fakemachine import _config as c

SOURCE = "the unit test's source"


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
