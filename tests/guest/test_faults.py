"""The fault matrix: every fault a CI run meets ends cleanly, nothing left running."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_for_no_leftovers
from pytest_fakemachine import BackendUnavailable, BootError, FakeMachineError, Machine
from pytest_fakemachine.backend import leftovers
from pytest_fakemachine.backend.uml import host as _uml_host
from pytest_fakemachine.backend.uml import kernel as _kernel
from pytest_fakemachine.cli.doctor import run_doctor

RUN_ECHO = "from pytest_fakemachine import Machine; print(Machine().run('echo hi').stdout, end='')"


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("exec 0<&-; exec {python} -c {code!r}", id="stdin-closed"),
        pytest.param("exec {python} -c {code!r} </dev/null", id="stdin-devnull"),
        pytest.param("exec {python} -c {code!r} </dev/null >{out} 2>&1", id="output-to-file"),
    ],
)
def test_runs_without_stdin_tty_or_terminal(how: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = how.format(python=sys.executable, code=RUN_ECHO, out=out)
    # start_new_session: no controlling TTY; capture_output: stdout is a pipe.
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          start_new_session=True, timeout=120, check=False)  # fmt: skip
    output = out.read_text() if out.exists() else proc.stdout
    assert (proc.returncode, output) == (0, "hi\n"), proc.stderr


def test_guest_panic_in_the_middle_of_a_command_is_a_boot_error(fakemachine: Machine) -> None:
    with pytest.raises(BootError, match="powered off during the command") as info:
        fakemachine.run("echo partial; echo c > /proc/sysrq-trigger; sleep 30")
    assert "sysrq" in info.value.console.lower()
    # the next run on the same machine is unaffected
    assert fakemachine.run("echo again").stdout == "again\n"


def test_out_of_memory_kills_the_command_not_the_run(fakemachine: Machine) -> None:
    fakemachine.memory = "128M"
    result = fakemachine.run("tail /dev/zero")  # grows until the OOM killer ends it
    assert result.returncode == 128 + signal.SIGKILL
    assert "Out of memory" in result.console or "oom" in result.console.lower()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_signal_to_pytest_during_a_guest_run_leaves_nothing(
    pytester: pytest.Pytester, sig: signal.Signals
) -> None:
    started = pytester.path / "started"
    pytester.makepyfile(
        f"""
        import pytest, time

        @pytest.mark.fakemachine
        def test_sleeps():
            open({str(started)!r}, "w").close()
            time.sleep(120)

        @pytest.mark.fakemachine  # its guest boots ahead (with two CPUs)
        def test_next():
            pass
        """
    )
    tmp = pytester.path / "tmp"  # the run's own TMPDIR: other runs cannot blur the check
    tmp.mkdir()
    # The signal handled as Python does by default: a suite started as a
    # background job (`cmd &`) or under `trap '' INT` passes SIGINT on ignored,
    # nohup SIGHUP; anything may pass SIGTERM on ignored.
    handler = "default_int_handler" if sig == signal.SIGINT else "SIG_DFL"
    default = "" if sig == signal.SIGKILL else f"signal.signal({int(sig)}, signal.{handler}); "
    inner = f"import signal, sys, pytest; {default}sys.exit(pytest.console_main())"
    # Not an xdist worker's share of the CPUs (one here): the next guest boots ahead.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_WORKER")}
    proc = subprocess.Popen([sys.executable, "-c", inner, "-p", "no:cacheprovider", "-q"],
                            cwd=pytester.path, stdin=subprocess.DEVNULL,
                            env={**env, "TMPDIR": str(tmp)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the marked test never started in the guest"
        guests = 2 if len(os.sched_getaffinity(0)) > 1 else 1
        assert _wait_for_guests(proc.pid, guests), "no guest is running for the tests"
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    if sig == signal.SIGINT:
        assert b"KeyboardInterrupt" in output
        assert proc.returncode == pytest.ExitCode.INTERRUPTED
    # Gone as pytest is: its watchdogs act at once (a guest's helper processes
    # outlive its kernel for ever otherwise).
    assert wait_for_no_leftovers(proc.pid, seconds=1) == []
    deadline = time.monotonic() + 5  # after a SIGKILL, the reaper removes them
    while (left := [n for n in os.listdir(tmp) if n.startswith("fakemachine-")]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert left == []


def _wait_for_guests(owner: int, count: int) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # one gone meanwhile
            if len({os.getpgid(pid) for pid in leftovers(owner)}) >= count:
                return True
        time.sleep(0.05)
    return False


# In a fresh process of its own (fork() in this one, which may run threads, warns).
CHILD_SETUP = """
import os
from pytest_fakemachine.backend.process import _child_setup

setup = _child_setup(min(os.sched_getaffinity(0)))  # for a child of this process

def run(*, orphaned):
    # setup() in a child of this process, or (orphaned) in a grandchild, as
    # when the starter has died: how that child ended.
    pid = os.fork()
    if pid == 0:
        if orphaned and os.fork() != 0:
            status = os.wait()[1]
            os._exit(os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0)
        setup()
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

print(run(orphaned=False), run(orphaned=True))
"""


def test_a_guest_whose_starter_died_before_it_could_be_told_kills_itself() -> None:
    """The guest's process sets PR_SET_PDEATHSIG between fork and exec: when
    its starter has died before that (a SIGTERM at that instant), no signal
    comes, so it ends itself instead of booting a guest nobody watches."""
    proc = subprocess.run([sys.executable, "-c", CHILD_SETUP], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert proc.stdout.split() == ["0", str(int(signal.SIGKILL))]


def test_linux_uml_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    # apt_fix: Ubuntu, which packages no UML, gets a different fix.
    with pytest.raises(BackendUnavailable, match=re.escape(_uml_host.apt_fix("user-mode-linux"))):
        Machine().run("true")


def test_uml_modules_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Debian's kernel, whose modules are missing from where its package puts them.
    monkeypatch.setattr(_kernel, "SYSTEM_MODULES", tmp_path / "modules")
    monkeypatch.setattr(
        _kernel, "module_candidates", lambda kernel, version: [tmp_path / "modules" / version]
    )
    fix = re.escape(_uml_host.apt_fix("user-mode-linux"))
    with pytest.raises(BackendUnavailable, match=rf"no modules for UML kernel .*{fix}"):
        Machine("uml", kernel=_uml_host.find_kernel(shutil.which("linux.uml"))).run("true")


def test_modules_mountpoint_missing_says_how_to_create_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A host with no kernel package (a container) has no /usr/lib/modules, and the
    # guest cannot make it in its read-only /usr.
    monkeypatch.setattr(_uml_host, "MODULES_MOUNTPOINT", tmp_path / "no-modules")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # no other kernels to compare
    with pytest.raises(BackendUnavailable, match=r"no-modules does not exist.*sudo mkdir "):
        Machine().run("true")
    lines: list[str] = []
    run_doctor(lines.append)
    assert any(line.startswith("MISSING mount point for the UML modules: ") for line in lines)
    assert f"        fix: sudo mkdir {tmp_path / 'no-modules'}" in lines


def test_slirp_missing_with_network_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kernel = _uml_host.find_kernel(None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match=re.escape(_uml_host.apt_fix("libslirp-helper"))):
        Machine(network=True, kernel=kernel).run("true")


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on a new directory ``path`` (root only)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        wait_for_no_leftovers(os.getpid())  # no guest may hold a file there at umount
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(os.getuid() != 0, reason="mounts a small tmpfs to fill up")
def test_full_disk_for_the_work_directory_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with _small_tmpfs(tmp_path / "full", "64k") as full:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=4k"],
                       capture_output=True, check=False)  # fmt: skip
        monkeypatch.setattr(tempfile, "tempdir", str(full))
        with pytest.raises(FakeMachineError, match=str(full)):
            Machine().run("true")
        assert sorted(os.listdir(full)) == ["filler"]


@pytest.mark.skipif(os.getuid() != 0, reason="mounts a tmpfs on /dev/shm in a mount namespace")
def test_docker_sized_dev_shm_moves_guest_memory_to_the_temporary_directory() -> None:
    # Docker gives containers a 64 MiB /dev/shm; UML's default memory file there
    # dies of SIGBUS before the kernel finishes booting.
    script = (
        "mount -t tmpfs -o size=64m tmpfs /dev/shm && "
        f"{sys.executable} -m pytest_fakemachine doctor; "
        f"{sys.executable} -c 'from pytest_fakemachine import Machine; "
        'print(Machine().run("echo booted").stdout)\''
    )
    env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    env["XDG_DATA_HOME"] = "/nonexistent"  # no other kernels to compare: fewer boots
    # A private mount namespace, or the small /dev/shm would be the host's too.
    unshare = ["unshare", "--mount", "--propagation", "private"]
    probe = subprocess.run([*unshare, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:  # e.g. in a chroot, whose / is no mount point
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    result = subprocess.run([*unshare, "sh", "-c", script],
                            capture_output=True, text=True, env=env, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning /dev/shm (guest memory): only 64 MiB free" in result.stdout
    assert "guests can boot here" in result.stdout
    assert result.stdout.endswith("booted\n\n"), result.stdout


@pytest.mark.skipif(os.getuid() != 0, reason="mounts a small tmpfs to fill up")
def test_guest_memory_filling_its_file_system_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with _small_tmpfs(tmp_path / "small", "64m") as small:
        # TMPDIR is the user's choice for UML's memory file too: honoured, and explained.
        monkeypatch.setenv("TMPDIR", str(small))
        monkeypatch.setattr(tempfile, "tempdir", str(small))
        expected = rf"memory=2048M\) in a file in {re.escape(str(small))}, and that 64 MiB file"
        with pytest.raises(BootError, match=expected):
            Machine().run("true")
        assert os.listdir(small) == []


def test_image_in_an_unwritable_place_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(FakeMachineError, match=str(tmp_path / "missing")):
        Machine().add_image(tmp_path / "missing" / "disk.img", size="1M")


def test_the_same_image_in_two_guests_at_once_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "shared.img"
    first = Machine()
    first.add_image(image, size="16M", label="shared")
    second = Machine()
    second.add_image(image, label="shared")
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            first.run("sleep 8")
        except BaseException as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not leftovers(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.05)  # once its kernel runs, the first guest holds the image
        assert leftovers(os.getpid()), "the first guest did not start"
        with pytest.raises(FakeMachineError, match="attached to another running guest"):
            second.run("true")
    finally:
        thread.join()
    assert errors == []


def test_data_written_to_a_volume_is_on_the_host_when_run_returns(
    fakemachine: Machine, tmp_path: Path
) -> None:
    fakemachine.add_volume(tmp_path)
    fakemachine.run(f"head -c 3000000 /dev/urandom > {tmp_path}/blob && sha256sum {tmp_path}/blob"
                    f" > {tmp_path}/sum", check=True)  # fmt: skip
    digest = subprocess.run(["sha256sum", str(tmp_path / "blob")], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert (tmp_path / "sum").read_text() == digest


def test_what_was_synced_before_a_crash_is_intact(fakemachine: Machine, tmp_path: Path) -> None:
    disk = fakemachine.add_image(tmp_path / "disk.img", size="32M", label="data")
    with pytest.raises(BootError):
        fakemachine.run(textwrap.dedent(f"""
            mkfs.ext4 -q {disk} && mkdir /mnt/d && mount {disk} /mnt/d &&
            echo durable > /mnt/d/file && sync &&
            echo c > /proc/sysrq-trigger
        """))  # fmt: skip
    result = fakemachine.run(f"mkdir /mnt/d && mount {disk} /mnt/d && cat /mnt/d/file")
    assert result.stdout == "durable\n", result.stderr


def test_work_directory_is_private_and_removed(
    fakemachine: Machine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # ours alone, unlike /tmp
    result = fakemachine.run("stat -c %a /run/fakemachine /run/fakemachine/job.sh")
    assert result.stdout.split() == ["700", "600"]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_twenty_boots_in_a_row_without_a_flake() -> None:
    machine = Machine()
    outputs = [machine.run(["echo", str(i)]).stdout for i in range(20)]
    assert outputs == [f"{i}\n" for i in range(20)]
