"""Shared test support: pytester, and a check that no test leaves a guest behind."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Set
from pathlib import Path

import pytest

from pytest_fakemachine.backend import leftovers, uml
from pytest_fakemachine.runs.dispatch import state_key

pytest_plugins = ["pytester"]

# Installed for tests/test_with_plugins.py; every guest of an inner pytest run
# would import them (host plugins load in the guest). Other tests block them.
OPTIONAL_PLUGINS = ("rerunfailures", "timeout", "pytest_cov")


@pytest.fixture(autouse=True)
def _block_optional_plugins(request: pytest.FixtureRequest) -> None:
    if "pytester" in request.fixturenames and not request.node.get_closest_marker("uses_plugins"):
        # After pytester's own set-up, which clears PYTEST_ADDOPTS.
        request.getfixturevalue("pytester")
        monkeypatch = request.getfixturevalue("monkeypatch")
        blocked = " ".join(f"-p no:{name}" for name in OPTIONAL_PLUGINS)
        monkeypatch.setenv("PYTEST_ADDOPTS", blocked)


def wait_for_no_leftovers(
    owner: int | None, seconds: float = 5.0, ignore: Set[int] = frozenset()
) -> list[int]:
    """Pids of guests (and slirp helpers) ``owner`` started that still run after ``seconds``.

    ``owner=None`` looks for orphans: guests whose starting process is gone.
    ``ignore``: process groups of guests meant to run on (booted ahead).
    """
    deadline = time.monotonic() + seconds
    while (pids := _not_in(ignore, leftovers(owner))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def _booted_ahead(config: pytest.Config) -> set[int]:
    """Process groups of the guests this session booted ahead for later tests:
    they rightly outlive the test under way (examples run without xdist)."""
    state = config.stash.get(state_key, None)
    return set() if state is None or state.ahead is None else state.ahead.process_groups()


def _not_in(groups: Set[int], pids: list[int]) -> list[int]:
    found = []
    for pid in pids:
        try:
            if os.getpgid(pid) not in groups:
                found.append(pid)
        except OSError:  # gone meanwhile
            continue
    return found


@pytest.fixture(autouse=True)
def _no_guest_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    orphans_before = set(leftovers(None))  # one test's leak must not fail the rest
    yield
    ahead = _booted_ahead(request.config)
    pids = wait_for_no_leftovers(os.getpid(), ignore=ahead)
    assert not pids, f"guest processes left running after the test: {pids}"
    deadline = time.monotonic() + 5
    while (orphans := set(leftovers(None)) - orphans_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not orphans, f"guest processes outlived the process that started them: {orphans}"


@pytest.fixture
def no_guest(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if anything constructs a guest process."""

    class ForbiddenGuest:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pytest.fail("a guest process was constructed", pytrace=False)

    monkeypatch.setattr(uml, "UmlProcess", ForbiddenGuest)
    yield


@pytest.fixture
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tempfile.gettempdir() of this test's own, so other guests running
    meanwhile (other xdist workers, other users of the machine) cannot disturb a
    check for leftover work directories."""
    path = tmp_path / "tempdir"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    assert tempfile.gettempdir() == str(path)
    return path
