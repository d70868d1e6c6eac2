"""Install systemd units, start them, and check what systemd says about them.

The guest runs the host's systemd as PID 1, so ``systemctl`` talks to a real
service manager: no container tricks, no mocking of D-Bus.

The guest boots straight into the unit that runs the test, skipping
``sysinit.target``. A unit with default dependencies pulls that target in on
its first start (journald, udevd: a second or two in a UML guest, the rest of
it is masked), so the units here say ``DefaultDependencies=no``. Drop that
line to test a unit file exactly as shipped, at the cost of that one-time wait.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fakemachine import Machine

UNIT_DIR = Path("/etc/systemd/system")

# The tests below share one guest (scope="module"); each uses units of its own.
in_guest = pytest.mark.fakemachine(scope="module")


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=check)


def prop(unit: str, name: str) -> str:
    return systemctl("show", "--property", name, "--value", unit).stdout.strip()


def install_unit(name: str, text: str) -> None:
    (UNIT_DIR / name).write_text(text)
    systemctl("daemon-reload")


@pytest.fixture(scope="module")
def journald() -> Iterator[None]:
    """journald, started before the test (it is socket-activated anyway)."""
    systemctl("start", "systemd-journald.socket", "systemd-journald.service")
    yield


@in_guest
def test_oneshot_unit_runs_and_stays_active(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    install_unit(
        "fm-hello.service",
        f"""\
[Unit]
Description=pytest-fakemachine example: hello
DefaultDependencies=no

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=GREETING=hello
ExecStart=/bin/sh -c 'echo "$GREETING from $(id -u) as $INVOCATION_ID" > {out}'
""",
    )
    assert systemctl("is-active", "fm-hello.service", check=False).stdout.strip() == "inactive"
    systemctl("start", "fm-hello.service")  # returns once the oneshot has finished

    # systemd ran it (INVOCATION_ID is set by systemd only), as root, with its Environment=.
    assert re.fullmatch(r"hello from 0 as [0-9a-f]{32}\n", out.read_text())
    assert systemctl("is-active", "fm-hello.service").stdout.strip() == "active"
    assert prop("fm-hello.service", "Result") == "success"
    assert prop("fm-hello.service", "ExecMainStatus") == "0"


@in_guest
def test_failing_unit_is_reported_failed_with_its_output(journald: None) -> None:
    install_unit(
        "fm-broken.service",
        """\
[Unit]
Description=pytest-fakemachine example: broken
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "disk on fire" >&2; exit 3'
""",
    )
    start = systemctl("start", "fm-broken.service", check=False)
    assert start.returncode != 0
    assert "fm-broken.service" in start.stderr

    assert systemctl("is-failed", "fm-broken.service").stdout.strip() == "failed"
    assert prop("fm-broken.service", "Result") == "exit-code"
    assert prop("fm-broken.service", "ExecMainStatus") == "3"
    # The unit's stderr went to the journal, tagged with the unit.
    journal = subprocess.run(
        ["journalctl", "--no-pager", "-o", "cat", "-u", "fm-broken.service"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "disk on fire" in journal

    systemctl("reset-failed", "fm-broken.service")
    assert systemctl("is-failed", "fm-broken.service", check=False).stdout.strip() != "failed"


@in_guest
def test_long_running_service_starts_and_stops() -> None:
    install_unit(
        "fm-daemon.service",
        """\
[Unit]
Description=pytest-fakemachine example: a daemon
DefaultDependencies=no

[Service]
ExecStart=/bin/sleep infinity
""",
    )
    systemctl("start", "fm-daemon.service")
    assert systemctl("is-active", "fm-daemon.service").stdout.strip() == "active"
    pid = int(prop("fm-daemon.service", "MainPID"))
    assert Path(f"/proc/{pid}/comm").read_text() == "sleep\n"
    # systemd put it in a cgroup of its own.
    assert "/system.slice/fm-daemon.service" in Path(f"/proc/{pid}/cgroup").read_text()

    systemctl("stop", "fm-daemon.service")
    assert systemctl("is-active", "fm-daemon.service", check=False).stdout.strip() == "inactive"
    assert not os.path.exists(f"/proc/{pid}")


# The fixture way: the unit file and its script live in a host directory, as
# they would in a project's source tree, and the result lands back on the host.
REPORT_UNIT = """\
[Unit]
Description=pytest-fakemachine example: a unit from the host
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/srv/units/report.sh /out/report.txt
"""
REPORT_SCRIPT = """\
#!/bin/sh
# Records who ran it: systemd sets INVOCATION_ID for every service it starts.
{ echo "uid=$(id -u)"; echo "invocation=$INVOCATION_ID"; echo "kernel=$(uname -r)"; } >"$1"
"""


def test_unit_shipped_from_a_host_directory(fakemachine: Machine, tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "fm-report.service").write_text(REPORT_UNIT)
    (units / "report.sh").write_text(REPORT_SCRIPT)
    (units / "report.sh").chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    fakemachine.add_volume(units, "/srv/units", read_only=True)
    fakemachine.add_volume(out, "/out")

    # `systemctl link` makes a unit file outside the unit path known to systemd.
    result = fakemachine.run(
        "systemctl link /srv/units/fm-report.service"
        " && systemctl start fm-report.service"
        " && systemctl show --property Result --value fm-report.service"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "success"
    report = dict(line.split("=", 1) for line in (out / "report.txt").read_text().splitlines())
    assert report["uid"] == "0"
    assert re.fullmatch(r"[0-9a-f]{32}", report["invocation"])
    assert report["kernel"]  # the UML kernel's release
