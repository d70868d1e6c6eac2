"""The interactive root shell of ``pytest-fakemachine`` through a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pexpect  # type: ignore[import-untyped]

CLI = str(Path(sys.executable).parent / "pytest-fakemachine")


def test_interactive_root_shell_through_a_pseudo_terminal() -> None:
    shell = pexpect.spawn(CLI, ["-m", "512"], timeout=120, dimensions=(30, 100), env={
        **os.environ, "TERM": "xterm"})  # fmt: skip
    shell.logfile_read = log = io.BytesIO()
    try:
        prompt = "root@fakemachine:/scratch# "
        shell.expect_exact(prompt)
        shell.sendline("echo $TERM $(id -u) $(stty size) $(tty); set -o | grep -c 'monitor.*on'")
        shell.expect_exact("xterm 0 30 100 /dev/ttyS1\r\n1\r\n")  # job control is on
        shell.expect_exact(prompt)
        # Line editing: the shell's readline gets the keys (Ctrl-A: start of line).
        shell.send("cho edited\x01e\r")
        shell.expect_exact("edited\r\n")
        shell.expect_exact(prompt)
        shell.sendline("sh -c 'echo sleeping; exec sleep 600'")
        shell.expect_exact("sleeping\r\n")
        shell.sendcontrol("c")  # reaches the guest's sleep, not the guest
        shell.expect_exact(prompt)
        shell.sendline("echo after-sleep=$?")
        shell.expect_exact("after-sleep=130\r\n")
        shell.expect_exact(prompt)
        shell.setwinsize(40, 120)
        shell.sendline("trap 'echo got-winch' WINCH; stty size")
        shell.expect_exact("40 120\r\n")
        shell.expect_exact(prompt)
        shell.setwinsize(41, 121)  # bash hears the change (SIGWINCH)
        shell.expect_exact("got-winch")
        shell.sendline("stty size; exit 7")
        shell.expect_exact("41 121\r\n")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
        print(log.getvalue().decode(errors="replace"))
    assert shell.exitstatus == 7
