"""The pytest plugin: options, the marker, the ``fakemachine`` fixture, and the
hooks' registration.

Guests load this plugin too (for the marker, options and hooks), and every
import costs there; so the host-side machinery (``runs``, ``_machine``, the
doctor) is imported only on the host: the hooks that run marked tests in
guests are ``runs.host.HostSession``'s, registered here on the host alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from . import _settings, hooks
from ._errors import BackendUnavailable, FakeMachineError
from ._inguest import in_fakemachine
from ._settings import settings_key

if TYPE_CHECKING:
    from ._machine import Machine

MARKER_HELP = (
    "fakemachine(images=None, volumes=None, memory=None, scratch=None, network=False, "
    "env=None, passenv=None, timeout=None, boot_timeout=None, scope='function', backend=None, "
    "cpus=None): run the test (setup, call and teardown) as root inside a guest booted from the "
    "host's /usr (User-Mode-Linux, or QEMU with or without KVM)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    _settings.addoption(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = _settings.resolve(config)
    except FakeMachineError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[settings_key] = settings
    if not in_fakemachine():  # the marked tests' hooks run on the host alone
        from .runs.dispatch import State, state_key  # noqa: PLC0415 (host only)
        from .runs.host import HostSession  # noqa: PLC0415

        config.stash[state_key] = State(settings)
        config.pluginmanager.register(HostSession(config), "fakemachine-host")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("fakemachine_doctor", False):
        from .cli.doctor import run_doctor  # noqa: PLC0415 (host only, see the docstring)
        from .runs.dispatch import new_machine  # noqa: PLC0415

        # Before pytest_configure: the settings are resolved here for the doctor.
        try:
            config.stash[settings_key] = _settings.resolve(config)
        except FakeMachineError as e:
            raise pytest.UsageError(str(e)) from None
        return run_doctor(print, new_machine(config, "pytest --fakemachine-doctor"))
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    return "fakemachine: inside a guest" if in_fakemachine() else None  # the host's: runs.host


@pytest.fixture
def fakemachine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A fresh :class:`pytest_fakemachine.Machine`, preconfigured from the options.

    Skips the test where UML cannot run (``--fakemachine-backend=auto``).
    """
    if in_fakemachine():
        pytest.fail("the fakemachine fixture cannot boot a guest inside a guest", pytrace=False)
    from .runs.dispatch import (  # noqa: PLC0415 (host only)
        add_default_images,
        new_machine,
        state_key,
        why_unavailable,
    )

    config = request.config
    state = config.stash[state_key]
    unavailable = why_unavailable(state, config)
    if unavailable is not None:
        if state.settings.backend == "auto":
            pytest.skip(f"fakemachine: {unavailable}")
        # The message says what to install; the fixture's source would only bury it.
        pytest.fail(f"{BackendUnavailable.__name__}: {unavailable}", pytrace=False)
    machine = new_machine(config, f"the fakemachine fixture of {request.node.nodeid}")
    image_dir = add_default_images(machine, state.settings)
    try:
        config.hook.pytest_fakemachine_configure(machine=machine, item=request.node)
        yield machine
        if machine._keep and machine.last_workdir is not None:
            state.kept.append(machine.last_workdir)
    finally:
        if image_dir is not None:
            shutil.rmtree(image_dir, ignore_errors=True)
