"""Host side of the report transport: read the guest's events, rebuild reports.

Reports cross the guest boundary only as pytest's own serialization
(``pytest_report_to_serializable`` in the guest, ``pytest_report_from_serializable``
here). When the guest cannot deliver a test's reports, :func:`failure_reports`
makes the ones pytest would have made, failing the phase that was under way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from _pytest.runner import CallInfo

__all__ = ["EventReader", "failure_reports", "rebuild", "skip_reports"]

CONSOLE_SECTION = "fakemachine console"


class EventReader:
    """Reads the JSON-lines event file incrementally as the guest appends to it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unterminated line is still being written
        events = []
        for line in lines:
            if line.strip():
                events.append(json.loads(line))
        return events


def rebuild(config: pytest.Config, data: dict[str, Any]) -> pytest.TestReport:
    if isinstance(data.get("longrepr"), list):
        # A skip's (path, lineno, reason) tuple: JSON made it a list, pytest wants a tuple.
        data = {**data, "longrepr": tuple(data["longrepr"])}
    report = config.hook.pytest_report_from_serializable(config=config, data=data)
    if not isinstance(report, pytest.TestReport):
        raise TypeError(f"the guest sent a {type(report).__name__}, not a TestReport")
    # JSON has no tuples: restore the ones pytest and plugins compare and hash.
    report.location = tuple(report.location)  # type: ignore[assignment]
    report.sections = [tuple(s) for s in report.sections]  # type: ignore[misc]
    report.user_properties = [tuple(p) for p in report.user_properties]  # type: ignore[misc]
    return report


def _fail(message: str) -> Callable[[], NoReturn]:
    def fail() -> NoReturn:
        pytest.fail(message, pytrace=False)

    return fail


def failure_reports(
    item: pytest.Item, received: list[pytest.TestReport], message: str, console: str = ""
) -> list[pytest.TestReport]:
    """The reports still owed for ``item``: the phase under way fails with ``message``.

    Without a setup report the test never started (an error in setup); with a
    passed setup the call fails; a teardown report always closes the test.
    """
    done = {r.when for r in received}
    if "teardown" in done:
        return []
    reports = []
    if "setup" not in done:
        when = "setup"
    elif "call" not in done and all(r.passed for r in received):
        when = "call"
    else:
        when = "teardown"
    call = CallInfo.from_call(_fail(message), when=when)  # type: ignore[arg-type]
    failed: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
    if console:
        failed.sections.append((CONSOLE_SECTION, console))
    reports.append(failed)
    if when != "teardown":
        ok = CallInfo.from_call(lambda: None, when="teardown")
        reports.append(item.ihook.pytest_runtest_makereport(item=item, call=ok))
    return reports


def skip_reports(item: pytest.Item, reason: str) -> list[pytest.TestReport]:
    """The reports of a test skipped on the host before any guest booted."""

    def skip() -> NoReturn:
        pytest.skip(reason)

    setup = CallInfo.from_call(skip, when="setup")
    teardown = CallInfo.from_call(lambda: None, when="teardown")
    return [
        item.ihook.pytest_runtest_makereport(item=item, call=setup),
        item.ihook.pytest_runtest_makereport(item=item, call=teardown),
    ]
