"""The terminal relay (_terminal) on pipes and pseudo-terminals."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
from collections.abc import Iterator

import pytest

from pytest_fakemachine._terminal import TerminalRelay, window_size

# <asm-generic/ioctls.h>, which Python's termios lacks: unlock a pty, and get its number.
TIOCSPTLCK, TIOCGPTN = 0x40045431, 0x80045430


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal that does not become our controlling terminal (pty.openpty's
    would, in a session leader; closing it would then SIGHUP the test run)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    (number,) = struct.unpack("i", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    yield master, slave
    os.close(master)
    os.close(slave)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_window_size(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    set_size(master, 33, 111)
    assert window_size(slave) == (33, 111)
    r, w = os.pipe()
    assert window_size(r) == (24, 80)  # not a terminal
    os.close(r)
    os.close(w)


def test_terminal_relay_is_raw_both_ways_resizes_and_restores(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    to_guest_r, to_guest_w = os.pipe()
    from_guest_r, from_guest_w = os.pipe()
    sizes: list[tuple[int, int]] = []
    before = termios.tcgetattr(slave)
    with TerminalRelay(slave, slave, to_guest_w, from_guest_r, lambda r, c: sizes.append((r, c))):
        assert not termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ISIG | termios.ECHO)
        os.write(master, b"ls\x03\x04\x1a\r")  # Ctrl-C/D/Z are bytes for the guest here
        got = b""
        while len(got) < 6:
            got += os.read(to_guest_r, 100)
        assert got == b"ls\x03\x04\x1a\r"
        os.write(from_guest_w, b"\x1b[1mprompt# ")
        assert os.read(master, 100) == b"\x1b[1mprompt# "
        set_size(master, 50, 132)
        os.kill(os.getpid(), signal.SIGWINCH)  # the handler runs in this, the main, thread
        os.close(from_guest_w)  # the guest powered off: its output ends
    assert sizes == [(50, 132)]
    assert termios.tcgetattr(slave) == before
    for fd in (to_guest_r, to_guest_w, from_guest_r):
        os.close(fd)


def test_terminal_relay_stops_while_the_guest_lives_on(terminal: tuple[int, int]) -> None:
    """pdb or a shell in a test's guest: the relay ends, the guest does not,
    and nothing of the guest's later output goes to the terminal."""
    master, slave = terminal
    to_guest_r, to_guest_w = os.pipe()
    from_guest_r, from_guest_w = os.pipe()
    with TerminalRelay(slave, slave, to_guest_w, from_guest_r, lambda r, c: None):
        os.write(from_guest_w, b"last words")
    assert os.read(master, 100) == b"last words"
    os.write(from_guest_w, b"later")  # the guest goes on; the relay is over
    os.set_blocking(from_guest_r, False)  # a copy still running would have taken it
    assert os.read(from_guest_r, 100) == b"later"
    for fd in (to_guest_r, to_guest_w, from_guest_r, from_guest_w):
        os.close(fd)
