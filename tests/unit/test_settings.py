"""Unit tests of settings (options, ini, usage errors) and of small host checks."""

from __future__ import annotations

import dataclasses
import fnmatch
import shutil
import tempfile
from pathlib import Path

import pytest

from pytest_fakemachine import ConfigError
from pytest_fakemachine import _config as c
from pytest_fakemachine._settings import parse_defaults, settings_key
from pytest_fakemachine.backend.uml import host as _uml_host
from pytest_fakemachine.runs.dispatch import add_default_images, new_machine
from pytest_fakemachine.runs.markers import apply_marker, marked_test


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
        "  --fakemachine-backend={auto,uml,kvm,qemu}",
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
    result.stdout.fnmatch_lines(["*scope='function', backend=None, cpus=None): run the test*"])


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("", ["--fakemachine-memory=2X"], "memory='2X' from --fakemachine-memory: not a size"),
        ("", ["--fakemachine-memory="], "memory='' from --fakemachine-memory: not a size"),
        ("", ["--fakemachine-timeout=0"], "timeout='0' from --fakemachine-timeout: must be"),
        ("fakemachine_timeout = never", [],
         "timeout='never' from ini option fakemachine_timeout in *tox.ini: expected seconds"),
        ("fakemachine_backend = bogus", [],
         "backend='bogus' from ini option fakemachine_backend in *tox.ini: expected one of auto, "
         "uml, kvm, qemu"),
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


# --------------------------------------------------------------------------------------
# fakemachine_defaults: the marker's default keywords, parsed and merged
# --------------------------------------------------------------------------------------


def test_defaults_parse_every_keyword() -> None:
    text = """scope=module scratch=64M network=yes memory=1G timeout=600
              boot_timeout=30 images=data:64M,log:1K backend=uml cpus=1"""
    assert parse_defaults(text, "here") == {
        "scope": "module",
        "scratch": 64 << 20,
        "network": True,
        "memory": 1024,
        "timeout": 600.0,
        "boot_timeout": 30.0,
        "images": (("data", 64 << 20), ("log", 1024)),
        "backend": "uml",
        "cpus": 1,
    }
    for word, value in {"true": True, "1": True, "No": False, "FALSE": False, "0": False}.items():
        assert parse_defaults(f"network={word}", "here") == {"network": value}
    assert parse_defaults("timeout=9 scratch=1M timeout=none scratch=None", "here") == {
        "timeout": None,  # a later keyword wins; none unsets
        "scratch": None,
    }
    assert parse_defaults("", "here") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scrach=64M", "here: unknown keyword 'scrach' in 'scrach=64M' (known: scope, *"),
        ("env=A", "here: unknown keyword 'env' in 'env=A'*"),
        ("network", "here: 'network' is not keyword=value"),
        ("=1", "here: '=1' is not keyword=value"),
        ("network=maybe", "network='maybe' from here: expected true/false/yes/no/1/0"),
        ("scope=class", "scope='class' from here: expected one of function, module, session"),
        ("memory=lots", "memory='lots' from here: not a size*"),
        ("scratch=-1M", "scratch='-1M' from here: not a size*"),
        ("timeout=0", "timeout='0' from here: must be more than zero"),
        ("boot_timeout=none", "boot_timeout='none' from here: expected seconds"),
        ("images=data", "images='data' from here: 'data' is not LABEL:SIZE"),
        ("images=a:1M,a:2M", "images='a:1M,a:2M' from here: label 'a' given twice"),
        ("images=a/b:1M", "label='a/b' from here: only letters*"),
        ("images=data:big", "images?'data'?='big' from here: not a size*"),
        ("backend=docker", "backend='docker' from here: expected one of auto, uml, kvm, qemu"),
        ("cpus=0", "cpus='0' from here: expected a positive number"),
        ("cpus=two", "cpus='two' from here: expected a positive number"),
    ],
)  # fmt: skip
def test_bad_defaults_name_the_word_and_where_it_came_from(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_defaults(text, "here")
    assert fnmatch.fnmatchcase(str(excinfo.value), expected), str(excinfo.value)


def test_defaults_merge_keyword_by_keyword(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        fakemachine_memory = 512M
        fakemachine_timeout = 30
        fakemachine_scope = session
        fakemachine_defaults =
            memory=768M scratch=16M
            network=true images=data:64M
        """
    )
    settings = pytester.parseconfigure().stash[settings_key]
    # Within the ini, its fakemachine_defaults wins over the dedicated options.
    assert (settings.memory, settings.timeout, settings.scope) == (768, 30.0, "session")
    assert (settings.scratch, settings.network) == (16 << 20, True)
    assert settings.images == (("data", 64 << 20),)
    # The command line wins over the ini; on it, --fakemachine-defaults over the option.
    settings = pytester.parseconfigure(
        "--fakemachine-memory=1G", "--fakemachine-timeout=5",
        "--fakemachine-defaults", "timeout=6 network=no", "--fakemachine-defaults=scope=module",
    ).stash[settings_key]  # fmt: skip
    assert (settings.memory, settings.timeout, settings.scope) == (1024, 6.0, "module")
    assert (settings.scratch, settings.network) == (16 << 20, False)  # the ini's scratch stays


def test_default_settings_have_no_defaults_keywords(pytester: pytest.Pytester) -> None:
    settings = pytester.parseconfigure().stash[settings_key]
    assert (settings.scope, settings.scratch, settings.network, settings.images) == (
        "function", None, False, ())  # fmt: skip
    assert settings.cpus == 1


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("fakemachine_defaults = scope=module scrach=64M", [],
         "ERROR: ini option fakemachine_defaults in */tox.ini: unknown keyword 'scrach' in "
         "'scrach=64M'*"),
        ("", ["--fakemachine-defaults=network=perhaps"],
         "ERROR: network='perhaps' from --fakemachine-defaults: expected true/false/yes/no/1/0"),
    ],
)  # fmt: skip
def test_bad_defaults_are_usage_errors(
    pytester: pytest.Pytester, ini: str, args: list[str], expected: str
) -> None:
    test_bad_settings_are_usage_errors(pytester, ini, args, expected)


MARKED = """
import pytest

def test_plain():
    pass

@pytest.mark.fakemachine(images={"own": "1M"}, scratch=None, network=False, scope="function")
def test_own():
    pass

@pytest.mark.fakemachine(memory="256M")
def test_memory():
    pass
"""


def test_marker_keywords_win_over_the_defaults(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makeini(
        "[pytest]\nfakemachine_defaults = scope=module scratch=8M network=true memory=1G "
        "images=data:2M\n"
    )
    plain, own, memory = pytester.getitems(MARKED)
    config = plain.config
    settings = config.stash[settings_key]
    assert marked_test(plain, settings) is None  # not marked, no --fakemachine-all
    all_tests = dataclasses.replace(settings, all_tests=True)
    marked = marked_test(plain, all_tests)
    assert marked is not None and marked.scope == "module"
    assert marked.kwargs == {"images": {"data": 2 << 20}}
    machines = []
    for item in (plain, own, memory):
        mark = marked_test(item, all_tests)
        assert mark is not None
        machine = new_machine(config, mark.source)
        (tmp_path / item.name).mkdir()
        apply_marker(machine, mark, tmp_path / item.name)
        machines.append(machine)
    defaults, marker, memory_only = machines
    assert (defaults.scratch, defaults.network, defaults.memory) == (8 << 20, True, 1024)
    assert [i.label for i in defaults.images] == ["data"]
    # A marker's images replace the defaults'; its scratch=None and network=False count.
    assert (marker.scratch, marker.network) == (None, False)
    assert [i.label for i in marker.images] == ["own"]
    assert (memory_only.memory, memory_only.scratch, memory_only.network) == ("256M", 8 << 20, True)
    assert marked_test(own, all_tests).scope == "function"  # type: ignore[union-attr]


def test_the_fixtures_machine_gets_the_defaults(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure(
        "--fakemachine-defaults=scratch=4M network=1 images=a:1M,b:2M timeout=60"
    )
    settings = config.stash[settings_key]
    machine = new_machine(config, "the fixture")
    assert (machine.scratch, machine.network, machine.timeout) == (4 << 20, True, 60.0)
    image_dir = add_default_images(machine, settings)
    assert image_dir is not None
    try:
        assert [(i.label, i.path.stat().st_size) for i in machine.images] == [
            ("a", 1 << 20), ("b", 2 << 20)]  # fmt: skip
    finally:
        shutil.rmtree(image_dir)
    plain = pytester.parseconfigure()
    assert add_default_images(new_machine(plain, "x"), plain.stash[settings_key]) is None
