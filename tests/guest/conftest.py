"""The guest tests test UML unless they name a backend: on a host where
``auto`` takes another (a CI runner with KVM, say), they are pinned to ``uml``,
in this process and in pytester's runs, so such a host does not move them.
Tests of another backend name it (``backend="qemu"``, ``-m qemu``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from pytest_fakemachine import backend

T = TypeVar("T")
_PIN: list[str] = []  # pytest's arguments for pytester's runs, where pinned


def pytest_configure(config: pytest.Config) -> None:
    name, why = backend.auto_choice()
    if name != "uml":
        reason = f"pinned by this project's tests (auto: {name}: {why})"
        backend.auto_choice = functools.cache(lambda: ("uml", reason))
        _PIN[:] = ["-o", "fakemachine_backend=uml"]


@pytest.fixture(autouse=True)
def _pin_uml_in_pytester(request: pytest.FixtureRequest) -> None:
    if not _PIN or "pytester" not in request.fixturenames:
        return
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    # Where every run ends up: runpytest goes through one of them.
    for method in ("runpytest_subprocess", "inline_run"):
        monkeypatch.setattr(pytester, method, _pinned(getattr(pytester, method)))


def _pinned(run: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(run)
    def pinned_run(*args: object, **kwargs: Any) -> T:
        # A run without the plugin would warn of an unknown setting.
        without = any(str(a) in ("no:fakemachine", "-pno:fakemachine") for a in args)
        return run(*args, *([] if without else _PIN), **kwargs)

    return pinned_run
