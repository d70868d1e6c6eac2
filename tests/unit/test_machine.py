"""Unit tests of Machine's configuration and of the command body; no guest boots.

Every test that goes through ``Machine.run()`` replaces the UML backend's ``UmlProcess``
with a class that fails the test when it is constructed (the ``no_guest``
fixture), so a ConfigError that came too late cannot pass unnoticed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_fakemachine import ConfigError, Machine, RunResult, _session, in_fakemachine
from pytest_fakemachine.backend import uml
from pytest_fakemachine.backend.base import Prepared
from pytest_fakemachine.image.workdir import GUEST_PATH, command_body

LABEL_DIR = "/dev/disk/by-fakemachine-label"
M = 1 << 20


# --------------------------------------------------------------------------------------
# 5. Machine validation, before any guest
# --------------------------------------------------------------------------------------


class _GuestReached(Exception):
    """Raised by the stand-in GuestProcess of the positive control."""

    def __init__(self, job: str, kernel_args: list[str]) -> None:
        super().__init__("a guest process was constructed")
        self.job = job
        self.kernel_args = kernel_args


def test_guard_is_wired(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Positive control: a valid configuration does reach the backend's GuestProcess."""
    kernel = tmp_path / "linux.uml"
    kernel.write_text("")

    def fake_prepare(self: object, kernel_arg: object, network: bool, extra: object) -> Prepared:
        return Prepared(kernel, tmp_path, Path("/usr/lib/modules"), ("seccomp=auto",))

    def fake_initramfs(layout: object) -> Path:
        return tmp_path / "initramfs.cpio"

    class ReachedGuest:
        def __init__(self, kernel: Path, args: list[str], *, workdir: Path, **kw: object) -> None:
            raise _GuestReached((workdir / "job.sh").read_text(), args)

    monkeypatch.setattr(uml.UmlBackend, "prepare", fake_prepare)
    monkeypatch.setattr(_session, "initramfs", fake_initramfs)
    monkeypatch.setattr(uml, "UmlProcess", ReachedGuest)
    machine = Machine(memory="1G", env={"A": "1"})
    with pytest.raises(_GuestReached) as excinfo:
        machine.run(["echo", "a b"], env={"B": "2"}, cwd="/tmp")
    assert command_body(["echo", "a b"], "/tmp", {"A": "1", "B": "2"}) in excinfo.value.job
    assert "mem=1024M" in excinfo.value.kernel_args
    assert "seccomp=auto" in excinfo.value.kernel_args  # the kernel's own arguments
    assert machine.last_workdir is not None
    assert not machine.last_workdir.exists(), "the work directory must be removed"


def test_add_image_default_labels(tmp_path: Path) -> None:
    machine = Machine()
    assert machine.add_image(tmp_path / "a.img", size="1M") == f"{LABEL_DIR}/fakedisk-0"
    assert machine.add_image(tmp_path / "b.img", size=4096) == f"{LABEL_DIR}/fakedisk-1"
    assert machine.add_image(tmp_path / "c.img", size="1M", label="data") == f"{LABEL_DIR}/data"
    assert [i.label for i in machine.images] == ["fakedisk-0", "fakedisk-1", "data"]
    assert [i.path for i in machine.images] == [tmp_path / n for n in ("a.img", "b.img", "c.img")]
    assert (tmp_path / "a.img").stat().st_size == M
    assert (tmp_path / "b.img").stat().st_size == 4096


def test_add_image_existing_as_is(tmp_path: Path) -> None:
    image = tmp_path / "mine.img"
    image.write_bytes(b"keep me")
    machine = Machine()
    assert machine.add_image(image, label="mine") == f"{LABEL_DIR}/mine"
    assert image.read_bytes() == b"keep me"


def test_add_image_relative_path_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    machine = Machine()
    machine.add_image("rel.img", size="1M")
    assert machine.images[0].path == tmp_path / "rel.img"


def test_add_image_duplicate_label(tmp_path: Path) -> None:
    machine = Machine()
    machine.add_image(tmp_path / "a.img", size="1M", label="data")
    with pytest.raises(ConfigError, match=r"'data'.*already used"):
        machine.add_image(tmp_path / "b.img", size="1M", label="data")
    assert not (tmp_path / "b.img").exists(), "a refused image must not be created"
    # An explicit label may also collide with a later default one.
    machine.add_image(tmp_path / "c.img", size="1M", label="fakedisk-2")
    with pytest.raises(ConfigError, match="already used"):
        machine.add_image(tmp_path / "d.img", size="1M")
    assert len(machine.images) == 2


def test_add_image_same_file_twice(tmp_path: Path) -> None:
    machine = Machine()
    machine.add_image(tmp_path / "a.img", size="1M")
    with pytest.raises(ConfigError, match="already attached"):
        machine.add_image(tmp_path / "a.img", label="again")
    assert len(machine.images) == 1


def test_add_image_bad_label_or_size_creates_nothing(tmp_path: Path) -> None:
    machine = Machine()
    with pytest.raises(ConfigError, match="label='bad label'"):
        machine.add_image(tmp_path / "a.img", size="1M", label="bad label")
    with pytest.raises(ConfigError, match="size='many'") as excinfo:
        machine.add_image(tmp_path / "a.img", size="many")
    assert "add_image()" in str(excinfo.value)
    with pytest.raises(ConfigError, match="does not exist"):
        machine.add_image(tmp_path / "a.img")
    assert not (tmp_path / "a.img").exists()
    assert machine.images == ()


def test_seventeenth_image_refused(tmp_path: Path) -> None:
    machine = Machine()
    for i in range(16):
        assert machine.add_image(tmp_path / f"{i}.img", size=4096) == f"{LABEL_DIR}/fakedisk-{i}"
    with pytest.raises(ConfigError, match="16 disks"):
        machine.add_image(tmp_path / "16.img", size=4096)
    assert not (tmp_path / "16.img").exists()
    assert len(machine.images) == 16


def test_sixteen_images_and_scratch_refused(tmp_path: Path, no_guest: None) -> None:
    machine = Machine(scratch="64M")
    for i in range(16):
        machine.add_image(tmp_path / f"{i}.img", size=4096)
    with pytest.raises(ConfigError, match=r"scratch disk.*16 disks"):
        machine.run("true")


def test_add_volume(tmp_path: Path) -> None:
    machine = Machine()
    machine.add_volume(tmp_path)
    machine.add_volume(str(tmp_path), "/out", read_only=True)
    assert [(v.host, v.guest, v.read_only) for v in machine.volumes] == [
        (tmp_path, str(tmp_path), False),
        (tmp_path, "/out", True),
    ]


@pytest.mark.parametrize(
    ("make", "guest", "message"),
    [
        ("missing", None, "does not exist"),
        ("file", None, "not a directory"),
        ("dir", "relative/dir", "must be absolute"),
        ("dir", "/has space", "whitespace"),
        ("dir", "/", "over '/'"),
    ],
)
def test_add_volume_errors(tmp_path: Path, make: str, guest: str | None, message: str) -> None:
    host = tmp_path / "host"
    if make == "file":
        host.write_text("x")
    elif make == "dir":
        host.mkdir()
    machine = Machine()
    with pytest.raises(ConfigError, match=re.escape(message)) as excinfo:
        machine.add_volume(host, guest)
    assert "add_volume()" in str(excinfo.value)
    assert machine.volumes == ()


def test_bogus_backend(no_guest: None) -> None:
    with pytest.raises(ConfigError, match="backend='bogus'"):
        Machine(backend="bogus").run("true")


def test_bad_memory(no_guest: None) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Machine(memory="many").run("true")
    assert "memory='many'" in str(excinfo.value)
    assert "Machine()" in str(excinfo.value)
    machine = Machine()
    machine.memory = "-1G"
    with pytest.raises(ConfigError, match=re.escape("memory='-1G'")):
        machine.run(["true"])


def test_source_names_the_machine(no_guest: None) -> None:
    machine = Machine(memory="many")
    machine.source = "the fakemachine fixture of test_x.py::test_y"
    with pytest.raises(ConfigError, match=re.escape("test_x.py::test_y")):
        machine.run("true")


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("scratch", "many", "scratch='many'"),
        ("scratch", -1, "scratch=-1"),
        ("network", "yes", "network='yes'"),
        ("timeout", -1, "timeout=-1"),
        ("timeout", "forever", "timeout='forever'"),
    ],
)
def test_bad_attributes(no_guest: None, attribute: str, value: object, message: str) -> None:
    machine = Machine()
    setattr(machine, attribute, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        machine.run("true")


@pytest.mark.parametrize(
    "env",
    [{"1BAD": "x"}, {"A-B": "x"}, {"A=B": "x"}, {"": "x"}, {"A B": "x"}, {5: "x"}],
    ids=repr,
)
def test_bad_env_name(no_guest: None, env: dict[Any, str]) -> None:
    with pytest.raises(ConfigError, match="env name"):
        Machine(env=env).run("true")
    with pytest.raises(ConfigError, match="env name"):
        Machine().run("true", env=env)
    machine = Machine()
    machine.env.update(env)
    with pytest.raises(ConfigError, match="env name"):
        machine.run("true")


@pytest.mark.parametrize("value", [1, None, b"x", ["x"], "nul\0"], ids=repr)
def test_bad_env_value(no_guest: None, value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"env['GOOD']={value!r}")):
        Machine(env={"GOOD": value}).run("true")
    with pytest.raises(ConfigError, match=re.escape("env['GOOD']")):
        Machine().run("true", env={"GOOD": value})


@pytest.mark.parametrize(
    "command",
    [[], (), "nul\0byte", ["echo", "nul\0byte"], ["echo", 5], [None], 5, None, b"true"],
    ids=repr,
)
def test_bad_command(no_guest: None, command: Any) -> None:
    with pytest.raises(ConfigError, match="command"):
        Machine().run(command)


@pytest.mark.parametrize("cwd", ["relative", "/with space", ""])
def test_bad_cwd(no_guest: None, cwd: str) -> None:
    with pytest.raises(ConfigError, match="guest path"):
        Machine().run("true", cwd=cwd)


def test_bad_run_timeout(no_guest: None) -> None:
    with pytest.raises(ConfigError, match=re.escape("timeout=0")):
        Machine().run("true", timeout=0)


def test_run_result_is_completed_process() -> None:
    result = RunResult(["a"], 3, "out", "err", "console")
    assert isinstance(result, subprocess.CompletedProcess)
    assert (result.args, result.returncode, result.stdout, result.stderr, result.console) == (
        ["a"], 3, "out", "err", "console",
    )  # fmt: skip
    with pytest.raises(subprocess.CalledProcessError):
        result.check_returncode()


def test_not_in_fakemachine() -> None:
    assert in_fakemachine() is False


# --------------------------------------------------------------------------------------
# 6. command_body, run by the host's /bin/sh
# --------------------------------------------------------------------------------------

_SHOW = "import sys, json, os; print(json.dumps([sys.argv[1:], dict(os.environ), os.getcwd()]))"
TRICKY_ARGS = [
    "$s'n\\akes", "a b", "", "*", "$(echo x)", "`echo y`", "\n", "--", "-c", "'", '"',
    "\\", "$HOME", "${PATH}", "a;b", "a|b", "&", "~", "!", "\t", "\u2713", "x=y", "-l",
]  # fmt: skip


def _run_body(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", body], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30, check=False)  # fmt: skip


def _show(argv_tail: list[str], cwd: Path, env: dict[str, str]) -> tuple[Any, ...]:
    result = _run_body(command_body([sys.executable, "-c", _SHOW, *argv_tail], str(cwd), env))
    assert result.returncode == 0, result.stderr
    args, environ, pwd = json.loads(result.stdout)
    return args, environ, pwd


def test_command_body_argv_unchanged(tmp_path: Path) -> None:
    args, _, pwd = _show(TRICKY_ARGS, tmp_path, {})
    assert args == TRICKY_ARGS
    assert pwd == str(tmp_path)


def test_command_body_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKEMACHINE_SECRET", "do-not-leak")
    env = {"GREETING": "hello world", "WEIRD": "a 'b' \"c\" $HOME `x` \n\\", "EMPTY": ""}
    _, environ, _ = _show([], tmp_path, env)
    assert "FAKEMACHINE_SECRET" not in environ
    # The shell that execs the program exports PWD of its own accord; nothing else is added.
    assert environ.pop("PWD", str(tmp_path)) == str(tmp_path)
    assert environ == {"HOME": "/root", "PATH": GUEST_PATH, "LANG": "C.UTF-8", **env}


def test_command_body_env_overrides_defaults(tmp_path: Path) -> None:
    _, environ, _ = _show([], tmp_path, {"HOME": "/elsewhere", "LANG": "C"})
    assert environ["HOME"] == "/elsewhere"
    assert environ["LANG"] == "C"
    assert environ["PATH"] == GUEST_PATH


def test_command_body_tricky_cwd(tmp_path: Path) -> None:
    cwd = tmp_path / "dir with 'quote' and $dollar"
    cwd.mkdir()
    _, _, pwd = _show([], cwd, {})
    assert pwd == str(cwd)
    result = _run_body(command_body("pwd", str(cwd), {}))
    assert result.stdout == f"{cwd}\n"


def test_command_body_missing_cwd_fails(tmp_path: Path) -> None:
    result = _run_body(command_body(["true"], str(tmp_path / "missing"), {}))
    assert result.returncode != 0


def test_command_body_missing_command_127(tmp_path: Path) -> None:
    assert _run_body(command_body(["no-such-command-fm"], str(tmp_path), {})).returncode == 127
    assert _run_body(command_body("no-such-command-fm", str(tmp_path), {})).returncode == 127
    missing = str(tmp_path / "no-such-file")
    assert _run_body(command_body([missing, "x"], str(tmp_path), {})).returncode == 127


def test_command_body_exit_status(tmp_path: Path) -> None:
    assert _run_body(command_body("exit 3", str(tmp_path), {})).returncode == 3
    assert _run_body(command_body(["sh", "-c", "exit 5"], str(tmp_path), {})).returncode == 5
    assert _run_body(command_body(["false"], str(tmp_path), {})).returncode == 1


def test_command_body_shell_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKEMACHINE_SECRET", "do-not-leak")
    script = (
        "echo $HOME $GREETING; x=20; echo $((x + 1)) > out.txt; "
        "false || echo fallback; for w in a 'b c'; do echo \"<$w>\"; done; "
        'echo "[${FAKEMACHINE_SECRET-unset}]"; echo err >&2'
    )
    result = _run_body(command_body(script, str(tmp_path), {"GREETING": "hi there"}))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "/root hi there\nfallback\n<a>\n<b c>\n[unset]\n"
    assert result.stderr == "err\n"
    assert (tmp_path / "out.txt").read_text() == "21\n"


def test_command_body_argv_is_not_a_shell_string(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = _run_body(command_body(["echo", f"; touch {marker}", f"$(touch {marker})"],
                                    str(tmp_path), {}))  # fmt: skip
    assert result.stdout == f"; touch {marker} $(touch {marker})\n"
    assert not marker.exists()
