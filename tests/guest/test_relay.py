"""The debugger of a marked test, in the guest, on the user's terminal (a
pseudo-terminal here) through the terminal relay (``_terminal``): --pdb at a
failure, breakpoint() with -s."""

from __future__ import annotations

import sys

import pytest

pexpect = pytest.importorskip("pexpect", reason="the `test` extra installs it")


def test_pdb_and_breakpoint_in_the_guest_talk_to_the_terminal(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_t="""
        import pytest
        from pytest_fakemachine import in_fakemachine

        pytestmark = pytest.mark.fakemachine(scope="module")

        def test_fails():
            x = 41
            assert x == 42

        def test_breaks():
            y = 5
            breakpoint()
            y = 6
            breakpoint()  # right after the first: its end and this start come together
            assert y == 6
        """
    )
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:cacheprovider", "--pdb", "-s", "test_t.py"],
        cwd=str(pytester.path),
        encoding="utf-8",
        timeout=120,
        dimensions=(30, 100),
    )
    try:
        child.expect("entering PDB")  # after the failure's traceback, as locally
        child.expect(r"\(Pdb\) ")
        child.sendline("p x + 1, in_fakemachine()")
        child.expect(r"\(42, True\)")
        child.expect(r"\(Pdb\) ")
        child.sendline("c")
        child.expect(r"test_t.py\(\d+\)test_breaks\(\)")
        child.expect(r"\(Pdb\) ")
        # A real terminal in the guest: readline edits the line (Ctrl-A: to its start).
        child.send("* 10\x01p y \r")
        child.expect("50")
        child.expect(r"\(Pdb\) ")
        child.sendline("p __import__('sys').stdin.isatty(), __import__('os').get_terminal_size()")
        child.expect(r"\(True, os.terminal_size\(columns=100, lines=30\)\)")
        child.sendline("c")
        child.expect(r"\(Pdb\) ")
        child.sendline("p y + 100")
        child.expect("106")
        child.sendline("c")
        child.expect("1 failed, 1 passed")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1


def test_pdb_with_pytest_capturing_fds(pytester: pytest.Pytester) -> None:
    """--pdb alone (pytest's default --capture=fd puts /dev/null on fd 0 while
    tests run): the guest's debugger still gets the terminal."""
    pytester.makepyfile(
        test_t="""
        import pytest

        @pytest.mark.fakemachine
        def test_fails():
            print("captured-output")
            x = 41
            assert x == 42
        """
    )
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:cacheprovider", "--pdb", "test_t.py"],
        cwd=str(pytester.path),
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect("captured-output")  # pytest shows the captured output first
        child.expect(r"\(Pdb\) ")
        child.sendline("p x + 1")
        child.expect("42")
        child.sendline("c")
        child.expect("1 failed")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1
