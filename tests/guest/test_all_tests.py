"""Taking a suite into guests without editing it: --fakemachine-all, the
default scope, and host variables passed in (fakemachine_passenv, passenv=)."""

from __future__ import annotations

import pytest

from pytest_fakemachine._settings import passenv_env

SUITE = """
import os, pytest
from pytest_fakemachine import in_fakemachine

def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read()
    with open("boots.log", "a") as f:
        f.write(boot)

def test_unmarked_first():
    assert in_fakemachine()
    boot_id()
    assert (os.environ["SUITE_WORKSPACE"], os.environ["CI"]) == ("/ws", "1")
    assert "OTHER" not in os.environ

def test_unmarked_second():
    assert in_fakemachine()
    boot_id()

def test_fixture_drives_guests_from_the_host(fakemachine):
    assert not in_fakemachine()
    assert fakemachine.run("echo $SUITE_WORKSPACE.$OTHER").stdout == "/ws.\\n"

@pytest.mark.fakemachine(passenv=["OTH*"], env={"CI": "from the marker"})
def test_marker_adds_passenv():
    assert os.environ["OTHER"] == "other"
    assert os.environ["CI"] == "from the marker"
    assert os.environ["SUITE_WORKSPACE"] == "/ws"
"""


def test_all_scope_and_passenv_take_a_suite_into_guests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"SUITE_WORKSPACE": "/ws", "CI": "1", "OTHER": "other"}.items():
        monkeypatch.setenv(name, value)
    pytester.makeini(
        """
        [pytest]
        fakemachine_scope = module
        fakemachine_passenv = SUITE_*
            CI
        """
    )
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("--fakemachine-all", "-rA")
    result.assert_outcomes(passed=4)
    boots = (pytester.path / "boots.log").read_text().split()
    assert len(boots) == 2 and len(set(boots)) == 1  # the ini's module scope: one guest
    by_ini = pytester.runpytest_subprocess("-o", "fakemachine_all=true", "-k", "first")
    by_ini.assert_outcomes(passed=1, deselected=3)
    assert pytester.runpytest_subprocess("-k", "first").ret == 1  # on the host otherwise


def test_bad_scope_in_the_ini_names_value_and_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("-o", "fakemachine_scope=class")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*scope='class' from ini option fakemachine_scope*"])


def test_passenv_matches_names_and_globs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FM_ONE", "1")
    monkeypatch.setenv("FM_TWO", "2")
    monkeypatch.setenv("FMX", "x")
    assert {k: v for k, v in passenv_env(["FM_*"]).items() if k.startswith("FM")} == {
        "FM_ONE": "1",
        "FM_TWO": "2",
    }
    assert passenv_env(["FMX"]) == {"FMX": "x"}
    assert passenv_env([]) == {}


DEFAULTS_SUITE = """
import os, subprocess
from pytest_fakemachine import in_fakemachine

def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read()

def test_disk_and_memory_come_from_the_defaults():
    assert in_fakemachine()
    assert os.path.exists("/dev/disk/by-fakemachine-label/data")
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "/scratch"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert fstype == "ext4"  # scratch=16M: a disk, not the tmpfs
    with open("/proc/meminfo") as f:
        total_kib = int(f.readline().split()[1])
    assert 700 << 10 < total_kib <= 768 << 10  # memory=768M, not the 2048M default
    with open("boots.log", "a") as f:
        f.write(boot_id())

def test_same_guest():
    with open("boots.log", "a") as f:
        f.write(boot_id())
"""


def test_defaults_give_a_whole_suite_a_disk_memory_and_one_guest(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        """
        [pytest]
        fakemachine_memory = 1G
        fakemachine_defaults =
            scope=module memory=768M
            scratch=16M images=data:8M
        """
    )
    pytester.makepyfile(test_suite=DEFAULTS_SUITE)
    result = pytester.runpytest_subprocess("--fakemachine-all", "-rA")
    result.assert_outcomes(passed=2)
    boots = (pytester.path / "boots.log").read_text().split()
    assert len(boots) == 2 and len(set(boots)) == 1  # scope=module: one guest
