"""A pytest plugin that only adds the marker: every collected test runs in a guest.

For running a third-party suite unmodified through pytest-fakemachine:
``PYTHONPATH=scripts pytest -p fakemachine_mark_all``. All tests share one
guest (``scope="session"``), in pytest's order.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.fakemachine(scope="session"))
