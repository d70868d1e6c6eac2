"""Unit tests of booting ahead: the CPU share, the machine fingerprint, the setting."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pytest_fakemachine import Machine
from pytest_fakemachine._settings import settings_key
from pytest_fakemachine.backend.base import GO_LINE
from pytest_fakemachine.backend.uml.boot import UmlLayout
from pytest_fakemachine.runs.ahead import Ahead, BootAhead, cpu_share, fingerprint
from pytest_fakemachine.runs.go import GoLine


@pytest.mark.parametrize(("workers", "share"), [(None, 4), ("1", 4), ("2", 2), ("3", 1), ("8", 1)])
def test_cpu_share_is_a_workers_part_of_the_cpus(
    monkeypatch: pytest.MonkeyPatch, workers: str | None, share: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    if workers is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    assert cpu_share() == share


def _machine(image_dir: Path, **kwargs: object) -> Machine:
    machine = Machine(**kwargs)  # type: ignore[arg-type]
    machine.add_image(image_dir / "0.img", "1M", label="data")
    machine.add_volume(image_dir.parent, "/data")
    machine.env["A"] = "1"
    return machine


def test_machines_that_boot_alike_have_one_fingerprint(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    booted = fingerprint(_machine(one), one)
    # Images made for the test count by name and size, wherever they are.
    assert fingerprint(_machine(two), two) == booted
    for change in ({"memory": "1G"}, {"network": True}, {"timeout": 5}, {"boot_timeout": 9}):
        assert fingerprint(_machine(two, **change), two) != booted, change
    changed = _machine(one)
    changed.env["A"] = "2"
    assert fingerprint(changed, one) != booted
    bigger = _machine(two)
    os.truncate(two / "0.img", 2 << 20)
    assert fingerprint(bigger, two) != booted
    users = Machine()
    users.add_image(one / "0.img", label="data")  # the same file, a user's (not in image_dir)
    users.add_volume(tmp_path, "/data")
    users.env["A"] = "1"
    assert fingerprint(users, two) != booted


def test_the_go_line_is_a_serial_line_on_a_pipe() -> None:
    line = GoLine()
    try:
        (wired,) = line.lines
        assert (wired.number, wired.from_guest) == (GO_LINE, None)
        assert os.fstat(wired.to_guest or -1).st_mode & 0o170000 == 0o010000  # a pipe
        spec = line.spec(UmlLayout())
        assert spec == {"line": "/dev/ttyS6", "waiting": "/run/fakemachine/waiting"}
        line.release()  # no guest waits yet: nothing is sent
        assert line.wanted and not line.sent
    finally:
        line.close()


def test_boot_ahead_is_on_unless_the_option_or_ini_says_off(pytester: pytest.Pytester) -> None:
    assert pytester.parseconfigure().stash[settings_key].boot_ahead is True
    config = pytester.parseconfigure("--fakemachine-boot-ahead=off")
    assert config.stash[settings_key].boot_ahead is False
    pytester.makeini("[pytest]\nfakemachine_boot_ahead = false\n")
    assert pytester.parseconfigure().stash[settings_key].boot_ahead is False
    config = pytester.parseconfigure("--fakemachine-boot-ahead=on")
    assert config.stash[settings_key].boot_ahead is True
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--fakemachine-boot-ahead={on,off}*", "*fakemachine_boot_ahead*"])


class _BootingGuest:
    """A guest booted ahead that is still booting when its test's turn comes."""

    def exited(self) -> bool:
        return False

    def __init__(self) -> None:
        self.waits = 0

    def wait(self, timeout: float) -> None:
        self.waits += 1
        if self.waits > 100:  # 2 s of 20 ms waits: the booster was never ticked
            raise AssertionError("the turn waited for the guest without booting others ahead")

    def kill(self) -> None:
        raise AssertionError("a guest that reaches its wait in time is not killed")


def test_while_a_guest_finishes_booting_at_its_turn_the_next_ones_boot_ahead(
    tmp_path: Path,
) -> None:
    # The turn waits for the guest to reach its wait (one that dies on the way
    # must count as gone); meanwhile the booster must go on booting the next
    # tests' guests, or booting ahead goes one guest at a time.
    ticks: list[int] = []
    booted = Machine()
    run = SimpleNamespace(
        guest=_BootingGuest(), go=SimpleNamespace(waiting=lambda: len(ticks) >= 3),
        machine=booted, image_dir=tmp_path, take_over=lambda new: None,
    )  # fmt: skip
    new = SimpleNamespace(
        machine=Machine(), image_dir=tmp_path, tick=lambda: ticks.append(1),
        on_outcome=lambda outcome: None, close=lambda graceful: None,
    )  # fmt: skip
    ahead = Ahead(cast(Any, None), cast(Any, run), fingerprint(booted, tmp_path))
    booster = BootAhead(2, lambda item: cast(Any, None))
    assert booster.hand_over(ahead, cast(Any, new)) is cast(Any, run)
    assert len(ticks) == 3
    assert (booster.hits, booster.misses) == (1, 0)
