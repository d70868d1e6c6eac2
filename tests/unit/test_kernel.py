"""Unit tests of _kernel: a kernel's version, modules, configuration and seccomp mode.

The kernels here are small shell scripts that answer ``--version`` and
``--showconfig`` as linux.uml does: the probe only runs them; nothing boots.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from pytest_fakemachine import BackendUnavailable, BootError, ConfigError
from pytest_fakemachine.backend.uml import UmlBackend
from pytest_fakemachine.backend.uml import choice as _kernel_choice
from pytest_fakemachine.backend.uml import doctor as _uml_doctor
from pytest_fakemachine.backend.uml import kernel as _kernel
from pytest_fakemachine.backend.uml.host import find_kernel
from pytest_fakemachine.backend.uml.kernel import (
    FEATURES,
    SECCOMP_ENV,
    KernelInfo,
    boot_args,
    kernel_info,
    modules_for,
    seccomp_arg,
)

FULL_CONFIG = {option: "m" for feature in FEATURES for option in feature.options} | {
    "CONFIG_MODULES": "y"
}


def make_kernel(
    path: Path, version: str, config: str = "CONFIG_MODULES=y\n", *, seccomp: bool = False
) -> Path:
    """A stand-in linux.uml: prints its version and configuration as the real one does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mark = "# Invalid seccomp option '%s', expected on/auto/off\n" if seccomp else ""
    lines = ["#", f"# Linux/um {version} Kernel Configuration", *config.splitlines()]
    show = "".join(f"    echo '{line}'\n" for line in lines)  # builtins only: PATH may be empty
    path.write_text(
        f'#!/bin/sh\n{mark}case "$1" in\n  --version) echo {version} ;;\n'
        f"  --showconfig)\n{show}    ;;\nesac\n"
    )
    path.chmod(0o755)
    return path


def add_modules(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "modules.dep").write_text("")
    return directory


@pytest.fixture(autouse=True)
def _no_system_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The host's Debian modules must not answer for the stand-in kernels, and
    # their probes must not be kept in the user's cache.
    monkeypatch.setattr(_kernel, "SYSTEM_MODULES", tmp_path / "system-modules")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_a_probe_is_kept_on_disk_for_the_next_process(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / "linux.uml", "6.1.176")
    before = kernel.stat()
    assert kernel_info(kernel).version == "6.1.176"
    assert len(list((tmp_path / "cache" / "pytest-fakemachine").glob("kernel-*.json"))) == 1
    _kernel._probe.cache_clear()  # as in a new process
    # The same file (inode, size, mtime) answering otherwise: the kept probe answers.
    kernel.write_text(kernel.read_text().replace("6.1.176", "6.1.999"))
    os.utime(kernel, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert kernel_info(kernel).version == "6.1.176"


def test_version_config_and_seccomp_mode_are_read(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / "k" / "linux.uml", "7.2.7", "CONFIG_TIME_NS=y\n", seccomp=True)
    info = kernel_info(kernel)
    assert (info.version, info.seccomp) == ("7.2.7", True)
    assert info.config == {"CONFIG_TIME_NS": "y"}
    off = kernel_info(
        make_kernel(tmp_path / "off" / "linux.uml", "6.1.1", "# CONFIG_TIME_NS is not set\n")
    )
    assert off.config == {"CONFIG_TIME_NS": "n"}
    old = kernel_info(make_kernel(tmp_path / "old" / "linux.uml", "6.1.176"))
    assert (old.version, old.seccomp) == ("6.1.176", False)


def test_a_kernel_replaced_on_disk_is_probed_again(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / "linux.uml", "6.1.1")
    assert kernel_info(kernel).version == "6.1.1"
    make_kernel(kernel, "6.12.113")
    os.utime(kernel, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert kernel_info(kernel).version == "6.12.113"


def test_a_kernel_that_cannot_run_here_says_why(tmp_path: Path) -> None:
    kernel = tmp_path / "linux.uml"
    kernel.write_text(
        "#!/bin/sh\necho 'linux.uml: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38'"
        "' not found' >&2\nexit 1\n"
    )
    kernel.chmod(0o755)
    with pytest.raises(BackendUnavailable, match=r"does not run here .*GLIBC_2\.38") as raised:
        kernel_info(kernel)
    assert "needs a newer glibc than this host's: scripts/setup.sh --newer-kernel" in str(
        raised.value
    )


def elf_with_loader(path: Path, loader: str) -> Path:
    """An x86-64 ELF header with one program header: PT_INTERP naming ``loader``."""
    header = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                         2, 62, 1, 0x400000, 64, 0, 0, 64, 56, 1, 0, 0, 0)  # fmt: skip
    interp = loader.encode() + b"\0"
    program = struct.pack("<IIQQQQQQ", 3, 4, 120, 0, 0, len(interp), len(interp), 1)
    path.write_bytes(header + program + interp)
    path.chmod(0o755)
    return path


def test_the_loader_is_read_from_the_kernels_elf_header(tmp_path: Path) -> None:
    own = elf_with_loader(tmp_path / "own", "/opt/k/usr/lib/uml/libc/ld-linux-x86-64.so.2")
    assert _kernel.interpreter(own) == "/opt/k/usr/lib/uml/libc/ld-linux-x86-64.so.2"
    assert _kernel.own_loader(own) == "/opt/k/usr/lib/uml/libc/ld-linux-x86-64.so.2"
    system = elf_with_loader(tmp_path / "system", "/lib64/ld-linux-x86-64.so.2")
    assert _kernel.interpreter(system) == "/lib64/ld-linux-x86-64.so.2"
    assert _kernel.own_loader(system) is None
    assert _kernel.interpreter(make_kernel(tmp_path / "script", "6.1.1")) is None


def test_a_patched_kernel_whose_own_loader_is_gone_says_so(tmp_path: Path) -> None:
    # setup.sh --newer-kernel writes the loader's absolute path into the kernel:
    # moved without it, the kernel "does not exist" to exec(), which misleads.
    loader = tmp_path / "gone" / "ld-linux-x86-64.so.2"
    kernel = elf_with_loader(tmp_path / "linux.uml", str(loader))
    with pytest.raises(BackendUnavailable) as raised:
        kernel_info(kernel)
    message = str(raised.value)
    assert f"its loader {loader} is missing" in message
    assert "run scripts/setup.sh --newer-kernel again" in message


def test_a_patched_kernel_without_its_modules_is_sent_back_to_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = elf_with_loader(tmp_path / "linux.uml", str(tmp_path / "libc" / "ld.so"))
    info = KernelInfo(kernel, "7.2.7", {"CONFIG_MODULES": "y"}, True)
    monkeypatch.setattr(_kernel, "kernel_info", lambda path: info)
    with pytest.raises(BackendUnavailable, match=r"run scripts/setup.sh --newer-kernel again"):
        modules_for(kernel)


def test_a_patched_kernel_that_fails_is_not_told_the_hosts_glibc_is_too_old() -> None:
    glibc = "libc.so.6: version `GLIBC_2.38' not found"
    own = _kernel.failure_hint("/opt/k/libc/ld-linux-x86-64.so.2", glibc)
    assert "its own loader and libc in /opt/k/libc" in own
    assert "needs a newer glibc" not in own
    assert "needs a newer glibc" in _kernel.failure_hint(None, glibc)
    assert _kernel.failure_hint(None, "Segmentation fault") == ""


def test_modules_of_an_unpacked_package_are_found_beside_the_kernel(tmp_path: Path) -> None:
    # dpkg -x user-mode-linux_7.2.7-1_amd64.deb DIR
    kernel = make_kernel(tmp_path / "uml-7.2" / "usr" / "bin" / "linux.uml", "7.2.7")
    add_modules(tmp_path / "uml-7.2" / "usr" / "lib" / "uml" / "modules" / "7.2.7")
    # Another version's modules in Debian's place must not be taken instead.
    add_modules(tmp_path / "system-modules" / "6.1.176")
    assert modules_for(kernel) == tmp_path / "uml-7.2" / "usr" / "lib" / "uml" / "modules"


@pytest.mark.parametrize("where", ["modules", "lib/modules"])
def test_modules_in_the_kernels_own_directory_are_found(tmp_path: Path, where: str) -> None:
    kernel = make_kernel(tmp_path / "build" / "linux.uml", "6.18.0")
    add_modules(tmp_path / "build" / where / "6.18.0")
    assert modules_for(kernel) == tmp_path / "build" / where


def test_modules_by_version_in_debians_directory(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / "bin" / "linux.uml", "6.1.176")
    add_modules(tmp_path / "system-modules" / "6.1.176")
    assert modules_for(kernel) == tmp_path / "system-modules"


def test_no_modules_for_the_version_names_kernel_version_and_places(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / "bin" / "linux.uml", "7.2.7")
    add_modules(tmp_path / "system-modules" / "6.1.176")  # another version's: not these
    with pytest.raises(BackendUnavailable) as excinfo:
        modules_for(kernel)
    message = str(excinfo.value)
    assert f"no modules for UML kernel {kernel} (Linux 7.2.7)" in message
    for place in (tmp_path / "bin" / "modules", tmp_path / "system-modules"):
        assert str(place / "7.2.7") in message
    assert "dpkg -x" in message


def test_a_kernel_without_module_support_needs_no_modules(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / "linux.uml", "6.18.0", "# CONFIG_MODULES is not set\n")
    assert modules_for(kernel) is None


def test_what_a_kernel_lacks_is_named_with_its_options() -> None:
    config = dict(FULL_CONFIG)
    del config["CONFIG_IP_NF_FILTER"]  # Debian's 7.2
    info = KernelInfo(Path("k"), "7.2.7", config, seccomp=True)
    assert [f.name for f in info.lacks()] == ["legacy iptables (iptables-legacy)"]
    assert (
        "lacks legacy iptables (iptables-legacy) (CONFIG_IP_NF_IPTABLES, CONFIG_IP_NF_FILTER)"
        in (info.summary())
    )
    full = KernelInfo(Path("k"), "6.1.1", FULL_CONFIG, seccomp=False)
    assert full.lacks() == []
    assert full.summary() == "Linux 6.1.1, no seccomp mode, lacks nothing checked"
    no_nft = {k: v for k, v in FULL_CONFIG.items() if not k.startswith("CONFIG_NF_TABLES")}
    partial = KernelInfo(Path("k"), "6.1.1", no_nft, seccomp=False)
    assert partial.lacks(fidelity_only=True) == []
    assert [f.name for f in partial.lacks()] == ["nf_tables for ip/ip6/inet (nft)"]


def test_a_kernel_without_configuration_lacks_nothing_known() -> None:
    info = KernelInfo(Path("k"), "6.1.1", {}, seccomp=False)
    assert info.lacks() == []
    assert "no configuration to check" in info.summary()


def test_seccomp_mode_is_auto_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECCOMP_ENV, raising=False)
    with_mode = KernelInfo(Path("k"), "7.2.7", {}, seccomp=True)
    without = KernelInfo(Path("k"), "6.12.1", {}, seccomp=False)
    assert seccomp_arg(with_mode, []) == "seccomp=auto"
    assert seccomp_arg(without, []) is None  # it would pass seccomp= on to init
    assert seccomp_arg(with_mode, ["seccomp=on"]) is None  # the user's own stays alone
    monkeypatch.setenv(SECCOMP_ENV, "OFF")
    assert seccomp_arg(with_mode, []) == "seccomp=off"
    assert seccomp_arg(without, []) is None
    monkeypatch.setenv(SECCOMP_ENV, "yes")
    for kernel in (with_mode, without):
        with pytest.raises(ConfigError, match=re.escape(f"{SECCOMP_ENV}='yes' from the environ")):
            seccomp_arg(kernel, [])


def test_boot_args_carry_the_seccomp_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECCOMP_ENV, raising=False)
    new = make_kernel(tmp_path / "new" / "linux.uml", "7.2.7", seccomp=True)
    old = make_kernel(tmp_path / "old" / "linux.uml", "6.1.176")
    assert boot_args(new, []) == ("seccomp=auto",)
    assert boot_args(old, []) == ()


def full_config_text() -> str:
    return "".join(f"{option}={value}\n" for option, value in FULL_CONFIG.items())


def _no_boot(kernel: Path, command: str) -> object:
    raise AssertionError("a unit test must not boot a guest")


def _measured_as(monkeypatch: pytest.MonkeyPatch, cpu: dict[str, float]) -> list[str]:
    """Guests "measured" by version, without booting; the versions asked, in order."""
    asked: list[str] = []

    def guest_cpu(info: KernelInfo) -> float:
        asked.append(info.version)
        return cpu[info.version]

    monkeypatch.setattr(_kernel_choice, "guest_cpu", lambda boot: guest_cpu)
    monkeypatch.setattr(_uml_doctor, "guest_cpu", lambda boot: guest_cpu)
    return asked


def _installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """Kernels as setup.sh leaves them: the distribution's on PATH, Linux 6.12 (every
    row), 7.2 (fastest, no legacy iptables) and a broken one unpacked; a private cache."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    data = tmp_path / "data" / "pytest-fakemachine"
    newer = make_kernel(data / "uml-6.12.1" / "usr/bin/linux.uml", "6.12.1", full_config_text())
    no_iptables = full_config_text().replace("CONFIG_IP_NF_FILTER=m\n", "")
    fastest = make_kernel(data / "uml-7.2.7" / "usr/bin/linux.uml", "7.2.7", no_iptables,
                          seccomp=True)  # fmt: skip
    broken = data / "uml-9.0.0" / "usr" / "bin" / "linux.uml"
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'GLIBC_2.99 not found' >&2\nexit 1\n")
    broken.chmod(0o755)
    system = make_kernel(tmp_path / "bin" / "linux.uml", "6.1.176", full_config_text())
    return system, newer, fastest


def test_doctor_records_the_kernel_measured_fastest_that_keeps_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, newer, fastest = _installed(tmp_path, monkeypatch)
    asked = _measured_as(monkeypatch, {"6.1.176": 1.5, "6.12.1": 1.1, "7.2.7": 0.8})
    # A session never measures: without a record, the distribution's kernel.
    assert find_kernel(None) == system
    description = UmlBackend().describe(None)
    assert description.endswith(
        "(6.1.176, the distribution's; no measured choice among the 4 kernels here is recorded "
        "(scripts/setup.sh or pytest --fakemachine-doctor records one))"
    )
    assert asked == []
    said: list[str] = []
    checks = _uml_doctor._kernel_choice(kernel_info(system), False, said.append, _no_boot)
    assert asked == ["6.1.176", "6.12.1", "7.2.7"] * _kernel_choice.ROUNDS  # taking turns
    assert said == [
        f"fakemachine doctor: measured 3 UML kernels, {_kernel_choice.ROUNDS} guests each"
    ]
    names = [c.name for c in checks]
    assert (
        f"default kernel: {newer} (Linux 6.12.1, 1.10 s of CPU per guest), the fastest "
        "here that keeps every guest feature; recorded in the cache directory"
    ) in names
    assert f"kernel {system} (in use): Linux 6.1.176: 1.50 s of CPU per guest" in names
    assert (f"kernel {fastest}: Linux 7.2.7, seccomp, lacks legacy iptables (iptables-legacy): "
            "0.80 s of CPU per guest") in names  # fmt: skip
    assert (
        f"fastest kernel here: {fastest} (0.80 s), for suites that need none of what it lacks"
        in names
    )
    broken = tmp_path / "data" / "pytest-fakemachine" / "uml-9.0.0" / "usr" / "bin" / "linux.uml"
    assert any(c.name == f"other UML kernel ({broken})" and "GLIBC_2.99" in str(c.problem)
               for c in checks)  # fmt: skip
    assert not [c for c in checks if c.name == "kernel choice"]  # no kernel was given
    # Sessions boot the recorded choice now, and say why.
    assert find_kernel(None) == newer
    description = UmlBackend().describe(None)
    assert description.startswith(f"UML kernel {newer} (6.12.1, measured here on ")
    assert "the fastest of 3 kernels that keeps every guest feature, 1.10 s" in description
    assert find_kernel(str(system)) == system  # a given kernel still decides
    assert UmlBackend().describe(str(system)).endswith("(6.1.176, as given)")
    # A given kernel that is not the choice is told so.
    checks = _uml_doctor._kernel_choice(kernel_info(system), True, said.append, _no_boot)
    (choice,) = [c for c in checks if c.name == "kernel choice"]
    assert choice.problem == f"the kernel given ({system}) is not the measured choice, {newer}"
    assert not choice.required
    assert len(asked) == 3 * _kernel_choice.ROUNDS  # kept: measured once


def test_a_recorded_choice_holds_only_for_the_kernels_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, newer, _ = _installed(tmp_path, monkeypatch)
    _measured_as(monkeypatch, {"6.1.176": 1.5, "6.12.1": 1.1, "7.2.7": 0.8})
    _uml_doctor._kernel_choice(kernel_info(system), False, print, _no_boot)
    assert find_kernel(None) == newer
    os.utime(system, (1, 1))  # the distribution's kernel upgraded: not measured so
    assert find_kernel(None) == system
    _kernel_choice.forget()
    _uml_doctor._kernel_choice(kernel_info(system), False, print, _no_boot)
    assert find_kernel(None) == newer
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "elsewhere"))  # other kernels installed
    assert find_kernel(None) == system
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no linux.uml on PATH
    with pytest.raises(BackendUnavailable, match=r"linux\.uml is not on PATH"):
        find_kernel(None)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    _kernel_choice.forget_choice()  # setup.sh --distribution-kernel
    assert find_kernel(None) == system


def test_kernel_measurements_are_kept_while_the_kernel_files_stay_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = kernel_info(make_kernel(tmp_path / "a" / "linux.uml", "6.1.176", full_config_text()))
    new = kernel_info(make_kernel(tmp_path / "b" / "linux.uml", "6.12.1", full_config_text()))
    asked = _measured_as(monkeypatch, {"6.1.176": 1.5, "6.12.1": 1.1})
    first, when = _kernel_choice.cached_measure([old, new], _kernel_choice.guest_cpu(_no_boot))
    assert when is None and [m.cpu for m in first] == [1.5, 1.1]
    again, when = _kernel_choice.cached_measure([old, new], _kernel_choice.guest_cpu(_no_boot))
    assert when is not None and [m.cpu for m in again] == [1.5, 1.1]
    assert len(asked) == 2 * _kernel_choice.ROUNDS  # the second call measured nothing
    os.utime(new.path, (1, 1))  # a kernel file replaced: measured again
    _kernel_choice.cached_measure([old, new], _kernel_choice.guest_cpu(_no_boot))
    assert len(asked) == 4 * _kernel_choice.ROUNDS
    _kernel_choice.forget()
    _kernel_choice.cached_measure([old, new], _kernel_choice.guest_cpu(_no_boot))
    assert len(asked) == 6 * _kernel_choice.ROUNDS


def test_a_kernel_whose_guest_fails_is_measured_no_further_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    good = kernel_info(make_kernel(tmp_path / "a" / "linux.uml", "6.1.176", full_config_text()))
    bad = kernel_info(make_kernel(tmp_path / "b" / "linux.uml", "7.2.7", full_config_text()))
    asked: list[str] = []

    def guest_cpu(info: KernelInfo) -> float:
        asked.append(info.version)
        if info is bad:
            raise BootError("the guest did not boot\nconsole tail...")
        return 1.0

    measured, _ = _kernel_choice.cached_measure([good, bad], guest_cpu)
    assert asked.count("7.2.7") == 1 and asked.count("6.1.176") == _kernel_choice.ROUNDS
    assert measured[1].cpu is None
    assert measured[1].error == "BootError: the guest did not boot"
    assert _kernel_choice.offer(measured) == (measured[0], None)
    _kernel_choice.cached_measure([good, bad], guest_cpu)
    assert asked.count("7.2.7") == 2  # a failed measurement is not kept


def test_doctor_says_what_the_kernel_in_use_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    config = full_config_text().replace("CONFIG_IP_NF_FILTER=m\n", "")
    in_use = make_kernel(tmp_path / "k" / "linux.uml", "7.2.7", config, seccomp=True)
    checks = _uml_doctor._kernel_choice(kernel_info(in_use), True, print, _no_boot)
    assert [(c.name, c.problem) for c in checks] == [
        (
            "guest features",
            "Linux 7.2.7 lacks legacy iptables (iptables-legacy): tests that need them fail "
            "in its guests",
        )
    ]
