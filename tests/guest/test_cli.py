"""The ``pytest-fakemachine`` command: parsing (no guest), then real runs of the
console script in real guests (exit status, streams, stdin, flags, signals)."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import wait_for_no_leftovers
from pytest_fakemachine import ConfigError
from pytest_fakemachine.cli.args import UsageError, parse
from pytest_fakemachine.cli.main import build_machine, main
from pytest_fakemachine.cli.streams import CHUNK_MAX

CLI = str(Path(sys.executable).parent / "pytest-fakemachine")
MiB = 1 << 20


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the console script; stdin is /dev/null unless given."""
    if stdin is None:
        return subprocess.run([CLI, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              check=False, timeout=300)  # fmt: skip
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, check=False, timeout=300)


# --- parsing (no guest) -------------------------------------------------------


def test_every_flag_of_fakemachine_and_ours_is_parsed(tmp_path: Path) -> None:
    opts = parse(
        ["-b", "kvm", "-v", f"{tmp_path}:/work", "--read-only", "-v", str(tmp_path),
         "-i", f"{tmp_path}/a.img:64M", "--label", "data", "-i", f"{tmp_path}/b.img",
         "-e", "A:1", "--environ-var", "URL:http://x:8", "-m", "512", "-s", "1G", "-c", "4",
         "--show-boot", "-q", "--network", "--timeout", "60", "--boot-timeout", "30",
         "--kernel", "/k", "--", "make && make install"]
    )  # fmt: skip
    assert [(v.host, v.guest, v.read_only) for v in opts.volumes] == [
        (str(tmp_path), "/work", True),
        (str(tmp_path), None, False),
    ]
    assert [(i.path, i.size, i.label) for i in opts.images] == [
        (f"{tmp_path}/a.img", "64M", "data"),
        (f"{tmp_path}/b.img", None, None),
    ]
    assert opts.env == {"A": "1", "URL": "http://x:8"}  # split at the first ':'
    assert (opts.memory, opts.scratch, opts.cpus) == ("512", "1G", 4)
    assert opts.show_boot and opts.quiet and opts.network
    assert (opts.timeout, opts.boot_timeout, opts.kernel) == (60.0, 30.0, "/k")
    assert opts.backend == "kvm"  # selects: kvm and qemu are backends of their own
    assert opts.command == ["make && make install"]
    assert opts.warnings == []  # -c on UML warns once the backend is known (build_machine)


def test_command_words_with_or_without_dashes() -> None:
    assert parse(["-m", "1G", "ls", "-l", "/"]).command == ["ls", "-l", "/"]
    assert parse(["--", "-v", "x"]).command == ["-v", "x"]  # after --, nothing is a flag
    assert parse([]).command == []
    with pytest.raises(UsageError, match="before and after"):
        parse(["ls", "--", "x"])


def test_sizes_are_binary_and_memory_bare_numbers_are_mib(tmp_path: Path) -> None:
    machine = build_machine(parse(["-m", "300", "-s", "64M", "-i", f"{tmp_path}/d.img:1M"]))
    session = machine.session()
    assert session.memory_mib == 300
    assert session.scratch_bytes == 64 * MiB
    assert (tmp_path / "d.img").stat().st_size == MiB
    assert build_machine(parse(["-m", "1G"])).session().memory_mib == 1024


def test_boot_timeout_is_the_flags_alone() -> None:
    # The session's own boot limit (Machine's default 120 s) would kill a
    # guest before a longer --boot-timeout; the flag's limit, set by run(), is the only one.
    assert build_machine(parse(["--boot-timeout", "300"])).session().boot_timeout is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["-b", "xen"], "invalid choice: 'xen'"),
        (["-m", "lots"], "memory='lots' from pytest-fakemachine -m/--memory: not a size"),
        (
            ["-m", "10"],
            "memory='10' from pytest-fakemachine -m/--memory: a guest needs at least 64M",
        ),
        (["--scratchsize=-5G"], "scratch='-5G' from pytest-fakemachine -s/--scratchsize"),
        (["-i", "disk.img:12Q"], "size='12Q'"),
        (["-i", "a:b:c"], "'a:b:c': expected PATH or PATH:SIZE"),
        (["-v", "/a:/b:/c"], "'/a:/b:/c': expected HOST or HOST:GUEST"),
        (["-v", "/nonexistent-dir"], "volume '/nonexistent-dir' from"),
        (["-v", "/tmp:relative"], "guest path 'relative'"),
        (["-e", "NOCOLON"], "'NOCOLON': expected VAR:VALUE"),
        (["-e", "1X:v"], "env name '1X'"),
        (["-c", "many"], "'many': expected a number of CPUs"),
        (["--timeout", "soon"], "timeout='soon'"),
        (["--read-only"], "--read-only must follow the -v/--volume it is for"),
        (["-i", "x.img:1M", "--label", "bad label"], "label='bad label'"),
        (["--label", "x"], "--label must follow the -i/--image it is for"),
    ],
)
def test_a_bad_flag_or_value_is_named_and_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["run", *args, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "usage: pytest-fakemachine" in err or "pytest-fakemachine: error:" in err


def test_doctor_stays_a_verb_and_takes_no_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "-q"]) == 2
    assert "usage: pytest-fakemachine doctor" in capsys.readouterr().err


def test_a_missing_kernel_says_so_and_exits_125(tmp_path: Path) -> None:
    result = cli("--kernel", str(tmp_path / "nope"), "--", "true")
    assert result.returncode == 125
    assert f"UML kernel '{tmp_path}/nope' is not an executable file" in result.stderr.decode()


def test_config_errors_name_the_command_line_as_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="of pytest-fakemachine: does not exist"):
        build_machine(parse(["-i", f"{tmp_path}/missing.img"]))


# --- real guests ------------------------------------------------------------------


def test_exit_status_and_streams_apart_argv_unchanged() -> None:
    script = (
        'printf "%s|" "$@"; echo "$GREETING $IN_FAKE_MACHINE $PWD $(id -u)"; echo oops >&2; exit 3'
    )
    result = cli("-e", "GREETING:hello: world", "--", "sh", "-c", script, "x",
                 "a b", "$HOME", "*", "")  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"a b|$HOME|*||hello: world yes /scratch 0\n"
    assert result.stderr == b"oops\n"


def test_bytes_that_are_not_utf8_reach_the_command_unchanged() -> None:
    # sys.argv holds them as surrogate escapes; the job file must give the bytes back.
    result = subprocess.run(
        [os.fsencode(CLI), b"--", b"printf", b"%s|%s", b"\xff\xfe", b"caf\xc3\xa9"],
        stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=300,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, b"\xff\xfe|caf\xc3\xa9", b"")


def test_a_closed_pipe_ends_the_command_as_on_the_host() -> None:
    # `| head -c 10` closes our stdout: the command must die of SIGPIPE as
    # `yes | head -c 10` does on the host, not write into the closed pipe until killed.
    script = f'{shlex.quote(CLI)} -- yes | head -c 10; echo "status=${{PIPESTATUS[0]}}"'
    started = time.monotonic()
    with subprocess.Popen(["bash", "-c", script], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("the command kept writing into the closed pipe for 90 s")
    elapsed = time.monotonic() - started
    assert (out, err) == (b"y\ny\ny\ny\ny\nstatus=141\n", b"")
    assert elapsed < 60, elapsed  # a boot and a shutdown, not a timeout
    assert not wait_for_no_leftovers(None, seconds=10)  # the CLI is gone: no orphaned guest


def test_one_word_is_a_shell_command_line() -> None:
    result = cli("--", "echo one && echo two; exit 5")
    assert (result.returncode, result.stdout, result.stderr) == (5, b"one\ntwo\n", b"")


def test_stdin_is_passed_through_binary_safe_tar(tmp_path: Path) -> None:
    every_byte = bytes(range(256)) * 64  # NUL, ^C, ^D, \r: what a tty would eat
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "bytes.bin").write_bytes(every_byte)
    (source / "text.txt").write_text("hello\r\nworld\n")
    out = tmp_path / "out"
    out.mkdir()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(source, arcname=".")
    result = cli("-v", f"{out}:/out", "--", "tar x -C /out", stdin=archive.getvalue())
    assert result.returncode == 0, result.stderr
    assert (out / "sub" / "bytes.bin").read_bytes() == every_byte
    assert (out / "text.txt").read_bytes() == b"hello\r\nworld\n"


def test_stdin_many_chunks_every_byte_value_exact() -> None:
    """Several spool chunks (more than CHUNK_MAX), every byte value first,
    through one command that reads it all: the digest and the length match."""
    data = bytes(range(256)) * 256 + b"\x03\x04\r\n\x00" * 1000 + os.urandom(CHUNK_MAX + 3 * MiB)
    result = cli("--", "sh", "-c", "tee /tmp/copy | sha256sum; wc -c </tmp/copy", stdin=data)
    assert result.returncode == 0, result.stderr
    digest, _, length = result.stdout.decode().partition("-")
    assert (digest.strip(), int(length)) == (hashlib.sha256(data).hexdigest(), len(data))


def test_stdin_is_streamed_line_by_line() -> None:
    """The guest answers the first line while the host's stdin is still open:
    the second line is written only once the answer came back."""
    with subprocess.Popen([CLI, "--timeout", "120", "--", "sh", "-c",
                           "read x; echo got $x; read y; echo then $y"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"a\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"got a\n"
        proc.stdin.write(b"b\n")
        proc.stdin.close()
        assert proc.stdout.read() == b"then b\n"
        assert proc.wait(timeout=60) == 0


def test_no_command_the_shell_reads_stdin() -> None:
    result = cli(stdin=b"echo $((6 * 7))\necho to-stderr >&2\nexit 4\n")
    assert (result.returncode, result.stdout, result.stderr) == (4, b"42\n", b"to-stderr\n")


def test_output_is_streamed_live(tmp_path: Path) -> None:
    """The guest waits for a file the host makes only after it has seen the
    first line on each stream: if output came at the end, it never would."""
    go = tmp_path / "go"
    script = ("echo first; echo first-err >&2; i=0; "
              "while [ ! -e /v/go ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; "
              "[ -e /v/go ] && echo second || echo never-saw-go")  # fmt: skip
    with subprocess.Popen([CLI, "-v", f"{tmp_path}:/v", "--", script],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"first\n"
        assert proc.stderr.readline() == b"first-err\n"
        go.touch()
        assert proc.stdout.read() == b"second\n"
        assert proc.wait(timeout=60) == 0


def test_flags_reach_the_guest(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    image = tmp_path / "data.img"
    checks = (
        "grep MemTotal /proc/meminfo; "
        'awk \'$2=="/scratch"{print "scratch", $3}\' /proc/mounts; '
        "blockdev --getsize64 /dev/disk/by-fakemachine-label/data; "
        "touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused; "
        "ip -o -4 addr show dev vec0 | awk '{print $4}'"
    )
    result = cli("-m", "300", "-s", "64M", "-i", f"{image}:32M", "--label", "data",
                 "-v", f"{ro}:/ro", "--read-only", "--network", "-c", "4", "-b", "uml",
                 "--show-boot", "--", checks)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    mem_kib = int(lines[0].split()[1])
    assert 250 * 1024 < mem_kib <= 300 * 1024
    assert lines[1:] == ["scratch ext4", str(32 * MiB), "ro-refused", "10.0.2.15/24"]
    err = result.stderr.decode()
    assert "pytest-fakemachine: warning: -c 4: UML guests have one CPU\n" in err
    # fakemachine's flags keep working on UML: -c, with a warning.
    assert "Run /init as init process" in err  # --show-boot: the console, on stderr


def test_a_backend_that_cannot_run_here_says_why_with_125() -> None:
    # No KVM on this project's machines (a CPU without vmx/svm, or no QEMU):
    # -b kvm selects it, and the command fails at once, saying why.
    result = cli("-b", "kvm", "--", "true")
    if result.returncode == 0:
        pytest.skip("KVM runs guests on this host")
    assert result.returncode == 125
    assert result.stderr.decode().startswith("pytest-fakemachine: kvm")


def test_quiet_timeout_and_boot_timeout() -> None:
    result = cli("-q", "-c", "2", "--timeout", "2", "--", "exec sleep 600")
    assert result.returncode == 124
    err = result.stderr.decode()
    assert "warning" not in err  # -q
    assert "pytest-fakemachine: the guest timed out after 2 s and was killed" in err
    # No guest reaches its command in 10 ms.
    booting = cli("--boot-timeout", "0.01", "--", "true")
    assert booting.returncode == 125
    assert "did not reach the command within --boot-timeout=0.01 s" in booting.stderr.decode()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_signal_leaves_no_guest_and_no_temp_dir(tmp_path: Path, signum: int) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    # SIGINT at its default, however this suite was started (a background job
    # or `trap '' INT` passes it on ignored, and the command would keep that).
    default_int = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
        " os.execv(sys.argv[1], sys.argv[1:])"
    )
    with subprocess.Popen(
        [sys.executable, "-c", default_int, CLI, "-m", "256", "--", "echo ready; exec sleep 600"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(temp)},
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        assert list(temp.iterdir())  # the guest's work directory
        proc.send_signal(signum)
        status = proc.wait(timeout=60)
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum)
    assert not wait_for_no_leftovers(proc.pid, seconds=30)
    deadline = time.monotonic() + 30  # after SIGKILL the reaper removes it, a moment later
    while list(temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(temp.iterdir())
