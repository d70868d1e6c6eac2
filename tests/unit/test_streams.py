"""The command line's streams on the host side (``_streams``): guest output
out, piped stdin in as spooled chunks, against a stand-in for the guest's
loop of ``_templates.CLI_STDIN`` (the real guest: tests/test_cli.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pytest_fakemachine._terminal import write_all
from pytest_fakemachine.cli.streams import CHUNK_MAX, IN_FLIGHT, copy_out, spool_stdin


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        assert byte, "the line ended without the end marker"
        line += byte
    return line


def guest_loop(spool: Path, line: int, out: list[bytes]) -> None:
    """What the guest does: for each announced length, copy chunk N and truncate it."""
    number = 0
    while (length := int(read_line(line))) > 0:
        number += 1
        chunk = spool / str(number)
        data = chunk.read_bytes()
        assert len(data) == length
        out.append(data)
        chunk.write_bytes(b"")


def wait_for(predicate: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.01)


def test_spool_carries_every_byte_in_chunks_and_an_end(tmp_path: Path) -> None:
    src_r, src_w = os.pipe()
    line_r, line_w = os.pipe()
    ready = threading.Event()
    spooler = threading.Thread(target=spool_stdin, args=(src_r, tmp_path, line_w, ready.is_set))
    spooler.start()
    data = bytes(range(256)) * 64 + os.urandom(CHUNK_MAX + 12345)  # NUL, ^C, ^D, \r, ...

    def write() -> None:
        write_all(src_w, data)
        os.close(src_w)

    writer = threading.Thread(target=write)
    writer.start()
    os.set_blocking(line_r, False)
    with pytest.raises(BlockingIOError):  # nothing is announced before the guest reads
        os.read(line_r, 1)
    os.set_blocking(line_r, True)
    ready.set()
    out: list[bytes] = []
    guest_loop(tmp_path, line_r, out)
    spooler.join(timeout=30)
    writer.join(timeout=30)
    assert b"".join(out) == data
    assert len(out) >= 2 and max(map(len, out)) <= CHUNK_MAX
    for fd in (src_r, line_r, line_w):
        os.close(fd)


def test_spool_sends_what_comes_at_once(tmp_path: Path) -> None:
    """A line written to stdin reaches the guest while stdin stays open."""
    src_r, src_w = os.pipe()
    line_r, line_w = os.pipe()
    spooler = threading.Thread(target=spool_stdin, args=(src_r, tmp_path, line_w, lambda: True))
    spooler.start()
    os.write(src_w, b"a\n")
    assert read_line(line_r) == b"2\n"  # stdin is still open: no end of it waited for
    assert (tmp_path / "1").read_bytes() == b"a\n"
    os.close(src_w)
    assert read_line(line_r) == b"0\n"
    spooler.join(timeout=30)
    for fd in (src_r, line_r, line_w):
        os.close(fd)


def test_spool_keeps_at_most_in_flight_chunks_and_deletes_consumed_ones(tmp_path: Path) -> None:
    src_r, src_w = os.pipe()
    line_r, line_w = os.pipe()
    stop = threading.Event()
    spooler = threading.Thread(
        target=spool_stdin, args=(src_r, tmp_path, line_w, lambda: True, stop.is_set)
    )
    spooler.start()
    for number in range(1, IN_FLIGHT + 1):  # one chunk per write, each waited for
        os.write(src_w, b"piece %d\n" % number)
        wait_for((tmp_path / str(number)).exists)
    os.write(src_w, b"one too many\n")
    time.sleep(0.3)  # time to go wrong: no chunk beyond IN_FLIGHT while none is consumed
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(n) for n in range(1, IN_FLIGHT + 1)]
    (tmp_path / "1").write_bytes(b"")  # the guest took chunk 1
    wait_for((tmp_path / str(IN_FLIGHT + 1)).exists)
    assert (tmp_path / str(IN_FLIGHT + 1)).read_bytes() == b"one too many\n"
    assert not (tmp_path / "1").exists()  # deleted once consumed
    stop.set()  # the guest is gone: the spool stops waiting
    os.write(src_w, b"more\n")
    spooler.join(timeout=30)
    assert not spooler.is_alive()
    for fd in (src_r, src_w, line_r, line_w):
        os.close(fd)


def test_spool_gives_up_when_the_guest_is_gone_before_reading(tmp_path: Path) -> None:
    src_r, src_w = os.pipe()
    line_r, line_w = os.pipe()
    spool_stdin(src_r, tmp_path, line_w, ready=lambda: False, gone=lambda: True)
    os.close(line_w)
    assert read_all(line_r) == b""
    assert list(tmp_path.iterdir()) == []
    for fd in (src_r, src_w, line_r):
        os.close(fd)


def test_copy_out_drains_the_guest_when_the_host_side_is_closed() -> None:
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    os.close(dst_r)  # as `pytest-fakemachine -- yes | head -1` closes our stdout
    copier = threading.Thread(target=copy_out, args=(src_r, dst_w))
    copier.start()
    os.write(src_w, b"x" * 200_000)  # more than a pipe holds: it must be drained
    os.close(src_w)
    copier.join(timeout=30)
    assert not copier.is_alive()
    os.close(src_r)
    os.close(dst_w)


def test_copy_out_tells_the_guest_once_that_the_host_side_is_closed() -> None:
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    os.close(dst_r)
    told: list[str] = []
    copier = threading.Thread(target=copy_out, args=(src_r, dst_w, lambda: told.append("told")))
    copier.start()
    for _ in range(3):  # three reads, three writes into the closed pipe
        os.write(src_w, b"y\n" * 10)
        time.sleep(0.05)
    os.close(src_w)
    copier.join(timeout=30)
    assert not copier.is_alive()
    # Once: the guest's writer then ends as a broken pipe's would (CLI_STREAMS).
    assert told == ["told"]
    os.close(src_r)
    os.close(dst_w)
