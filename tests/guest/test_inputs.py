"""Bad input is refused before any guest boots, with a ConfigError naming value and source;
what only the guest can find out (a missing cwd) is a precise error too."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_fakemachine import ConfigError, Machine, _config
from pytest_fakemachine.image.templates import NEW_ROOT, UNIT_NAME
from pytest_fakemachine.image.workdir import command_body

UNDECODABLE = os.fsdecode(b"caf\xe9")  # 'caf\udce9': a Latin-1 file name seen on a UTF-8 host


# --------------------------------------------------------------------------------------
# 3. volumes over the guest's system directories
# --------------------------------------------------------------------------------------

SYSTEM_PATHS = [
    "/", "/etc", "/var", "/tmp", "/home", "/run", "/bin", "/sbin", "/lib", "/lib64",
    "/proc", "/proc/sys", "/sys", "/sys/kernel", "/dev", "/dev/shm", "/usr", "/usr/local/x",
    "/run/fakemachine", "/run/fakemachine/x", "/var/run", "/bin/x", "/lib64/x", "/etc/../proc",
    "/var/./run", "/etc/", "/fakemachine-root", "/fakemachine-root/x",
]  # fmt: skip
BELOW_SYSTEM_PATHS = ["/etc/myapp", "/var/lib/myapp", "/run/myapp", "/var/run/myapp",
                      "/tmp/x", "/home/user", "/srv", "/mnt/x", "/root", "/opt/x"]  # fmt: skip


def test_the_new_roots_staging_directory_is_refused_as_a_system_tree() -> None:
    assert NEW_ROOT in _config._SYSTEM_TREES  # its mounts would be gathered over the volume


@pytest.mark.parametrize("guest", SYSTEM_PATHS)
def test_a_volume_over_a_system_directory_is_refused(tmp_path: Path, guest: str) -> None:
    with pytest.raises(ConfigError) as info:
        Machine().add_volume(tmp_path, guest)
    message = str(info.value)
    assert message.startswith(f"volume {str(tmp_path)!r} from add_volume() of Machine(): ")


def test_the_error_says_where_a_guest_symlink_leads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("'/var/run' (that is /run in the guest)")):
        Machine().add_volume(tmp_path, "/var/run")
    with pytest.raises(ConfigError, match=re.escape("'/bin/x' (that is /usr/bin/x in the guest) "
                                                    "is at or under /usr")):  # fmt: skip
        Machine().add_volume(tmp_path, "/bin/x")


@pytest.mark.parametrize("guest", BELOW_SYSTEM_PATHS)
def test_a_volume_below_a_system_directory_is_allowed(tmp_path: Path, guest: str) -> None:
    machine = Machine()
    machine.add_volume(tmp_path, guest)
    assert machine.volumes[0].guest == guest


@pytest.mark.parametrize("guest", ["/a\\040b", "/x\\134y", "/mnt/\\"])
def test_an_fstab_escape_does_not_get_around_the_whitespace_check(
    tmp_path: Path, guest: str
) -> None:
    with pytest.raises(ConfigError, match="must not contain a backslash"):
        Machine().add_volume(tmp_path, guest)


def test_volumes_below_system_directories_are_mounted(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("here\n")
    machine = Machine()
    machine.add_volume(tmp_path, "/etc/myapp", read_only=True)
    machine.add_volume(tmp_path, "/var/lib/myapp")
    result = machine.run("cat /etc/myapp/file /var/lib/myapp/file; cat /etc/hostname")
    assert result.stdout == "here\nhere\nfakemachine\n", result.stderr


def test_fixture_and_marker_refuse_system_directories(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_fixture(fakemachine, tmp_path):
            fakemachine.add_volume(tmp_path, "/etc")

        @pytest.mark.fakemachine(volumes=[(".", "/usr")], timeout=60)
        def test_marker():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1)  # the marker's error is in its setup
    result.stdout.fnmatch_lines(["*ConfigError: volume * from add_volume() of the fakemachine "
                                 "fixture of *::test_fixture: guest path '/etc' is a system "
                                 "directory of the guest*"])  # fmt: skip
    result.stdout.fnmatch_lines(["*ConfigError: volume * from add_volume() of "
                                 "@pytest.mark.fakemachine on *::test_marker: guest path '/usr' "
                                 "is at or under /usr*"])  # fmt: skip


# --------------------------------------------------------------------------------------
# 8. the smaller ones
# --------------------------------------------------------------------------------------


def test_more_memory_than_the_host_has_is_refused(no_guest: None) -> None:
    host_mib = _config._host_memory_mib()
    assert host_mib is not None
    if host_mib >= 1 << 20:
        pytest.skip("this host has a tebibyte of memory")
    expected = (f"memory='1T' from Machine(): 1048576 MiB, more than this host's memory and "
                f"swap together ({host_mib} MiB)")  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Machine(memory="1T").run("true")


@pytest.mark.parametrize(
    "how",
    ["env value", "run env value", "command", "argv item", "cwd", "volume guest path"],
)
def test_undecodable_text_is_a_config_error(no_guest: None, tmp_path: Path, how: str) -> None:
    machine = Machine()
    kwargs: dict[str, Any] = {}
    command: str | list[str] = "true"
    if how == "env value":
        machine.env["NAME"] = UNDECODABLE
    elif how == "run env value":
        kwargs["env"] = {"NAME": UNDECODABLE}
    elif how == "command":
        command = f"echo {UNDECODABLE}"
    elif how == "argv item":
        command = ["echo", UNDECODABLE]
    elif how == "cwd":
        kwargs["cwd"] = f"/{UNDECODABLE}"
    with pytest.raises(ConfigError, match=r"not valid UTF-8 \(it holds '\\udce9'") as info:
        if how == "volume guest path":
            machine.add_volume(tmp_path, f"/mnt/{UNDECODABLE}")
        machine.run(command, **kwargs)
    assert "caf\\udce9" in str(info.value)
    assert "Machine()" in str(info.value)


@pytest.mark.parametrize("size", [10**20, "100000000T", "9" * 400])
def test_an_absurd_size_is_a_config_error(no_guest: None, tmp_path: Path, size: int | str) -> None:
    with pytest.raises(ConfigError, match=rf"size={re.escape(repr(size))} from .*: too large"):
        Machine().add_image(tmp_path / "disk.img", size=size)
    assert not (tmp_path / "disk.img").exists()
    with pytest.raises(ConfigError, match=rf"scratch={re.escape(repr(size))} from .*: too large"):
        Machine(scratch=size).run("true")


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_the_same_image_by_another_name_is_refused(tmp_path: Path, link: str) -> None:
    image = tmp_path / "disk.img"
    other = tmp_path / "other.img"
    machine = Machine()
    machine.add_image(image, size="1M", label="first")
    if link == "symlink":
        other.symlink_to(image)
    else:
        os.link(image, other)
    with pytest.raises(ConfigError, match=re.escape(
        f"image {str(other)!r} from add_image() of Machine(): the same file as image "
        f"{str(image)!r} (label 'first'), already attached"
    )):  # fmt: skip
        machine.add_image(other, label="second")


def test_a_missing_cwd_is_told_apart_from_the_command_failing(fakemachine: Machine) -> None:
    with pytest.raises(ConfigError, match=re.escape(
        "cwd='/nonexistent' from run() of Machine(): no such directory in the guest"
    )):  # fmt: skip
        Machine().run("true", cwd="/nonexistent")
    result = fakemachine.run("false", cwd="/tmp")
    assert result.returncode == 1


def test_a_command_over_128_kib_runs(fakemachine: Machine) -> None:
    literal = "x" * 200_000
    fakemachine.env["BIG"] = "y" * 100_000  # each exec takes at most 128 KiB of it
    result = fakemachine.run(f"printf %s {literal} | wc -c; echo ${{#BIG}}", cwd="/tmp")
    assert result.stdout.split() == ["200000", "100000"], result.stderr
    assert result.returncode == 0


def test_a_long_argv_body_runs_on_the_host_shell(tmp_path: Path) -> None:
    """The file-borne form of command_body, run by the host's sh (as the guest's job would)."""
    argv = ["sh", "-c", 'echo $# "$PWD" "$GREETING"; printf %s "$1" | wc -c', "sh",
            *["z" * 1000] * 300]  # fmt: skip
    body = command_body(argv, str(tmp_path), {"GREETING": "a 'b' $c"})
    assert "$fm/command" in body
    job = tmp_path / "job.sh"  # the body is too long for sh -c, as the job is in the guest
    job.write_text(f"fm={tmp_path}\n{body}\n")
    proc = subprocess.run(["/bin/sh", str(job)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30, check=False)  # fmt: skip
    assert proc.stdout == f"300 {tmp_path} a 'b' $c\n1000\n", proc.stderr
    short = command_body(["true"], "/", {})
    assert "$fm/command" not in short


def test_work_directory_files_are_private(fakemachine: Machine) -> None:
    fakemachine.scratch = "64M"
    files = ["stdout", "stderr", "started", "scratch.img", "uml/pid", "job.sh", "uml"]
    result = fakemachine.run(
        "cd /run/fakemachine && stat -c '%n %a' " + " ".join(files) + " . ; umask", cwd="/"
    )
    modes = dict(line.split() for line in result.stdout.splitlines()[:-1])
    assert modes == {**dict.fromkeys(files[:-1], "600"), "uml": "700", ".": "700"}, result.stderr
    assert result.stdout.splitlines()[-1] == "0022"  # the command's own umask is the usual one


def test_a_kept_work_directory_is_private_console_log_too(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = pytester.path / "tmp"  # the inner run's own: its kept work directory alone
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakemachine
        def test_fails(tmp_path):
            (tmp_path / "kept").write_text("a failed test's tmp_path comes back")
            assert False
        """
    )
    result = pytester.runpytest_subprocess("--fakemachine-keep")
    result.assert_outcomes(failed=1)
    (work,) = tmp.glob("fakemachine-*")
    modes = {
        str(path.relative_to(work)): stat.S_IMODE(path.lstat().st_mode)
        for path in work.rglob("*")
        if not path.is_symlink()
    }
    assert modes["console.log"] == 0o600
    # systemd warns about a unit that others cannot read (the directory is 0700).
    shown = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert shown == {UNIT_NAME: "0o644"}


def test_repr_of_an_unentered_session(no_guest: None) -> None:
    session = Machine(memory="512M").session()
    assert repr(session).startswith("<Session kernel=")
    assert "memory=512M" in repr(session)
    assert "workdir=None" in repr(session)
