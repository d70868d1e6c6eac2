"""A marked test is reported as a local one would be: output, collection
errors, crashes, skips, ids and colours."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("capture", ["-s", "--capture=tee-sys"])
def test_guest_output_shows_live_with_capture_no_and_tee_sys(
    pytester: pytest.Pytester, capture: str
) -> None:
    pytester.makepyfile(
        test_t="""
        import sys, pytest

        pytestmark = pytest.mark.fakemachine(scope="module")

        def test_prints():
            print("out from the guest")
            print("err from the guest", file=sys.stderr)

        def test_fails():
            print("before failing")
            assert False
        """
    )
    result = pytester.runpytest_subprocess(capture, "-v")
    result.assert_outcomes(passed=1, failed=1)
    # Each test's output shows while it runs: after its name, before its result.
    result.stdout.fnmatch_lines([
        "test_t.py::test_prints out from the guest",
        "PASSED*",
        "test_t.py::test_fails before failing",
        "FAILED*",
    ])  # fmt: skip
    assert "err from the guest" in result.stderr.str()
    assert "test session starts" not in result.stdout.str().split("test_t.py::test_prints")[1]
    if capture == "--capture=tee-sys":  # captured as well, as locally
        result.stdout.fnmatch_lines(["*Captured stdout call*", "before failing"])


def test_guest_collection_error_is_one_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_broken="""
        import pytest
        from pytest_fakemachine import in_fakemachine

        pytestmark = pytest.mark.fakemachine

        if in_fakemachine():
            import no_such_module_in_the_guest

        def test_one():
            pass

        def test_two():
            pass
        """,
        test_fine="""
        def test_on_the_host():
            pass
        """,
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == 1
    result.assert_outcomes(passed=1, errors=3)
    result.stdout.fnmatch_lines([
        "*ERROR collecting test_broken.py*",
        "*ERROR at setup of test_one*",
        "*not run: collecting test_broken.py failed in the guest*",
        "*ERROR at setup of test_two*",
    ])  # fmt: skip
    # Count in the ERRORS section only: with CI set, pytest's short summary
    # repeats each error's whole message, the traceback included.
    errors_section = result.stdout.str().split("short test summary info")[0]
    tracebacks = re.findall(r"^E\s+ModuleNotFoundError", errors_section, re.MULTILINE)
    assert len(tracebacks) == 1, errors_section
    assert "fakemachine console" not in result.stdout.str()


def test_crash_of_the_guest_python_names_the_signal_and_shows_the_stack(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_t="""
        import ctypes, pytest

        pytestmark = pytest.mark.fakemachine(scope="module")

        def test_segfault():
            ctypes.string_at(0)

        def test_after_the_crash():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*the test process crashed (Segmentation fault)*",
        "*Fatal Python error: Segmentation fault*",
        '*File "*test_t.py", line 6 in test_segfault*',
    ])  # fmt: skip


SKIP_REASON = "not on this kernel, see issue 1234"


def test_skip_shows_the_full_reason_and_the_tests_location(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    pytester.makepyfile(
        test_t=f"""
        import pytest

        @pytest.mark.fakemachine
        def test_skips():
            pytest.skip({SKIP_REASON!r})
        """
    )
    result = pytester.runpytest_subprocess("-v", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([
        f"test_t.py::test_skips SKIPPED ({SKIP_REASON})*",
        f"SKIPPED [1] test_t.py:5: {SKIP_REASON}",
    ])  # fmt: skip
    missing = str(pytester.path / "no-such-linux.uml")
    unavailable = pytester.runpytest_subprocess(f"--fakemachine-kernel={missing}", "-rs")
    unavailable.stdout.fnmatch_lines(
        ["SKIPPED [[]1] test_t.py:3: fakemachine: *no-such-linux.uml*"]
    )


def test_guest_tmp_path_is_kept_in_the_hosts_basetemp(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_t="""
        import os, pytest

        pytestmark = pytest.mark.fakemachine(scope="module")

        def test_writes(tmp_path):
            (tmp_path / "sub").mkdir()
            (tmp_path / "sub" / "result.txt").write_text("from the guest")
            os.mkfifo(tmp_path / "fifo")
            (tmp_path / "link").symlink_to("/etc/hostname")
            with open(tmp_path / "disk.img", "wb") as f:  # sparse: crosses by its data only
                f.truncate(8 << 20)
                f.write(b"boot")
            assert False, "inspect my files"

        def test_without_tmp_path():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--basetemp=basetemp")
    result.assert_outcomes(passed=1, failed=1)
    kept = pytester.path / "basetemp" / "test_writes0"
    assert (kept / "sub" / "result.txt").read_text() == "from the guest"
    assert sorted(p.name for p in kept.iterdir()) == ["disk.img", "sub"]  # regular files only
    image = kept / "disk.img"
    assert image.stat().st_size == 8 << 20
    assert image.read_bytes()[:5] == b"boot\0"
    assert sorted(p.name for p in (pytester.path / "basetemp").iterdir()) == ["test_writes0"]


def _failures(result: pytest.RunResult) -> list[str]:
    """The failures and the short summary, less what differs run to run."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "FAILURES" in line)
    varying = re.compile(r" object at 0x| in [\d.]+s")
    return [line for line in lines[start:] if not varying.search(line)]


def test_failure_output_matches_a_local_run_with_colour_and_parameters(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_t="""
        import pytest

        pytestmark = pytest.mark.fakemachine(scope="module")

        @pytest.mark.parametrize("i, s", [(2, "2")])
        def test_params(i, s):
            assert [i, s, [1, 2]] == [3, "3", [1, 3]]

        def test_subtests(subtests):
            for i in range(2):
                with subtests.test(msg="each", i=i):
                    assert i == 0
        """
    )
    options = ("--color=yes", "-l", "-vv")
    guest = pytester.runpytest_subprocess(*options)
    unknown_mark = "ignore::pytest.PytestUnknownMarkWarning"
    local = pytester.runpytest_subprocess(*options, "-p", "no:fakemachine", "-W", unknown_mark)
    guest.assert_outcomes(failed=3)
    assert "\x1b[" in "".join(_failures(guest))  # highlighted diff
    assert any("(i=1)" in line for line in _failures(guest))
    assert _failures(guest) == _failures(local)


def test_warnings_raised_in_the_guest_reach_the_host_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_w="""
        import warnings
        import pytest

        class ProjectWarning(DeprecationWarning):
            pass

        @pytest.mark.fakemachine
        def test_warns():
            warnings.warn(UserWarning("from the guest"))
            warnings.warn(ProjectWarning("old api, in the guest"))

        def test_on_the_host():
            warnings.warn(UserWarning("from the host"))
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, warnings=3)
    result.stdout.fnmatch_lines([
        "*warnings summary*",
        "test_w.py::test_warns",
        "*test_w.py:*: UserWarning: from the guest",
        "*test_w.py:*: ProjectWarning: old api, in the guest",
        "test_w.py::test_on_the_host",
        "*UserWarning: from the host",
    ])  # fmt: skip


def test_guest_warnings_turn_into_errors_as_locally(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_w="""
        import warnings
        import pytest

        @pytest.mark.fakemachine
        def test_warns():
            warnings.warn(UserWarning("from the guest"))
        """
    )
    result = pytester.runpytest_subprocess("-W", "error::UserWarning")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*UserWarning: from the guest*"])


UNSHARED = """
import pytest

pytestmark = pytest.mark.fakemachine

def test_one():
    pass

def test_two():
    pass

@pytest.mark.fakemachine(memory="1G")
def test_other_machine():
    pass
"""
UNSHARED_NOTE = (
    "fakemachine: 2 tests in one module booted a guest each (* s in all) for the same machine; "
    'scope="module" on their marker (or fakemachine_defaults = scope=module) shares one guest '
    "per module"
)


def test_function_scoped_guests_of_one_machine_get_a_line_saying_module_scope_shares_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(test_unshared=UNSHARED)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([UNSHARED_NOTE, "*3 passed*"])  # test_other_machine: its own
    # Under xdist the controller counts its workers' guests: one test on each.
    pair = ("-k", "one or two")
    xdist = pytester.runpytest_subprocess("-n", "2", "-v", *pair)
    xdist.assert_outcomes(passed=2)
    workers = {line.split("]")[0] for line in xdist.outlines if line.startswith("[gw")}
    assert workers == {"[gw0", "[gw1"}, xdist.outlines
    xdist.stdout.fnmatch_lines([UNSHARED_NOTE])
    for quiet_or_shared in (["-q"], ["--fakemachine-defaults=scope=module"]):
        result = pytester.runpytest_subprocess(*quiet_or_shared, *pair)
        result.assert_outcomes(passed=2)
        assert "booted a guest each" not in result.stdout.str()
