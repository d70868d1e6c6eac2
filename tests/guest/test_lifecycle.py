"""A guest's life from the host: it boots within its limit, its job runs at most once,
it ends however it is ended, its CPU is its own, and a killed host leaves nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, cast

import pytest

from conftest import wait_for_no_leftovers
from pytest_fakemachine import BootError, FakeMachineError, GuestTimeout, Machine
from pytest_fakemachine.backend import leftovers
from pytest_fakemachine.backend import process as _process
from pytest_fakemachine.backend.uml.process import UmlProcess

# systemd cannot find this unit: it drops to a rescue shell that waits for a
# root password on the console forever (a boot that never reaches the job).
NEVER_BOOTS = "systemd.unit=fakemachine-no-such.target"


def _wait_for(condition: object, seconds: float = 120.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    return bool(condition())  # type: ignore[operator]


# --------------------------------------------------------------------------------------
# 4. a reboot ends the run; the job never runs twice
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["reboot -f", "systemctl reboot; sleep 60", "echo b > /proc/sysrq-trigger"]
)
def test_a_reboot_ends_the_run_and_the_job_runs_once(
    fakemachine: Machine, tmp_path: Path, command: str
) -> None:
    if command.startswith("reboot") and shutil.which("reboot") is None:
        pytest.skip("reboot is not installed (systemd-sysv)")
    fakemachine.add_volume(tmp_path, "/mnt/count")
    fakemachine.timeout = 120
    with pytest.raises(BootError, match=r"^the guest rebooted; a reboot ends the run") as info:
        fakemachine.run(f"echo ran >> /mnt/count/runs; sync; {command}")
    assert (tmp_path / "runs").read_text() == "ran\n"
    # sysrq b restarts at once, unannounced: then the second start of UML tells
    assert info.value.console.count("Checking that ptrace can change system call numbers") == 2 or (
        "reboot: Restarting system" in info.value.console
    )


class _Pipe:
    """A console pipe that hands ``text`` over in chunks of ``split`` bytes."""

    def __init__(self, text: bytes, split: int) -> None:
        self.chunks = [text[i : i + split] for i in range(0, len(text), split)]

    def read1(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


@pytest.mark.parametrize("split", [1, 7, 30, 60])
def test_the_console_tells_a_restart_across_chunk_boundaries(split: int) -> None:
    start = b"Checking that ptrace can change system call numbers...OK\n"
    once = b"Core dump limits\n" + start + b"[ 0.1] Linux version\n" * 3
    for text, rebooted in [(once, False), (once + b"x" * 100 + once, True),
                           (once + b"reboot: Restarting system\n", True)]:  # fmt: skip
        pipe = cast("IO[bytes]", _Pipe(text, split))
        console = _process._Console(pipe, None, UmlProcess.reboot_line, UmlProcess.start_line)
        console.pump()
        assert console.rebooted is rebooted, (text, split)
        assert console.text() == text.decode()


def test_the_job_powers_off_if_it_is_started_again(
    fakemachine: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's own guard, with the host's reboot watch blinded: still one run."""
    monkeypatch.setattr(UmlProcess, "reboot_line", b"\0never printed\0")
    monkeypatch.setattr(UmlProcess, "start_line", b"\0never printed\0")
    fakemachine.add_volume(tmp_path, "/mnt/count")
    fakemachine.timeout = 60  # a rebooted UML has been seen to hang
    with pytest.raises((BootError, GuestTimeout)):
        fakemachine.run("echo ran >> /mnt/count/runs; sync; systemctl reboot --force --force")
    assert (tmp_path / "runs").read_text() == "ran\n"


def test_a_marked_test_that_reboots_fails_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import subprocess, pytest

        @pytest.mark.fakemachine(timeout=120)
        def test_reboots():
            with open("runs", "a") as f:
                f.write("ran\\n")
            subprocess.run(["sync"])
            subprocess.run(["systemctl", "reboot", "--force", "--force"])  # reboot -f
            import time; time.sleep(60)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the guest rebooted; a reboot ends the run*"])
    assert (pytester.path / "runs").read_text() == "ran\n"


# --------------------------------------------------------------------------------------
# 5. no boot hangs forever
# --------------------------------------------------------------------------------------


def test_a_boot_that_never_reaches_the_command_is_a_boot_error(fakemachine: Machine) -> None:
    fakemachine.boot_timeout = 5
    fakemachine.extra_kernel_args.append(NEVER_BOOTS)
    assert fakemachine.timeout is None  # the boot limit holds without a run limit
    with pytest.raises(BootError, match=r"^the guest did not reach the command within "
                                        r"boot_timeout=5 s and was killed") as info:  # fmt: skip
        fakemachine.run("true")
    assert "systemd[1]: " in info.value.console  # it booted, but to a rescue shell
    assert str(info.value).rstrip().endswith(info.value.console.rstrip().splitlines()[-1])


def test_the_boot_limit_ends_when_the_command_starts(fakemachine: Machine) -> None:
    fakemachine.boot_timeout = 10  # a boot takes 1-3 s
    assert fakemachine.run("sleep 12; echo slept").stdout == "slept\n"


def test_boot_timeout_from_ini_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfakemachine_boot_timeout = 6\n")
    pytester.makeconftest(
        f"""
        def pytest_fakemachine_configure(machine, item):
            machine.extra_kernel_args.append({NEVER_BOOTS!r})
        """
    )
    pytester.makepyfile(
        """
        import pytest

        def test_fixture(fakemachine):
            assert fakemachine.boot_timeout == 6
            fakemachine.run("true")

        @pytest.mark.fakemachine(boot_timeout=4)
        def test_marker():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*BootError: the guest did not reach the command within "
                                 "boot_timeout=6 s and was killed*"])  # fmt: skip
    result.stdout.fnmatch_lines(["*the guest did not reach the command within boot_timeout=4 s "
                                 "and was killed*"])  # fmt: skip
    result.stdout.fnmatch_lines(["*fakemachine console*", "*systemd*"])


def test_boot_timeout_option_beats_ini_and_defaults_to_120(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfakemachine_boot_timeout = 6\n")
    pytester.makepyfile(
        """
        from pytest_fakemachine import Machine

        def test_values(fakemachine, request):
            assert Machine().boot_timeout == 120
            assert fakemachine.boot_timeout == float(request.config.getoption("expected"))
        """
    )
    pytester.makeconftest("def pytest_addoption(parser):\n    parser.addoption('--expected')\n")
    pytester.runpytest_subprocess("--expected=6").assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("--expected=7.5", "--fakemachine-boot-timeout=7.5")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("--fakemachine-boot-timeout=0")
    result.stderr.fnmatch_lines(["ERROR: boot_timeout='0' from --fakemachine-boot-timeout: must "
                                 "be more than zero"])  # fmt: skip


# --------------------------------------------------------------------------------------
# 6. a SIGKILL while the work directory is prepared leaves nothing
# --------------------------------------------------------------------------------------


def test_sigkill_while_the_scratch_disk_is_made_leaves_nothing(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = "from pytest_fakemachine import Machine; Machine(scratch='200G').run('true')"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert _wait_for(lambda: any(tmp.glob("fakemachine-*/scratch.img")), 60)
    finally:
        proc.kill()  # while mkfs.ext4 formats the 200 GiB sparse image
        proc.wait()
    assert _wait_for(lambda: not os.listdir(tmp), 30), os.listdir(tmp)
    assert wait_for_no_leftovers(proc.pid) == []


# --------------------------------------------------------------------------------------
# 7. guests from threads spread over the CPUs
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_guests_started_from_threads_run_on_different_cpus() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Machine().run("sleep 5")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:

        def cpus_of_guests() -> dict[int, frozenset[int]]:
            groups: dict[int, frozenset[int]] = {}
            for pid in leftovers(os.getpid()):
                with contextlib.suppress(OSError):  # gone meanwhile
                    groups[os.getpgid(pid)] = frozenset(os.sched_getaffinity(pid))
            return groups

        assert _wait_for(lambda: len(cpus_of_guests()) == 2, 60)
        first, second = cpus_of_guests().values()
        assert len(first) == len(second) == 1
        assert first != second
    finally:
        for thread in threads:
            thread.join()
    assert errors == []


# --------------------------------------------------------------------------------------
# 8. a kernel killed from outside says so
# --------------------------------------------------------------------------------------


def _leads_its_group(pid: int) -> bool:
    """Whether ``pid`` is the UML kernel's main process; False for one of its
    guest processes that ended since it was listed (a busy guest has many)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def test_linux_uml_killed_from_outside_says_by_which_signal(fakemachine: Machine) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fakemachine.run("sleep 60")
        except BaseException as e:  # checked below
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert _wait_for(lambda: fakemachine.last_workdir is not None
                         and (fakemachine.last_workdir / "started").exists(), 60)  # fmt: skip
        (main,) = [p for p in leftovers(os.getpid()) if _leads_its_group(p)]
        os.kill(main, signal.SIGKILL)
    finally:
        thread.join()
    (error,) = errors
    assert isinstance(error, FakeMachineError)
    assert str(error).startswith(
        "the UML process (linux.uml) was killed by signal SIGKILL from outside during the command"
    ), error
