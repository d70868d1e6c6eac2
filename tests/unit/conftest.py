"""Unit tests: no guest boots here, so the folder passes on a host that cannot
start one, in seconds. A test that would launch a guest fails instead."""

from __future__ import annotations

import pytest

from pytest_fakemachine import backend
from pytest_fakemachine.backend import process


@pytest.fixture(autouse=True)
def _no_guest_boots(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test launched a guest: it belongs in tests/guest")

    monkeypatch.setattr(process.GuestProcess, "start", refuse)
    # auto would ask whether KVM runs a guest here: a boot, where QEMU is installed.
    monkeypatch.setattr(backend, "auto_choice", lambda: ("uml", "the unit tests' choice"))
