"""``--fakemachine-shell-on-fail``: a root shell in a failed marked test's guest,
driven through a real pseudo-terminal, and the reasons it is off."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pexpect  # type: ignore[import-untyped]
import pytest

TESTS = """
import pytest

pytestmark = pytest.mark.fakemachine(scope="module")

@pytest.fixture
def thing(tmp_path):
    (tmp_path / "marker").write_text("left-by-test")
    yield
    (tmp_path.parent / "teardown-ran").write_text("yes")

def test_fails(thing, tmp_path):
    assert 1 == 2

def test_after_the_shell(tmp_path):
    assert (tmp_path.parent / "teardown-ran").read_text() == "yes"

def test_fails_again():
    assert False
"""


def test_shell_opens_at_the_failure_before_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shared=TESTS)
    session = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:cacheprovider", "--fakemachine-shell-on-fail", "-q"],
        cwd=str(pytester.path), timeout=180, dimensions=(30, 100),
    )  # fmt: skip
    session.logfile_read = log = io.BytesIO()
    try:
        session.expect_exact("test_shared.py::test_fails failed; a root shell in its guest")
        prompt = "/test_fails0# "
        session.expect_exact(prompt)  # in the test's tmp_path
        session.sendline("cat marker; test -e ../teardown-ran || echo ' no-teardown-yet'")
        session.expect_exact("left-by-test no-teardown-yet\r\n")
        session.expect_exact(prompt)
        session.sendline("sh -c 'echo sleeping; exec sleep 600'")
        session.expect_exact("sleeping\r\n")
        session.sendcontrol("c")  # the guest's sleep ends, not the guest
        session.expect_exact(prompt)
        session.setwinsize(40, 120)
        session.sendline("stty size")
        session.expect_exact("40 120\r\n")
        session.sendline("exit")
        session.expect_exact("the shell has ended; the session goes on.")
        # A second shell in the same guest, on the same line (which the first hung up).
        session.expect_exact("test_shared.py::test_fails_again failed; a root shell in its guest")
        session.expect_exact("# ")
        session.sendline("echo second-$((20 + 1))")
        session.expect_exact("second-21\r\n")
        session.sendline("exit")
        session.expect_exact("the shell has ended; the session goes on.")
        session.expect_exact("2 failed, 1 passed")  # the shared guest ran the next tests
        session.expect(pexpect.EOF)
    finally:
        session.close(force=True)
        print(log.getvalue().decode(errors="replace"))
    assert session.exitstatus == 1


def test_shell_on_fail_says_why_it_is_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_host(): pass")
    # No controlling terminal: a session of its own.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--fakemachine-shell-on-fail"],
        cwd=pytester.path, capture_output=True, text=True, start_new_session=True, check=False,
        stdin=subprocess.DEVNULL, env={**os.environ, "PYTEST_ADDOPTS": ""},
    )  # fmt: skip
    assert "fakemachine: --fakemachine-shell-on-fail is off: pytest has no terminal" in (
        result.stdout
    )
    xdist = pytester.runpytest_subprocess("--fakemachine-shell-on-fail", "-n", "1")
    xdist.stdout.fnmatch_lines(["*--fakemachine-shell-on-fail is off: pytest-xdist workers*"])


@pytest.mark.uses_plugins  # pytest-rerunfailures
def test_under_reruns_the_shell_opens_once_on_the_last_attempt(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_flaky="""
        import pytest

        @pytest.mark.fakemachine  # function scope: each attempt boots a fresh guest
        def test_always_fails(request, tmp_path):
            (tmp_path / "attempt").write_text(str(request.node.execution_count))
            assert False
        """
    )
    session = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:cacheprovider",
         "--fakemachine-shell-on-fail", "--reruns", "2", "-q"],
        cwd=str(pytester.path), timeout=180, dimensions=(30, 100),
    )  # fmt: skip
    session.logfile_read = log = io.BytesIO()
    banner = b"test_flaky.py::test_always_fails failed; a root shell in its guest"
    try:
        session.expect_exact(banner.decode())
        session.expect_exact("# ")
        session.sendline("echo attempt-$(cat attempt)")
        session.expect_exact("attempt-3\r\n")  # the third attempt: two reruns went before
        session.sendline("exit")
        session.expect_exact("the shell has ended; the session goes on.")
        session.expect_exact("1 failed, 2 rerun")
        session.expect(pexpect.EOF)
    finally:
        session.close(force=True)
        print(log.getvalue().decode(errors="replace"))
    assert log.getvalue().count(banner) == 1
    assert session.exitstatus == 1
