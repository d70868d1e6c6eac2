"""A marked test that ends the session: pytest.exit() in the guest, the
debugger's quit (pytest turns `q` into pytest.exit), and --pdb where the
guest's debugger cannot reach the user. Each ends as it would locally."""

from __future__ import annotations

import io
import sys

import pytest

pexpect = pytest.importorskip("pexpect", reason="the `test` extra installs it")


def test_pytest_exit_in_a_marked_test_stops_the_session(pytester: pytest.Pytester) -> None:
    ran = pytester.path / "ran"
    pytester.makepyfile(
        test_t=f"""
        import pytest

        @pytest.mark.fakemachine
        def test_exits():
            pytest.exit("bye", returncode=3)

        @pytest.mark.fakemachine  # booted ahead meanwhile: it must go too
        def test_after():
            open({str(ran)!r}, "w").close()
        """
    )
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*!!! _pytest.outcomes.Exit: bye !!!*"])
    result.stdout.no_fnmatch_line("*not collected*")
    assert result.ret == 3
    result.assert_outcomes()
    assert not ran.exists()


def test_quitting_the_debugger_stops_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_t="""
        import pytest

        @pytest.mark.fakemachine
        def test_fails():
            x = 41
            assert x == 42

        @pytest.mark.fakemachine
        def test_after():
            pass
        """
    )
    output = io.StringIO()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:cacheprovider", "--color=no", "--pdb", "test_t.py"],
        cwd=str(pytester.path),
        encoding="utf-8",
        timeout=120,
    )
    child.logfile_read = output
    try:
        child.expect(r"\(Pdb\) ")
        child.sendline("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    text = output.getvalue()
    # As locally: the failure, pytest's exit for the debugger's quit, status 2.
    assert "_pytest.outcomes.Exit: Quitting debugger" in text
    assert "1 failed in" in text
    assert "ERROR" not in text  # no teardown error
    assert "not collected" not in text
    assert "Linux version" not in text  # no guest console
    assert child.exitstatus == 2, text


def test_pdb_without_a_terminal_says_why_the_guests_debugger_did_not_start(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_t="""
        import pytest

        pytestmark = pytest.mark.fakemachine(scope="module")

        def test_fails():
            assert False

        def test_fails_too():
            assert False

        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--pdb")  # stdin: not a terminal
    line = (
        "fakemachine: --pdb: the debugger was not started in the guest of test_t.py::test_fails, "
        "nor will it be in other guests: *terminal*"
    )
    result.stdout.fnmatch_lines([line])
    assert result.stdout.str().count("fakemachine: --pdb") == 1
    result.assert_outcomes(failed=2, passed=1)
