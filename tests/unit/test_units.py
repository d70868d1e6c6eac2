"""image.units: the guest's copies of the bus units, from the host's unit texts alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_fakemachine.image import system as gs
from pytest_fakemachine.image.units import BUS_UNITS, bus_units, without_boot_dependencies

# Ubuntu 24.04's units, in the shape seen there: no default dependencies, then
# sysinit.target wanted and ordered explicitly (a drop-in cannot take that back).
UBUNTU_SOCKET = """\
[Unit]
Description=D-Bus System Message Bus Socket
DefaultDependencies=no
Wants=sysinit.target
After=sysinit.target
Before=sockets.target

[Socket]
ListenStream=/run/dbus/system_bus_socket
"""
UBUNTU_SERVICE = """\
[Unit]
Description=D-Bus System Message Bus
Documentation=man:dbus-daemon(1)
Requires=dbus.socket
DefaultDependencies=no
Wants=sysinit.target
After=sysinit.target \\
  basic.target dbus.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile \\
  --systemd-activation --syslog-only
OOMScoreAdjust=-900
"""
# Debian 12's (dbus 1.14.10): systemd's implicit dependencies only.
DEBIAN_SOCKET = """\
[Unit]
Description=D-Bus System Message Bus Socket

[Socket]
ListenStream=/run/dbus/system_bus_socket
"""
DEBIAN_SERVICE = """\
[Unit]
Description=D-Bus System Message Bus
Documentation=man:dbus-daemon(1)
Requires=dbus.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile \\
  --systemd-activation --syslog-only
OOMScoreAdjust=-900
"""


def _unit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("text", [UBUNTU_SOCKET, UBUNTU_SERVICE, DEBIAN_SOCKET, DEBIAN_SERVICE],
                         ids=["ubuntu-socket", "ubuntu-service", "debian-socket",
                              "debian-service"])  # fmt: skip
def test_a_bus_unit_keeps_no_boot_dependency(text: str) -> None:
    copy = without_boot_dependencies(text, "/usr/lib/systemd/system/dbus.x")
    lines = _unit_lines(copy)
    assert lines[:2] == ["[Unit]", "DefaultDependencies=no"]
    assert lines.count("DefaultDependencies=no") == 1
    assert "sysinit.target" not in copy and "basic.target" not in copy
    assert "ListenStream=" in copy or "ExecStart=/usr/bin/dbus-daemon --system" in copy


def test_ubuntus_units_lose_exactly_their_boot_dependencies() -> None:
    service = _unit_lines(without_boot_dependencies(UBUNTU_SERVICE, "dbus.service"))
    assert [line for line in service if line.startswith(("Wants", "After", "Before"))] == [
        "After=dbus.socket",  # the continuation joined, the boot's targets taken out
        "Before=shutdown.target",
    ]
    socket = _unit_lines(without_boot_dependencies(UBUNTU_SOCKET, "dbus.socket"))
    assert socket == [
        "[Unit]", "DefaultDependencies=no", "Description=D-Bus System Message Bus Socket",
        "Before=sockets.target", "[Socket]", "ListenStream=/run/dbus/system_bus_socket",
    ]  # fmt: skip


def test_debians_units_only_gain_no_default_dependencies() -> None:
    for text in (DEBIAN_SOCKET, DEBIAN_SERVICE):
        lines = _unit_lines(without_boot_dependencies(text, "x"))
        assert lines == [lines[0], "DefaultDependencies=no", *_unit_lines(text)[1:]]


def test_a_unit_without_a_unit_section_gets_one() -> None:
    lines = _unit_lines(without_boot_dependencies("[Socket]\nListenStream=/x\n", "x"))
    assert lines == ["[Unit]", "DefaultDependencies=no", "[Socket]", "ListenStream=/x"]


def _unit(root: Path, directory: str, name: str, text: str | None) -> None:
    path = root / directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        path.symlink_to(os.devnull)
    else:
        path.write_text(text)


def test_bus_units_come_from_the_unit_systemd_loads(tmp_path: Path) -> None:
    _unit(tmp_path, "usr/lib/systemd/system", "dbus.socket", UBUNTU_SOCKET)
    _unit(tmp_path, "usr/lib/systemd/system", "dbus.service", UBUNTU_SERVICE)
    _unit(tmp_path, "etc/systemd/system", "dbus.service", DEBIAN_SERVICE)  # the admin's copy
    units = bus_units(str(tmp_path))
    assert set(units) == set(BUS_UNITS)
    assert "from /usr/lib/systemd/system/dbus.socket" in units["dbus.socket"]
    assert "from /etc/systemd/system/dbus.service" in units["dbus.service"]
    assert "NotifyAccess=main" in units["dbus.service"]


def test_a_masked_or_missing_bus_unit_gets_no_copy(tmp_path: Path) -> None:
    _unit(tmp_path, "usr/lib/systemd/system", "dbus.service", DEBIAN_SERVICE)
    _unit(tmp_path, "etc/systemd/system", "dbus.service", None)  # masked: the mask stays
    assert bus_units(str(tmp_path)) == {}


def test_the_guests_etc_holds_the_copies_of_this_hosts_bus_units() -> None:
    if not bus_units():
        pytest.skip("this host has no dbus units")
    etc = gs.generated_etc("usr line")
    for name in BUS_UNITS:
        content, mode = etc[f"etc/systemd/system/{name}"]
        assert b"DefaultDependencies=no" in content and b"sysinit.target" not in content
        assert mode == 0o644
