"""Marks every test of the real suite for a guest when the benchmark asks.

``FMBENCH_SCOPE=module`` (or ``function``) in the host's environment adds
``@pytest.mark.fakemachine(scope=...)`` to every test, as a suite would mark
them; unset (the host row, or the guest's own pytest, whose environment is
clean), nothing is marked. A marker, not ``--fakemachine-all``, so that older
versions of the plugin (the benchmark's "before" tree) run the same suite.
With ``FMBENCH_TIMING=PATH``, each test phase's start and stop go to PATH.
"""

from __future__ import annotations

import json
import os
import time

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scope = os.environ.get("FMBENCH_SCOPE")
    if scope:
        for item in items:
            item.add_marker(pytest.mark.fakemachine(scope=scope))


def _record(**entry: object) -> None:
    # FMBENCH_TIMING names a JSON-lines file (the benchmark's); the guest's
    # pytest never has it (its environment is clean), so only the host writes.
    path = os.environ.get("FMBENCH_TIMING")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def pytest_sessionstart() -> None:
    _record(event="sessionstart", time=time.time())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # start and stop are the clock of the machine that ran the phase: in a
    # guest they exclude the boot the plugin adds to the first setup's duration.
    _record(event="report", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
            start=report.start, stop=report.stop)  # fmt: skip


def pytest_sessionfinish() -> None:
    _record(event="sessionfinish", time=time.time())
