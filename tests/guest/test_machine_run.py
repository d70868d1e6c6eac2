"""Integration tests of ``Machine.run()``: every guest here is a real UML boot.

Tests that only need to look at a default guest share one boot (the module
fixture ``probe``); everything else boots its own guest through the
``fakemachine`` fixture, a fresh :class:`pytest_fakemachine.Machine` per test.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pytest_fakemachine
from pytest_fakemachine import FakeMachineError, GuestTimeout, Machine, RunResult, in_fakemachine
from pytest_fakemachine.backend import leftovers

_USR_PROBE = "/usr/.fakemachine-write-probe"


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def key_values(text: str) -> dict[str, str]:
    """``key=value`` lines of a guest's output as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# --------------------------------------------------------------------------
# One default guest, looked at by several tests
# --------------------------------------------------------------------------

PROBE = f"""\
echo "uid=$(id -u)"
echo "uml_cpus=$(grep -c 'User Mode Linux' /proc/cpuinfo)"
echo "pwd=$(pwd)"
echo "home=$HOME"
echo "scratch_fs=$(stat -f -c %T /scratch)"
echo "net=$(ls /sys/class/net | tr '\\n' ' ')"
echo "usr_options=$(sed -n 's#^[^ ]* /usr [^ ]* \\([^ ]*\\) .*#\\1#p' /proc/mounts)"
echo "units=$(systemctl list-units --all --no-legend --plain | wc -l)"
echo "targets=$(systemctl list-units --state=active --no-legend --plain --type=target | wc -l)"
echo "generated=$(ls -d /run/systemd/generator* 2>/dev/null | wc -l)"
if error=$(touch {_USR_PROBE} 2>&1); then
    echo usr_write=succeeded
    rm -f {_USR_PROBE}
else
    echo "usr_write=refused: $error"
fi
"""


@pytest.fixture(scope="module")
def probe() -> RunResult:
    """One boot of a default machine running ``PROBE``."""
    return Machine().run(PROBE, check=True)


def test_result_is_a_completed_process_with_the_console(probe: RunResult) -> None:
    assert isinstance(probe, RunResult)
    assert isinstance(probe, subprocess.CompletedProcess)
    assert probe.args == PROBE
    assert probe.returncode == 0
    assert isinstance(probe.console, str)
    assert "Linux version" in probe.console  # the kernel's own lines
    assert "systemd[1]:" in probe.console  # and systemd's
    assert "uid=" not in probe.console  # the command's output is not on the console


def test_runs_as_root(probe: RunResult) -> None:
    assert key_values(probe.stdout)["uid"] == "0"


def test_runs_inside_user_mode_linux(probe: RunResult) -> None:
    assert int(key_values(probe.stdout)["uml_cpus"]) >= 1
    with open("/proc/cpuinfo") as f:
        assert "User Mode Linux" not in f.read()  # the probe really looked elsewhere


def test_default_cwd_is_scratch_and_home_is_root(probe: RunResult) -> None:
    values = key_values(probe.stdout)
    assert values["pwd"] == "/scratch"
    assert values["home"] == "/root"


def test_scratch_is_tmpfs_by_default(probe: RunResult) -> None:
    assert key_values(probe.stdout)["scratch_fs"] == "tmpfs"


def test_without_network_only_loopback_exists(probe: RunResult) -> None:
    assert key_values(probe.stdout)["net"].split() == ["lo"]


def test_boot_starts_no_target_and_runs_no_generator(probe: RunResult) -> None:
    # sysinit.target would start udev coldplug, tmpfiles... (seconds); the job
    # needs none of it, and generators serve nothing here. The sockets of the
    # bus, journald and udevd load ~40 units; before the guest masked the
    # initrd's units (see _guest_system.MASKED_UNITS) they loaded ~125; on
    # systemd 257 its new sysinit/sockets wants loaded ~115 until left out.
    values = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
    units = int(values["units"])
    assert 5 <= units <= 60, probe.stdout
    assert "targets=0\n" in probe.stdout
    assert "generated=0\n" in probe.stdout


def test_host_usr_is_read_only(probe: RunResult) -> None:
    values = key_values(probe.stdout)
    assert "ro" in values["usr_options"].split(",")
    assert values["usr_write"].startswith("refused:")
    assert "Read-only file system" in values["usr_write"]
    assert not os.path.exists(_USR_PROBE)


# --------------------------------------------------------------------------
# Commands, output, exit status
# --------------------------------------------------------------------------


def test_success_keeps_stdout_and_stderr_apart_and_complete(fakemachine: Machine) -> None:
    result = fakemachine.run(
        "echo 'first line out'; echo 'first line err' >&2; echo second; "
        "echo 'second err' >&2; printf 'last, no newline'"
    )
    assert result.returncode == 0
    assert result.stdout == "first line out\nsecond\nlast, no newline"
    assert result.stderr == "first line err\nsecond err\n"


def test_large_output_comes_back_complete(fakemachine: Machine) -> None:
    # About 5.5 MB on stdout and 1 MB on stderr, written at the same time.
    out_lines, err_lines = 800_000, 160_000
    result = fakemachine.run(
        f"seq 1 {err_lines} >&2 & seq 1 {out_lines}; wait", check=True, timeout=300
    )
    expected_out = "".join(f"{i}\n" for i in range(1, out_lines + 1))
    expected_err = "".join(f"{i}\n" for i in range(1, err_lines + 1))
    assert len(expected_out) > 5_000_000 and len(expected_err) > 1_000_000
    assert len(result.stdout) == len(expected_out)
    assert sha256(result.stdout) == sha256(expected_out)
    assert len(result.stderr) == len(expected_err)
    assert sha256(result.stderr) == sha256(expected_err)


@pytest.mark.parametrize(
    "command",
    [["no-such-command-fakemachine", "arg"], "no-such-command-fakemachine arg"],
    ids=["argv", "shell"],
)
def test_missing_command_exits_127(fakemachine: Machine, command: str | list[str]) -> None:
    result = fakemachine.run(command)
    assert result.returncode == 127
    assert result.stdout == ""
    assert "no-such-command-fakemachine" in result.stderr
    assert "not found" in result.stderr


def test_argv_items_reach_the_program_unchanged(fakemachine: Machine) -> None:
    items = [
        "$s'n\\akes",
        "a b",
        "*",
        "",
        "semi;colon && `id` $(id) | >out",
        "\"double\" 'single'",
        "new\nline",
        "tab\there",
        "--",
        "-n",
        "ünïcødé",
    ]
    command = ["printf", "%s\\n", *items]
    result = fakemachine.run(command, check=True)
    assert result.args == command
    assert result.stdout == "".join(f"{item}\n" for item in items)
    assert result.stderr == ""


def test_shell_string_runs_with_sh_semantics(fakemachine: Machine) -> None:
    script = (
        'x=world; for w in hello "$x"; do printf "%s|" "$w"; done; echo\n'
        "echo $((6 * 7)) | tr 4 X\n"
        "false || echo or-branch\n"
        "cat <<EOF\n"
        "here $x\n"
        "EOF\n"
        "exit 7\n"
    )
    result = fakemachine.run(script)
    assert result.returncode == 7
    assert result.stdout == "hello|world|\nX2\nor-branch\nhere world\n"
    assert result.stderr == ""


def test_check_raises_called_process_error(fakemachine: Machine) -> None:
    command = "echo out; echo err >&2; exit 3"
    with pytest.raises(subprocess.CalledProcessError) as info:
        fakemachine.run(command, check=True)
    error = info.value
    assert error.returncode == 3
    assert error.cmd == command
    assert error.stdout == "out\n"
    assert error.stderr == "err\n"


# --------------------------------------------------------------------------
# Environment and working directory
# --------------------------------------------------------------------------


def test_env_of_machine_and_run_without_host_leaks(
    fakemachine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKEMACHINE_HOST_ONLY", "must-not-leak")
    fakemachine.env["FROM_MACHINE"] = "machine"
    fakemachine.env["OVERRIDDEN"] = "machine"
    fakemachine.env["TRICKY"] = 'it\'s a $HOME "quote" `x` \\ ;'
    result = fakemachine.run("env", env={"OVERRIDDEN": "run", "FROM_RUN": "run"}, check=True)
    env = key_values(result.stdout)
    assert env["FROM_MACHINE"] == "machine"
    assert env["OVERRIDDEN"] == "run"
    assert env["FROM_RUN"] == "run"
    assert env["TRICKY"] == 'it\'s a $HOME "quote" `x` \\ ;'
    assert env["HOME"] == "/root"
    assert "FAKEMACHINE_HOST_ONLY" not in env
    assert "must-not-leak" not in result.stdout
    # The per-run env does not change the machine's.
    assert fakemachine.env == {
        "FROM_MACHINE": "machine",
        "OVERRIDDEN": "machine",
        "TRICKY": 'it\'s a $HOME "quote" `x` \\ ;',
    }


def test_cwd_is_honoured(fakemachine: Machine) -> None:
    result = fakemachine.run(["pwd"], cwd="/usr/share", check=True)
    assert result.stdout == "/usr/share\n"


# --------------------------------------------------------------------------
# Time limit, clean-up
# --------------------------------------------------------------------------


def test_timeout_kills_the_guest(fakemachine: Machine, private_tempdir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(GuestTimeout) as info:
        fakemachine.run("sleep 60", timeout=2)
    elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, FakeMachineError)
    assert 2 <= elapsed < 30
    assert leftovers(os.getpid()) == []
    assert os.listdir(private_tempdir) == []


def test_no_temp_directories_left_behind(
    fakemachine: Machine, tmp_path: Path, private_tempdir: Path
) -> None:
    fakemachine.scratch = "64M"
    fakemachine.add_image(tmp_path / "disk.img", size="16M")
    fakemachine.run("echo x >/scratch/x", check=True)
    assert os.listdir(private_tempdir) == []


# --------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------


class _LineServer(socketserver.TCPServer):
    """Records each connection's first line and answers ``ack:<line>``."""

    allow_reuse_address = True

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _LineHandler)


class _LineHandler(socketserver.StreamRequestHandler):
    timeout = 10  # a silent client cannot hold the server

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _LineServer)
        try:
            line = self.rfile.readline(256)
            server.lines.append(line)
            self.wfile.write(b"ack:" + line)
        except OSError:
            pass


@pytest.fixture
def line_server() -> Iterator[_LineServer]:
    server = _LineServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


GUEST_CLIENT = """\
import socket, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
for attempt in range(15):
    try:
        with socket.create_connection(("10.0.2.2", port), timeout=5) as s:
            s.sendall(token.encode() + b"\\n")
            print(s.makefile("rb").readline().decode().strip())
            break
    except OSError as e:
        print(f"attempt {attempt}: {e}", file=sys.stderr)
        time.sleep(0.5)
else:
    sys.exit(1)
"""


def test_network_reaches_a_server_on_host_loopback(
    fakemachine: Machine, line_server: _LineServer
) -> None:
    fakemachine.network = True
    port = line_server.server_address[1]
    token = secrets.token_hex(8)
    result = fakemachine.run(
        f"ip -4 -o addr show; /usr/bin/python3 -c {shlex.quote(GUEST_CLIENT)} {port} {token}",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "inet 10.0.2." in result.stdout
    assert result.stdout.splitlines()[-1] == f"ack:{token}"
    assert f"{token}\n".encode() in line_server.lines


# --------------------------------------------------------------------------
# in_fakemachine()
# --------------------------------------------------------------------------


def test_in_fakemachine_is_false_on_the_host() -> None:
    assert in_fakemachine() is False


def test_in_fakemachine_is_true_in_a_guest(fakemachine: Machine) -> None:
    # This interpreter and the package, at their host paths, read-only.
    package_root = Path(pytest_fakemachine.__file__).resolve().parent.parent
    for path in dict.fromkeys([sys.prefix, sys.base_prefix, str(package_root)]):
        if path != "/usr" and not path.startswith("/usr/"):
            fakemachine.add_volume(path, read_only=True)
    result = fakemachine.run(
        [sys.executable, "-c", "import pytest_fakemachine as p; print(p.in_fakemachine())"],
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n"


def test_raid_benchmarks_are_skipped_unless_asked_for(fakemachine: Machine) -> None:
    # Skipped by default (most of a second per boot); btrfs RAID5/6 needs them.
    assert "raid6: " not in fakemachine.run("true").console
    fakemachine.raid_benchmarks = True
    console = fakemachine.run("true").console
    assert "raid6: using algorithm" in console
