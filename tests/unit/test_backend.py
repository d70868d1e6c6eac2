"""The backend seam (backend/): the registry, the serial lines' wiring, and what
the UML backend makes of a boot (its layout and kernel command line)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_fakemachine import ConfigError, Machine
from pytest_fakemachine import backend as backends
from pytest_fakemachine.backend.base import (
    GO_LINE,
    STDERR_LINE,
    TERMINAL_LINE,
    BootSpec,
    Line,
    Prepared,
)
from pytest_fakemachine.backend.lines import Wiring
from pytest_fakemachine.backend.uml.boot import UmlLayout, kernel_args


def test_auto_and_uml_are_the_uml_backend_and_others_a_config_error() -> None:
    assert backends.get("auto", "here").name == "uml"
    assert backends.get("uml", "here").name == "uml"
    with pytest.raises(ConfigError, match=r"backend='xen' from here: expected one of auto, uml"):
        backends.get("xen", "here")
    with pytest.raises(ConfigError, match=r"backend='xen' from Machine\(\)"):
        Machine("xen").session()


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def test_wiring_gives_each_line_the_guests_ends_and_closes_them_once_launched() -> None:
    wiring = Wiring()
    write = wiring.into_guest(GO_LINE)
    read = wiring.out_of_guest(STDERR_LINE)
    to_guest, from_guest = wiring.both_ways(TERMINAL_LINE)
    try:
        go, err, term = wiring.lines
        assert (go.number, go.from_guest) == (GO_LINE, None)
        assert (err.number, err.to_guest) == (STDERR_LINE, None)
        assert term.number == TERMINAL_LINE and len(term.fds) == 2
        guest_ends = [fd for line in wiring.lines for fd in line.fds]
        assert all(_is_pipe(fd) for fd in [*guest_ends, write, read, to_guest, from_guest])
        wiring.launched()
        for fd in guest_ends:
            with pytest.raises(OSError):
                os.fstat(fd)
        assert _is_pipe(write)  # ours stay until the end of the run
    finally:
        wiring.close()
    with pytest.raises(OSError):
        os.fstat(write)


def test_the_uml_kernel_command_line(tmp_path: Path) -> None:
    prepared = Prepared(Path("/k/linux.uml"), None, Path("/usr/lib/modules"), ("seccomp=auto",))
    spec = BootSpec(
        workdir=tmp_path, memory_mib=512, disks=(tmp_path / "a.img", tmp_path / "b.img"),
        network=False, lines=(Line(1, to_guest=7, from_guest=8), Line(6, to_guest=9)),
        kernel_args=("quiet",),
    )  # fmt: skip
    args = kernel_args(prepared, spec, Path("/c/initramfs.cpio"), "fakemachine.service")
    assert args[:2] == ["mem=512M", "initrd=/c/initramfs.cpio"]
    assert f"ubd0={tmp_path}/disk0" in args and f"ubd1={tmp_path}/disk1" in args
    assert "ssl1=fd:7,fd:8" in args and "ssl6=fd:9,null" in args
    assert f"fakemachine.work={tmp_path}" in args and "systemd.unit=fakemachine.service" in args
    assert args[-2:] == ["seccomp=auto", "quiet"]  # the kernel's own, then the user's, last


def test_the_uml_layout() -> None:
    layout = UmlLayout()
    share = layout.share("/home/u/data", "/data", read_only=True)
    assert (share.source, share.fstype, share.options) == ("none", "hostfs", "ro,/home/u/data")
    assert layout.disk(0) == "ubda" and layout.disk(2) == "ubdc"
    assert layout.line_device(GO_LINE) == "/dev/ttyS6"
    assert "$FAKEMACHINE_WORK" in layout.work_mount()
