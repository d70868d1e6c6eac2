"""Symlinks where the host reads or writes: a volume given as a link, a test's
tmp_path replaced by one, links planted where a kept tmp_path is unpacked, and
one in place of the cache's lock file or fallback directory."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fakemachine import BackendUnavailable, ConfigError
from pytest_fakemachine import _config as c
from pytest_fakemachine.guest.pack import pack_regular_files
from pytest_fakemachine.image import cache as _cache
from pytest_fakemachine.runs.transport import unpack_kept

SOURCE = "add_volume() of Machine()"

# --------------------------------------------------------------------------------------
# 1. a volume given as a symlink mounts the directory it leads to
# --------------------------------------------------------------------------------------


def test_a_volume_through_a_link_is_its_target_at_the_path_given(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    same_path = c.check_volume(link, None, False, SOURCE)
    assert (same_path.host, same_path.guest) == (target, str(link))
    elsewhere = c.check_volume(str(link), "/mnt/l", True, SOURCE)
    assert (elsewhere.host, elsewhere.guest, elsewhere.read_only) == (target, "/mnt/l", True)
    (tmp_path / "sub").symlink_to(tmp_path)  # a link on the way, not at the end
    through = c.check_volume(tmp_path / "sub" / "data", None, False, SOURCE)
    assert (through.host, through.guest) == (target, str(tmp_path / "sub" / "data"))


@pytest.mark.parametrize(("target", "why"), [
    ("/etc", "'/etc' is a system directory of the guest"),
    ("/", "'/' is a system directory of the guest"),
    ("/usr/share", "'/usr/share' is at or under /usr"),
    ("/var/run", "'/run' is a system directory of the guest"),  # the host's link too
])  # fmt: skip
def test_a_link_to_a_system_directory_is_refused_as_its_target_would_be(
    tmp_path: Path, target: str, why: str
) -> None:
    link = tmp_path / "link"
    link.symlink_to(target)
    resolved = os.path.realpath(target)
    with pytest.raises(ConfigError) as info:
        c.check_volume(link, None, False, SOURCE)
    message = str(info.value)
    assert message.startswith(f"volume '{link}' (a symlink to '{resolved}') from {SOURCE}: ")
    assert why in message
    with pytest.raises(ConfigError, match=r"system directory|at or under|mounted over"):
        c.check_volume(target, None, False, SOURCE)  # as given itself
    # At a guest path of its own, as the target itself may be.
    assert c.check_volume(link, "/mnt/l", False, SOURCE).host == Path(resolved)
    assert c.check_volume(resolved, "/mnt/l", False, SOURCE).host == Path(resolved)


def test_a_volume_linked_to_a_file_or_nowhere_is_refused_by_its_name(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "to-file").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=f"volume '{tmp_path}/to-file' from .*: not a dir"):
        c.check_volume(tmp_path / "to-file", "/mnt/l", False, SOURCE)
    with pytest.raises(ConfigError, match=f"volume '{tmp_path}/dangling' from .*: does not"):
        c.check_volume(tmp_path / "dangling", "/mnt/l", False, SOURCE)


# --------------------------------------------------------------------------------------
# 2. the guest packs no link: not even a tmp_path that is one
# --------------------------------------------------------------------------------------


def test_a_tmp_path_replaced_by_a_link_packs_nothing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "etc").mkdir(parents=True)
    (elsewhere / "etc" / "shadow").write_text("secret")
    source = tmp_path / "test_x0"
    source.symlink_to(elsewhere)
    work = tmp_path / "work"
    work.mkdir()
    pack_regular_files(str(source), str(work), "test_x0")
    assert list(work.iterdir()) == []
    unpack_kept(work, "test_x0")
    assert list(work.iterdir()) == []


def test_links_below_a_tmp_path_are_not_packed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_text("secret")
    source = tmp_path / "test_x0"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "kept").write_text("kept")
    (source / "dir-link").symlink_to(tmp_path / "elsewhere")
    (source / "sub" / "file-link").symlink_to(tmp_path / "elsewhere" / "secret")
    work = tmp_path / "work"
    work.mkdir()
    pack_regular_files(str(source), str(work), "test_x0")
    with tarfile.open(work / "test_x0.tar") as tar:
        assert sorted(tar.getnames()) == [".", "sub", "sub/kept"]


# --------------------------------------------------------------------------------------
# 3. unpacking on the host: nothing through a link the guest planted
# --------------------------------------------------------------------------------------


def _archive(path: Path, members: list[tuple[str, int]]) -> None:
    """``path``: a tar of ``(name, mode)``s, a directory where the name ends in "/"."""
    with tarfile.open(path, "w") as tar:
        for name, mode in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mode = mode
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(b"from the guest")
                tar.addfile(info, io.BytesIO(b"from the guest"))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory of the host's, with a file, that no unpacking may touch."""
    path = tmp_path / "outside"
    path.mkdir(mode=0o700)
    (path / "file").write_text("the host's")
    (path / "file").chmod(0o600)
    return path


def _untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["file"]
    assert (outside / "file").read_text() == "the host's"
    assert stat.S_IMODE((outside / "file").stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700


@pytest.mark.parametrize("plant", ["the target", "a directory below", "a file"])
def test_unpacking_writes_nothing_through_a_planted_link(
    tmp_path: Path, outside: Path, plant: str
) -> None:
    work = tmp_path / "work"
    (work / "t0").mkdir(parents=True)
    members = [("./", 0o755), ("kept", 0o644), ("file", 0o4777), ("sub/", 0o777),
               ("sub/file", 0o777), ("sub/new", 0o644)]  # fmt: skip
    _archive(work / "t0.tar", members)
    if plant == "the target":
        (work / "t0").rmdir()
        (work / "t0").symlink_to(outside)
    elif plant == "a directory below":
        (work / "t0" / "sub").symlink_to(outside)
    else:
        (work / "t0" / "file").symlink_to(outside / "file")
    unpack_kept(work, "t0")
    _untouched(outside)
    assert not (work / "t0.tar").exists()
    if plant != "the target":
        assert (work / "t0" / "kept").read_text() == "from the guest"


def test_unpacking_drops_setuid_setgid_sticky_and_others_write(tmp_path: Path) -> None:
    _archive(tmp_path / "t0.tar", [("./", 0o1777), ("suid", 0o4755), ("sgid", 0o2775),
                                   ("plain", 0o666), ("private", 0o400), ("d/", 0o3777),
                                   ("d/x", 0o6750)])  # fmt: skip
    unpack_kept(tmp_path, "t0")
    kept = tmp_path / "t0"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [kept, *kept.rglob("*")]}
    assert modes == {"t0": 0o755, "suid": 0o755, "sgid": 0o755, "plain": 0o644,
                     "private": 0o600, "d": 0o755, "x": 0o750}  # fmt: skip


@pytest.mark.parametrize("name", ["../escaped", "..", "a/b", ""])
def test_unpacking_refuses_a_name_that_leaves_the_directory(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work" / "tmp_path"
    work.mkdir(parents=True)
    _archive(tmp_path / "work" / "escaped.tar", [("file", 0o644)])
    _archive(work / "ok.tar", [("file", 0o644)])
    unpack_kept(work, name)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["escaped.tar", "tmp_path"]
    assert sorted(p.name for p in work.iterdir()) == ["ok.tar"]


def test_unpacking_reads_no_archive_through_a_link(tmp_path: Path, outside: Path) -> None:
    _archive(outside / "real.tar", [("file", 0o644)])
    (tmp_path / "t0.tar").symlink_to(outside / "real.tar")
    unpack_kept(tmp_path, "t0")
    assert not (tmp_path / "t0").exists()
    assert (outside / "real.tar").is_file()


# --------------------------------------------------------------------------------------
# 4. the cache: a link for its lock file, or for its fallback directory
# --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache of this test's own, and a temporary directory for the fallback."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(_cache, "_verified", {})
    monkeypatch.setattr(_cache, "_note", [])
    yield tmp_path / "cache" / "pytest-fakemachine"


def _store(directory: Path) -> Path:
    path = directory / "initramfs-test.cpio"
    _cache.stored(path, lambda: b"archive", "initramfs-*.cpio", "initramfs")
    return path


def test_a_symlink_for_the_lock_file_is_replaced_not_followed(
    fresh_cache: Path, outside: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    directory = _cache.cache_dir()
    assert directory == fresh_cache
    lock = directory / "build.lock"
    lock.symlink_to(outside / "file")
    for _ in range(2):  # this run and every later one
        path = _store(directory)
        assert path.read_bytes() == b"archive"
        path.unlink()
    assert lock.is_file() and not lock.is_symlink()
    _untouched(outside)
    assert capfd.readouterr().err.count(
        f"pytest-fakemachine: warning: {lock} is a symlink (to '{outside}/file'), where the "
        "cache's lock file belongs; removed it"
    ) == 1  # fmt: skip


def test_a_lock_file_that_is_no_file_says_what_to_remove(fresh_cache: Path) -> None:
    directory = _cache.cache_dir()
    (directory / "build.lock").mkdir()
    with pytest.raises(BackendUnavailable) as info:
        _store(directory)
    assert str(info.value) == (
        f"cannot lock the cache {directory}: {directory}/build.lock is not a regular file, "
        "where the cache's lock file belongs; remove it"
    )


def test_a_link_for_the_lock_of_a_shared_directory_is_left_alone(
    tmp_path: Path, outside: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # not the user's alone: whoever planted the link may come back
    (shared / "build.lock").symlink_to(outside / "file")
    with pytest.raises(BackendUnavailable, match=r"is a symlink .*; remove it"):
        _store(shared)
    assert (shared / "build.lock").is_symlink()
    _untouched(outside)


def test_a_symlinked_fallback_directory_is_reported_as_a_link(
    fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null/cache")
    fallback = tmp_path / "tmp" / f"pytest-fakemachine-{os.geteuid()}"
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    fallback.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BackendUnavailable) as info:
        _cache.cache_dir()
    assert (
        f"and {fallback} is a symlink (to '{tmp_path}/elsewhere'), which is not a directory: "
        "remove the link; set XDG_CACHE_HOME"
    ) in str(info.value)
