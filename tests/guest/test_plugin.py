"""The plugin's place in the pytest ecosystem: hooks, doctor, header, progress."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_fakemachine.backend.uml import host as _uml_host


def test_configure_hook_adjusts_fixture_and_marker_machines(pytester: pytest.Pytester) -> None:
    shared = pytester.mkdir("shared")
    (shared / "data.txt").write_text("from the conftest volume\n")
    pytester.makeconftest(
        f"""
        def pytest_fakemachine_configure(machine, item):
            machine.env["CONFIGURED_FOR"] = item.name
            machine.add_volume({str(shared)!r}, "/shared", read_only=True)
        """
    )
    pytester.makepyfile(
        """
        import os, pytest

        def test_fixture(fakemachine):
            result = fakemachine.run("echo $CONFIGURED_FOR; cat /shared/data.txt")
            assert result.stdout == "test_fixture\\nfrom the conftest volume\\n"

        @pytest.mark.fakemachine
        def test_marked():
            assert os.environ["CONFIGURED_FOR"] == "test_marked"
            with open("/shared/data.txt") as f:
                assert f.read() == "from the conftest volume\\n"
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


def test_guest_result_hook_sees_console_and_timing(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import json

        def pytest_fakemachine_guest_result(machine, item, outcome):
            with open("outcomes.jsonl", "a") as f:
                f.write(json.dumps({"test": item.name, "status": outcome.status,
                                    "seconds": outcome.seconds,
                                    "console": "systemd" in outcome.console}) + "\\n")
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakemachine
        def test_one():
            pass
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    lines = (pytester.path / "outcomes.jsonl").read_text().splitlines()
    (record,) = [json.loads(line) for line in lines]
    assert record["test"] == "test_one" and record["status"] == 0 and record["console"]
    assert 0 < record["seconds"] < 300


def test_verbose_line_shows_guest_boot_and_keep_lists_work_dirs(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakemachine
        def test_marked():
            pass

        def test_fixture(fakemachine):
            fakemachine.run("true")
        """
    )
    result = pytester.runpytest_subprocess("-v", "--fakemachine-keep")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*::test_marked PASSED (guest boot *.* s)*",
        "*fakemachine: kept work directories*",
        "/*/fakemachine-*",
        "/*/fakemachine-*",
    ])  # fmt: skip
    kept = [Path(line) for line in result.outlines if line.startswith("/")]
    assert len(kept) == 2 and all((path / "console.log").is_file() for path in kept)
    for path in kept:
        subprocess.run(["rm", "-rf", str(path)], check=True)


def test_show_boot_streams_the_console(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_fixture(fakemachine):
            fakemachine.run("true")
        """
    )
    result = pytester.runpytest_subprocess("--fakemachine-show-boot")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Run /init as init process*", "*systemd*"])


def test_report_header_names_backend_and_kernel(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    # "backend auto: uml (why)", or "backend uml" where tests/guest/conftest.py pins it.
    result.stdout.fnmatch_lines(["fakemachine: backend *uml*, UML kernel *linux.uml (6.*)"])


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "--fakemachine-doctor"],
                          capture_output=True, text=True, env=env, check=False,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def test_doctor_in_a_healthy_environment() -> None:
    result = _doctor(dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok      UML kernel" in result.stdout
    # It booted a guest, and says what the guest got.
    assert re.search(r"^ok      test boot: kernel \d+\.\S+, systemd \d+.*, util-linux \d",
                     result.stdout, re.MULTILINE), result.stdout  # fmt: skip
    assert "fakemachine doctor: guests can boot here" in result.stdout
    # Which backend auto takes and why, and whether KVM really runs a guest,
    # on a line of its own that starts with "kvm:" after the status word.
    assert re.search(r"^ok      backend auto: (uml|kvm|qemu) \(.+\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^(ok|warning) +kvm: ", result.stdout, re.MULTILINE), result.stdout
    if shutil.which("qemu-system-x86_64"):
        assert re.search(r"^\S+ +QEMU \(", result.stdout, re.MULTILINE), result.stdout


def test_doctor_without_linux_uml_says_how_to_fix_it(tmp_path: Path) -> None:
    # A PATH with everything the doctor looks for except linux.uml.
    for tool in ("busybox", "libslirp-helper", "ldd"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True,
                               text=True, check=False).stdout.strip()  # fmt: skip
        if found:
            (tmp_path / tool).symlink_to(found)
    result = _doctor({**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "MISSING UML kernel and modules: linux.uml is not on PATH" in result.stdout
    assert f"fix: {_uml_host.apt_fix('user-mode-linux')}" in result.stdout
    assert "fakemachine doctor: a guest cannot boot here" in result.stdout


def test_doctor_says_so_when_no_guest_boots(tmp_path: Path) -> None:
    # Every installed piece checks out, but the kernel cannot start its init:
    # only a real boot finds that.
    kernel = tmp_path / "linux.uml"
    # The distribution's, whose modules are where its package puts them, not beside it.
    real = _uml_host.find_kernel(shutil.which("linux.uml"))
    kernel.write_text(f'#!/bin/sh\nexec {real} "$@" rdinit=/nonexistent init=/nonexistent\n')
    kernel.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--fakemachine-doctor", f"--fakemachine-kernel={kernel}"],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ok      UML kernel ({kernel})" in result.stdout
    assert "MISSING test boot: BootError: the guest did not boot to the command" in result.stdout
    assert "Requested init /nonexistent failed" in result.stdout  # the console tail
    assert result.stdout.endswith("fakemachine doctor: a guest cannot boot here\n")


def test_python_m_doctor_matches_the_option() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_fakemachine", "doctor"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0 and "guests can boot here" in result.stdout
    usage = subprocess.run([sys.executable, "-m", "pytest_fakemachine", "--no-such-flag"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert usage.returncode == 2 and "usage" in usage.stderr
