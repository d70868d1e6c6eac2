"""Marked tests under the plugins people combine with pytest, each the real plugin:
pytest-rerunfailures, pytest-timeout, pytest-cov (and coverage)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("pytest_rerunfailures", reason="the `test` extra installs it")
pytest.importorskip("pytest_timeout", reason="the `test` extra installs it")

pytestmark = pytest.mark.uses_plugins

BOOT_ID = """
def boot_id(log):
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    with open(log, "a") as f:
        f.write(boot + "\\n")
"""


def test_rerunfailures_reruns_in_a_fresh_guest_or_the_shared_one(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        BOOT_ID
        + """
import os, pytest

@pytest.mark.flaky(reruns=2)
@pytest.mark.fakemachine
def test_always_fails():
    boot_id("function.log")
    assert False, "fails every time"

@pytest.mark.flaky(reruns=2)
@pytest.mark.fakemachine(scope="module")
def test_third_time_lucky():
    boot_id("module.log")
    with open("module.log") as f:
        assert len(f.readlines()) == 3

@pytest.mark.fakemachine(scope="module")
def test_shared_after_reruns():
    boot_id("module.log")

@pytest.mark.fakemachine
def test_guest_powers_off():
    os.system("echo o > /proc/sysrq-trigger")
    import time; time.sleep(30)
"""
    )
    result = pytester.runpytest_subprocess("-rA", "--junitxml=out.xml")
    assert result.ret == 1
    assert result.parseoutcomes() == {"failed": 2, "passed": 2, "rerun": 4}, result.outlines
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines([
        "*AssertionError: fails every time*",
        "*the guest powered off during the test*",
        "PASSED *::test_third_time_lucky",
        "FAILED *::test_always_fails*",
    ])  # fmt: skip
    function_boots = (pytester.path / "function.log").read_text().split()
    module_boots = (pytester.path / "module.log").read_text().split()
    assert len(function_boots) == len(set(function_boots)) == 3  # a fresh guest each try
    assert len(module_boots) == 4 and len(set(module_boots)) == 1  # one shared guest
    testcases = ET.parse(pytester.path / "out.xml").iter("testcase")
    cases = {case.get("name"): [e.tag for e in case] for case in testcases}  # the last try
    assert "failure" in cases["test_always_fails"]
    assert cases["test_third_time_lucky"] == []


def test_reruns_option_on_a_test_that_always_fails_fails_the_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakemachine
        def test_always_fails():
            assert False
        """
    )
    result = pytester.runpytest_subprocess("--reruns", "2", "--junitxml=out.xml")
    assert result.ret == 1
    assert result.parseoutcomes() == {"failed": 1, "rerun": 2}
    cases = ET.parse(pytester.path / "out.xml").iter("testcase")
    assert [[e.tag for e in case] for case in cases] == [[], [], ["failure"]]  # as locally


def test_timeout_limits_the_test_in_its_guest_not_the_boot(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntimeout = 1\n")  # shorter than any boot
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.fakemachine
        def test_trivial():
            pass

        @pytest.mark.timeout(5)
        @pytest.mark.fakemachine(scope="module")
        def test_hangs():
            time.sleep(60)

        @pytest.mark.fakemachine(scope="module")
        def test_after_the_timeout():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rA")
    assert result.ret == 1
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*def test_hangs():*",
        ">*time.sleep(60)",
        "E*Failed: Timeout (>5.0s) from pytest-timeout.",
        "PASSED *::test_after_the_timeout",
    ])  # fmt: skip
    assert "INTERNALERROR" not in result.stdout.str()


def test_timeout_option_fails_the_test_cleanly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.fakemachine
        def test_hangs():
            time.sleep(60)
        """
    )
    result = pytester.runpytest_subprocess("--timeout=1")
    assert result.ret == 1
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*Failed: Timeout (>1.0s) from pytest-timeout."])


COVERED = {
    "mypkg/__init__.py": "",
    "mypkg/code.py": """
def on_the_host(x):
    return x + 1


def in_the_guest(x):
    if x:
        return x * 2
    return 0
""",
    "test_cov.py": """
import pytest
from mypkg.code import in_the_guest, on_the_host

def test_host():
    assert on_the_host(1) == 2

@pytest.mark.fakemachine
def test_guest():
    assert in_the_guest(2) == 4
    assert in_the_guest(0) == 0
""",
}


def _covered_project(pytester: pytest.Pytester) -> None:
    for name, text in COVERED.items():
        path = pytester.path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)


def test_pytest_cov_counts_the_guests_lines(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_cov", reason="the `test` extra installs it")
    _covered_project(pytester)
    result = pytester.runpytest_subprocess("--cov=mypkg", "--cov-report=term-missing")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["mypkg/code.py * 100%*", "TOTAL * 100%*"])


def test_coverage_run_gets_the_guests_parallel_data_files(pytester: pytest.Pytester) -> None:
    pytest.importorskip("coverage", reason="the `test` extra installs it (with pytest-cov)")
    _covered_project(pytester)
    coverage = [sys.executable, "-m", "coverage"]
    pytester.run(*coverage, "run", "--parallel-mode", "--source=mypkg", "-m", "pytest",
                 "-p", "no:pytest_cov")  # fmt: skip
    assert len(list(pytester.path.glob(".coverage.*"))) == 2  # the host's and the guest's
    pytester.run(*coverage, "combine")
    report = pytester.run(*coverage, "report")
    report.stdout.fnmatch_lines(["TOTAL * 100%"])


def test_timeout_thread_method_ends_the_guest_pytest_and_says_where(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.fakemachine
        def test_hangs():
            time.sleep(60)

        @pytest.mark.fakemachine
        def test_next():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--timeout=1", "--timeout-method=thread")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*the guest-side pytest exited with status 1 during the test*",
        "*Timeout*",
        "*time.sleep(60)*",
    ])  # fmt: skip
