"""Unit tests of settings (options, ini, usage errors) and of small host checks."""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path

import pytest

from pytest_fakemachine import _config as c
from pytest_fakemachine._settings import settings_key
from pytest_fakemachine.backend.uml import host as _uml_host


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytester runs are no xdist workers, even when this test runs in one.

    (Plugins that look at the variable, e.g. pytest-benchmark, would warn, and
    filterwarnings=error turns the warning into an error of the inner run.)
    """
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


# --------------------------------------------------------------------------------------
# 8. command-line and ini settings
# --------------------------------------------------------------------------------------


def _usage_error(result: pytest.RunResult) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "passed" not in result.stdout.str()


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("", ["--fakemachine-memory=many"],
         "ERROR: memory='many' from --fakemachine-memory: not a size*"),
        ("fakemachine_memory = many", [],
         "ERROR: memory='many' from ini option fakemachine_memory in *tox.ini: not a size*"),
        ("", ["--fakemachine-timeout=-1"],
         "ERROR: timeout='-1' from --fakemachine-timeout: must be more than zero"),
    ],
)  # fmt: skip
def test_bad_settings_are_usage_errors(
    pytester: pytest.Pytester, ini: str, args: list[str], expected: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    _usage_error(result)
    result.stderr.fnmatch_lines([expected])


def test_command_line_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nfakemachine_memory = 512M\nfakemachine_timeout = 30\n"
        "fakemachine_kernel = /opt/linux.uml\n"
    )
    settings = pytester.parseconfigure().stash[settings_key]
    assert (settings.memory, settings.timeout, settings.kernel) == (512, 30.0, "/opt/linux.uml")
    assert settings.backend == "auto"
    settings = pytester.parseconfigure(
        "--fakemachine-memory=1G", "--fakemachine-timeout=2.5", "--fakemachine-backend=uml"
    ).stash[settings_key]
    assert (settings.memory, settings.timeout, settings.backend) == (1024, 2.5, "uml")


def test_default_settings(pytester: pytest.Pytester) -> None:
    settings = pytester.parseconfigure().stash[settings_key]
    assert settings.memory == c.DEFAULT_MEMORY_MIB == 2048
    assert settings.timeout is None
    assert settings.kernel is None
    assert settings.backend == "auto"
    assert settings.show_boot is False
    assert settings.keep is False


def test_help_lists_options_in_their_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*(fakemachine):",
        "  --fakemachine-backend={auto,uml}",
        "*--fakemachine-memory=SIZE*",
        "*--fakemachine-timeout=SECONDS*",
        "*--fakemachine-kernel=PATH*",
        "*--fakemachine-show-boot*",
        "*--fakemachine-keep*",
    ])  # fmt: skip
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.endswith("(fakemachine):"))
    end = lines.index("", start)
    group = "\n".join(lines[start:end])
    for option in ("backend", "memory", "timeout", "kernel", "show-boot", "keep"):
        assert f"--fakemachine-{option}" in group
    result.stdout.fnmatch_lines(["*fakemachine_memory (string):*"])


def test_markers_lists_the_marker(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.fakemachine(images=None, volumes=None, *"])
    result.stdout.fnmatch_lines(["*scope='function'): run the test*"])


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("", ["--fakemachine-memory=2X"], "memory='2X' from --fakemachine-memory: not a size"),
        ("", ["--fakemachine-memory="], "memory='' from --fakemachine-memory: not a size"),
        ("", ["--fakemachine-timeout=0"], "timeout='0' from --fakemachine-timeout: must be"),
        ("fakemachine_timeout = never", [],
         "timeout='never' from ini option fakemachine_timeout in *tox.ini: expected seconds"),
        ("fakemachine_backend = bogus", [],
         "backend='bogus' from ini option fakemachine_backend in *tox.ini: expected auto or uml"),
        ("fakemachine_memory = 32M", [],
         "memory='32M' from ini option fakemachine_memory in *tox.ini: a guest needs at least 64M"),
    ],
)  # fmt: skip
def test_in_process_usage_errors(
    pytester: pytest.Pytester, ini: str, args: list[str], expected: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    with pytest.raises(pytest.UsageError) as excinfo:
        pytester.parseconfigure(*args)
    assert fnmatch.fnmatchcase(str(excinfo.value), expected + "*"), str(excinfo.value)


@pytest.mark.parametrize(
    ("tmpdir", "shm_free_mib", "tmp_free_mib", "expected"),
    [
        ("/somewhere", 64, 10_000, None),  # TMPDIR set: UML uses it, as the user chose
        ("", 4096, 10_000, None),  # /dev/shm holds all of memory=2048M
        ("", 64, 10_000, "/tmp"),  # Docker's 64 MiB /dev/shm: the temporary directory
        ("", 64, 32, None),  # nowhere better: stay, and let the BootError explain
    ],
)
def test_memory_dir_moves_guest_memory_only_when_dev_shm_cannot_hold_it(
    monkeypatch: pytest.MonkeyPatch,
    tmpdir: str,
    shm_free_mib: int,
    tmp_free_mib: int,
    expected: str | None,
) -> None:
    free = {_uml_host.SHM: shm_free_mib << 20, "/tmp": tmp_free_mib << 20}
    monkeypatch.setenv("TMPDIR", tmpdir)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: "/tmp")
    monkeypatch.setattr(_uml_host, "_free_bytes", lambda path: free[path])
    assert _uml_host.memory_dir(2048) == expected


@pytest.mark.parametrize(
    ("os_release", "ubuntu"),
    [
        ('PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\n', True),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', True),
        ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n', False),
        (None, False),
    ],
)
def test_ubuntu_is_told_where_user_mode_linux_comes_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, os_release: str | None, ubuntu: bool
) -> None:
    path = tmp_path / "os-release"
    if os_release is not None:
        path.write_text(os_release)
    assert _uml_host._on_ubuntu(str(path)) is ubuntu
    monkeypatch.setattr(_uml_host, "_on_ubuntu", lambda: ubuntu)
    for package in ("user-mode-linux", "libslirp-helper"):
        fix = _uml_host.apt_fix(package)
        assert (fix == f"sudo apt-get install {package}") is not ubuntu
        assert ("install Debian 12's" in fix) is ubuntu
    assert _uml_host.apt_fix("busybox") == "sudo apt-get install busybox"


@pytest.mark.parametrize(
    ("console_line", "full"),
    [
        ("[0.02] Bus error - the host /dev/shm or /tmp mount likely just ran out of space", True),
        # Seen when systemd, not the kernel, touched the page that did not fit.
        ("[0.26] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000007", True),
        ("[0.26] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009", False),
        ("[0.02] Kernel panic - not syncing: VFS: Unable to mount root fs", False),
    ],
)
def test_memory_file_full_is_read_off_the_console(console_line: str, full: bool) -> None:
    assert _uml_host.memory_file_full(f"Run /init as init process\n{console_line}\n") is full
