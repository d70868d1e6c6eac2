"""Unit tests: no guest boots here, so the folder passes on a host that cannot
start one, in seconds. A test that would launch a guest fails instead."""

from __future__ import annotations

import pytest

from pytest_fakemachine.backend.uml import process


@pytest.fixture(autouse=True)
def _no_guest_boots(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test launched a guest: it belongs in tests/guest")

    monkeypatch.setattr(process.GuestProcess, "start", refuse)
