"""Symlinks in real guests: a volume given as a link, by each way in (Machine,
marker, command line), and a marked test's tmp_path replaced by a link."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fakemachine import Machine

NOBODY = 65534
CONTENT = "through the link\n"
# Reads the volume at the path asked and at the link's own path (no guest path
# given), writes through the first, and says what the guest has at the second.
SHOW = 'cat /mnt/l/f "$1/f" && touch /mnt/l/written && stat -c %F "$1"'
MACHINE_SCRIPT = """
import sys
from pytest_fakemachine import Machine
link, show = sys.argv[1:]
machine = Machine()
machine.add_volume(link, "/mnt/l")
machine.add_volume(link)
result = machine.run(["sh", "-c", show, "sh", link])
sys.stdout.write(result.stdout + result.stderr)
sys.exit(result.returncode)
"""


@pytest.fixture
def linked() -> Iterator[Path]:
    """``base/link``, a symlink to the directory ``base/data`` holding ``f``,
    which another uid can read and write (pytest's tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="fm-links-test-"))
    try:
        base.chmod(0o755)
        (base / "data").mkdir()
        (base / "data" / "f").write_text(CONTENT)
        (base / "link").symlink_to(base / "data")
        yield base / "link"
    finally:
        shutil.rmtree(base)


def _written_through(link: Path, output: str) -> None:
    """What ``SHOW`` gave: the file twice, and a directory at the link's path."""
    assert output == CONTENT * 2 + "directory\n", output
    assert (link.parent / "data" / "written").is_file()


@pytest.mark.parametrize("user", ["this user", "an ordinary user"])
def test_a_machines_volume_given_as_a_link(linked: Path, user: str) -> None:
    if user == "this user":
        machine = Machine()
        machine.add_volume(linked, "/mnt/l")
        machine.add_volume(str(linked))
        result = machine.run(["sh", "-c", SHOW, "sh", str(linked)])
        assert result.returncode == 0, result.stderr
        _written_through(linked, result.stdout)
        return
    proc = _as_nobody(linked, [sys.executable, "-c", MACHINE_SCRIPT, str(linked), SHOW])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _written_through(linked, proc.stdout)


def _as_nobody(linked: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` run as an ordinary user (the data and a temporary directory theirs)."""
    if os.geteuid() != 0:
        pytest.skip("drops to another uid, which needs root")
    base = linked.parent
    for path in (base / "data", base / "data" / "f"):
        os.chown(path, NOBODY, NOBODY)
    tmp = base / "tmp"
    tmp.mkdir()
    os.chown(tmp, NOBODY, NOBODY)
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp), "HOME": "/nonexistent",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        cwd=base, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def test_a_marked_volume_given_as_a_link_and_a_tmp_path_made_a_link(
    pytester: pytest.Pytester, linked: Path
) -> None:
    """One guest for both: the volume mounts where asked; the link that
    replaced a tmp_path is not followed, and nothing of / comes back."""
    pytester.makepyfile(
        test_t=f"""
        import os, shutil, subprocess, pytest

        LINK = {str(linked)!r}
        pytestmark = pytest.mark.fakemachine(volumes=[(LINK, "/mnt/l"), LINK], scope="module")

        def test_volume():
            show = subprocess.run(["sh", "-c", {SHOW!r}, "sh", LINK], capture_output=True,
                                  text=True, check=True)
            assert show.stdout == {CONTENT * 2!r} + "directory\\n"

        def test_tmp_path_made_a_link(tmp_path):
            shutil.rmtree(tmp_path)
            os.symlink("/", tmp_path)
            assert False, "keep my tmp_path"
        """
    )
    result = pytester.runpytest_subprocess("--basetemp=basetemp", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: keep my tmp_path*"])
    assert (linked.parent / "data" / "written").is_file()
    basetemp = pytester.path / "basetemp"
    kept = sorted(str(p.relative_to(basetemp)) for p in basetemp.rglob("*"))
    assert kept == [], kept[:20]  # not even an empty test_tmp_path_made_a_link0


@pytest.mark.parametrize("user", ["this user", "an ordinary user"])
def test_a_command_lines_volume_given_as_a_link(linked: Path, user: str) -> None:
    command = Path(sys.executable).parent / "pytest-fakemachine"
    argv = [str(command), "-v", f"{linked}:/mnt/l", "-v", str(linked), "--",
            "sh", "-c", SHOW, "sh", str(linked)]  # fmt: skip
    if user == "an ordinary user":
        proc = _as_nobody(linked, argv)
    else:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _written_through(linked, proc.stdout)
