"""The initramfs cache: where it lives, when it is trusted, and what an unusable one does.

An installed plugin must never break a session: an environment that cannot
hold the cache falls back to a private temporary directory, and if even that
fails, the tests that need a guest skip (auto) or error (uml) with the reason.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fakemachine import BackendUnavailable, Machine
from pytest_fakemachine.backend.uml.boot import UmlLayout
from pytest_fakemachine.image import cache as _cache
from pytest_fakemachine.image import initramfs as _initramfs

NOBODY = 65534
PLAIN_AND_GUEST_TESTS = """
def test_plain():
    pass

def test_guest(fakemachine):
    assert fakemachine.run("echo hi").stdout == "hi\\n"
"""


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache of this test's own, and a temporary directory for the fallback."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(_initramfs, "_memo", {})
    monkeypatch.setattr(_cache, "_verified", {})
    monkeypatch.setattr(_cache, "_note", [])
    yield tmp_path / "cache" / "pytest-fakemachine"


def _fallback(tmp_path: Path) -> Path:
    return tmp_path / "tmp" / f"pytest-fakemachine-{os.geteuid()}"


# --------------------------------------------------------------------------------------
# 1. an unusable cache never breaks a session
# --------------------------------------------------------------------------------------


def _world_readable_dir() -> Path:
    """A directory another uid can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fm-cache-test-"))
    path.chmod(0o755)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another uid, which needs root")
@pytest.mark.parametrize("cache", ["HOME=/nonexistent", "read-only XDG_CACHE_HOME"])
def test_an_ordinary_user_without_a_usable_cache_runs_the_suite(cache: str) -> None:
    """As uid 65534 (CI's ordinary user), where root would succeed: the plain
    test passes, and the guest test boots from a cache in the temporary directory."""
    base = _world_readable_dir()
    try:
        (base / "test_suite.py").write_text(PLAIN_AND_GUEST_TESTS)
        tmp = base / "tmp"
        tmp.mkdir()
        os.chown(tmp, NOBODY, NOBODY)
        env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp), "HOME": "/nonexistent",
               "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
        if cache != "HOME=/nonexistent":
            read_only = base / "cache"
            read_only.mkdir(mode=0o755)  # root's: uid 65534 may not write in it
            env["XDG_CACHE_HOME"] = str(read_only)
        proc = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_suite.py"],
            cwd=base, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output
        assert "INTERNALERROR" not in output
        assert "2 passed" in output, output
        assert f"using {tmp}/pytest-fakemachine-{NOBODY} instead" in output
    finally:
        shutil.rmtree(base)


def _no_usable_cache(pytester: pytest.Pytester) -> dict[str, str]:
    """Both the usual cache and the fallback fail, for root too."""
    tmp = pytester.path / "tmp"
    tmp.mkdir()
    (tmp / f"pytest-fakemachine-{os.geteuid()}").write_text("not a directory")
    return {"XDG_CACHE_HOME": "/dev/null/cache", "TMPDIR": str(tmp)}


@pytest.mark.parametrize(("backend", "outcomes"), [
    ("auto", {"passed": 1, "skipped": 1}),
    ("uml", {"passed": 1, "errors": 1}),
])  # fmt: skip
def test_no_usable_cache_skips_or_errors_the_guest_tests_only(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, backend: str,
    outcomes: dict[str, int],
) -> None:  # fmt: skip
    for name, value in _no_usable_cache(pytester).items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(PLAIN_AND_GUEST_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA",
                                           f"--fakemachine-backend={backend}")  # fmt: skip
    result.assert_outcomes(**outcomes)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([
        f"fakemachine: backend {backend}, unavailable (no usable cache directory*",
        "*/dev/null/cache/pytest-fakemachine is unusable: Not a directory*set XDG_CACHE_HOME*",
    ])  # fmt: skip


def test_machine_run_without_a_usable_cache_says_why(
    fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null/cache")
    _fallback(tmp_path).write_text("not a directory")
    with pytest.raises(BackendUnavailable, match="no usable cache directory") as info:
        Machine().run("true")
    assert f"{_fallback(tmp_path)} is not a directory" in str(info.value)
    assert os.listdir(tmp_path / "tmp") == [_fallback(tmp_path).name]  # no work dir left


# --------------------------------------------------------------------------------------
# 2. a cache that is not the user's alone is not used; a damaged archive is rebuilt
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["writable by others", "owned by another user"])
def test_a_cache_directory_others_could_write_is_not_used(
    fresh_cache: Path, tmp_path: Path, how: str, capfd: pytest.CaptureFixture[str]
) -> None:
    if how == "owned by another user" and os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    fresh_cache.mkdir(parents=True)
    if how == "writable by others":
        fresh_cache.chmod(0o777)
        expected = "writable by group or others (mode 777)"
    else:
        os.chown(fresh_cache, NOBODY, NOBODY)  # what sudo -E meets in the user's home
        expected = f"owned by uid {NOBODY}, not by this user"
    path = _initramfs.initramfs(UmlLayout())
    assert path.parent == _fallback(tmp_path)
    assert os.listdir(fresh_cache) == []
    assert _fallback(tmp_path).stat().st_mode & 0o777 == 0o700
    note = _cache.cache_note()
    assert note is not None and expected in note and str(_fallback(tmp_path)) in note
    assert (
        f"pytest-fakemachine: warning: the cache {fresh_cache} is {expected}"
        in capfd.readouterr().err
    )


@pytest.mark.parametrize("plant", ["symlink", "other user's directory"])
def test_a_planted_fallback_directory_is_refused(
    fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    if plant == "other user's directory" and os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null/cache")
    fallback = _fallback(tmp_path)
    if plant == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        fallback.symlink_to(target)
        expected = "is not a directory"
    else:
        fallback.mkdir(mode=0o700)
        os.chown(fallback, NOBODY, NOBODY)
        expected = f"is owned by uid {NOBODY}"
    with pytest.raises(BackendUnavailable, match=expected):
        _initramfs.initramfs(UmlLayout())


@pytest.mark.parametrize("damage", ["truncated", "emptied", "one byte changed", "no record",
                                    "owned by another user", "writable by others"])  # fmt: skip
def test_a_damaged_or_foreign_archive_is_rebuilt(
    fresh_cache: Path, damage: str, capfd: pytest.CaptureFixture[str]
) -> None:
    if damage == "owned by another user" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = _initramfs.initramfs(UmlLayout())
    good = path.read_bytes()
    if damage == "truncated":
        os.truncate(path, len(good) // 2)
    elif damage == "emptied":
        os.truncate(path, 0)
    elif damage == "one byte changed":
        with open(path, "r+b") as f:
            f.seek(len(good) // 2)
            f.write(bytes([good[len(good) // 2] ^ 1]))
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))  # a new stamp
    elif damage == "no record":  # written by an older version
        (path.parent / (path.stem + ".sha256")).unlink()
    elif damage == "owned by another user":
        os.chown(path, NOBODY, NOBODY)
    else:
        path.chmod(0o666)
    capfd.readouterr()
    assert _initramfs.initramfs(UmlLayout()) == path
    assert path.read_bytes() == good
    assert path.stat().st_uid == os.geteuid()
    assert path.stat().st_mode & 0o777 == 0o600
    warned = "rebuilding it" in capfd.readouterr().err
    assert warned == (damage != "no record")


def test_a_guest_boots_after_its_cached_archive_was_truncated(fresh_cache: Path) -> None:
    os.truncate(_initramfs.initramfs(UmlLayout()), 1000)  # the kernel would panic: no working init
    result = Machine().run("echo booted")
    assert result.stdout == "booted\n"


def _doctor(env: dict[str, str]) -> str:
    # No kernels setup.sh unpacked: the doctor would boot guests to compare them.
    env = {"XDG_DATA_HOME": "/nonexistent", **env}
    proc = subprocess.run([sys.executable, "-m", "pytest_fakemachine", "doctor"],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _has_line(output: str, pattern: str) -> bool:
    return any(fnmatch.fnmatch(line, pattern) for line in output.splitlines())


def test_doctor_checks_the_archive(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    out = _doctor(env)
    assert _has_line(out, f"ok      initramfs ({tmp_path}/*.cpio, built)"), out
    (archive,) = (tmp_path / "pytest-fakemachine").glob("initramfs-*.cpio")
    out = _doctor(env)
    assert _has_line(out, f"ok      initramfs ({archive}, checked)"), out
    os.truncate(archive, 4096)
    out = _doctor(env)
    assert _has_line(out, f"warning initramfs ({archive}): it holds 4096 bytes where * were "
                          "written (damaged); rebuilt it"), out  # fmt: skip
    out = _doctor(env)
    assert _has_line(out, f"ok      initramfs ({archive}, checked)"), out


def test_doctor_says_where_the_cache_went(tmp_path: Path) -> None:
    out = _doctor({"XDG_CACHE_HOME": "/dev/null/cache", "TMPDIR": str(tmp_path)})
    assert (
        "warning initramfs cache directory: the cache /dev/null/cache/pytest-fakemachine is "
        f"unusable: Not a directory; using {tmp_path}/pytest-fakemachine-{os.geteuid()} instead"
    ) in out
