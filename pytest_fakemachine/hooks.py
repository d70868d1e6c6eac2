"""Hook specifications of pytest-fakemachine (registered in ``pytest_addhooks``).

Implement them in a ``conftest.py`` or a plugin, marked optional (pytest's way
for another plugin's hooks: a run without this plugin, ``-p no:fakemachine``,
then still loads the conftest)::

    @pytest.hookimpl(optionalhook=True)
    def pytest_fakemachine_configure(machine, item):
        machine.add_volume(item.path.parent / "data", "/data", read_only=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._machine import Machine
    from ._session import BootOutcome


@pytest.hookspec
def pytest_fakemachine_configure(machine: Machine, item: pytest.Item) -> None:
    """Adjust ``machine`` before it boots for ``item``.

    Implement it with ``@pytest.hookimpl(optionalhook=True)``.

    Called for the ``fakemachine`` fixture (before the test gets it) and for
    each group of ``@pytest.mark.fakemachine`` tests (``item`` is the first
    test of the group), after the options and the marker were applied.
    """


@pytest.hookspec
def pytest_fakemachine_guest_result(
    machine: Machine, item: pytest.Item, outcome: BootOutcome
) -> None:
    """Called after a guest of a marked test powered off.

    Implement it with ``@pytest.hookimpl(optionalhook=True)``.

    ``outcome`` has the exit ``status`` of the guest-side runner, the guest
    ``console`` and the wall-clock ``seconds`` the guest ran. ``item`` is the
    first test that ran in that guest.
    """
