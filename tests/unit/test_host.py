"""Unit tests of the host's hooks (runs/host.py) that need no guest: the
summary line on function-scoped guests that one module-scoped guest would
have replaced, counted from the reports as an xdist controller receives them."""

from __future__ import annotations

from typing import Literal

import pytest

from pytest_fakemachine.runs.dispatch import state_key
from pytest_fakemachine.runs.host import HostSession, _unshared_note

PLAIN = "module /s/test_a.py\0{}"
BIG = 'module /s/test_a.py\0{"memory": "1G"}'
OTHER = "module /s/test_b.py\0{}"


def _report(
    nodeid: str, when: Literal["setup", "call", "teardown"], seconds: float
) -> pytest.TestReport:
    return pytest.TestReport(nodeid, (nodeid, 0, nodeid), {}, "passed", None, when, [], seconds)


def test_a_workers_reports_carry_their_group_to_the_controller(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure()
    host = config.pluginmanager.get_plugin("fakemachine-host")
    assert isinstance(host, HostSession)
    state = config.stash[state_key]
    sent = [("test_a.py::one", PLAIN), ("test_a.py::two", PLAIN), ("test_a.py::big", BIG),
            ("test_b.py::alone", OTHER)]  # fmt: skip
    for nodeid, group in sent:
        phases: list[tuple[Literal["setup", "call", "teardown"], float]] = [
            ("setup", 1.5), ("call", 0.25), ("teardown", 0.25)]  # fmt: skip
        for when, seconds in phases:
            report = _report(nodeid, when, seconds)
            report.fakemachine_own_guest = group  # type: ignore[attr-defined]
            # As xdist moves it: serialized on the worker, rebuilt on the controller.
            data = config.hook.pytest_report_to_serializable(config=config, report=report)
            host.pytest_runtest_logreport(
                config.hook.pytest_report_from_serializable(config=config, data=data)
            )
    host.pytest_runtest_logreport(_report("test_c.py::shared", "call", 9.0))  # no group
    # Only test_a.py's two tests of one machine: big and alone had a guest of their own.
    assert _unshared_note(state) == (
        "fakemachine: 2 tests in one module booted a guest each (4.0 s in all) for the same "
        'machine; scope="module" on their marker (or fakemachine_defaults = scope=module) '
        "shares one guest per module"
    )
    state.own_guests[OTHER]["test_b.py::again"] = 2.0
    assert "4 tests in 2 modules booted a guest each (8.0 s in all)" in str(_unshared_note(state))


def test_no_line_when_no_module_had_two_guests_of_one_machine(pytester: pytest.Pytester) -> None:
    state = pytester.parseconfigure().stash[state_key]
    assert _unshared_note(state) is None
    state.own_guests = {PLAIN: {"test_a.py::one": 2.0}, BIG: {"test_a.py::big": 2.0}}
    assert _unshared_note(state) is None
