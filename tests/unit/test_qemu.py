"""The QEMU backends' parts that boot nothing (backend/qemu/): QEMU's command
line for x86-64 and arm64, the kernel found and checked, the modules the
init loads, the KVM answer kept per host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_fakemachine import BackendUnavailable, ConfigError, Machine
from pytest_fakemachine.backend.base import GO_LINE, TERMINAL_LINE, BootSpec, Line, Prepared
from pytest_fakemachine.backend.qemu import boot, host, kvm

VERSION = "6.1.0-57-amd64"


def _spec(tmp_path: Path, **kw: object) -> BootSpec:
    return BootSpec(workdir=tmp_path, memory_mib=512, disks=(tmp_path / "disk0",),
                    network=True, **kw)  # type: ignore[arg-type]  # fmt: skip


def _prepared() -> Prepared:
    return Prepared(Path("/k/vmlinuz"), None, Path("/usr/lib/modules"))


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_command_line_per_architecture(tmp_path: Path, machine: str) -> None:
    arch = host.arch(machine)
    spec = _spec(tmp_path, cpus=2, shares=(("/home/u/src", False), ("/var/lib/binfmts", True)),
                 lines=(Line(TERMINAL_LINE, to_guest=5, from_guest=6),))  # fmt: skip
    args = boot.qemu_args(arch, "tcg", _prepared(), spec, Path("/c/init.cpio"), ["quiet"])
    binary = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}[machine]
    assert arch.qemu == binary
    assert args[args.index("-machine") + 1] == f"{arch.machine},accel=tcg"
    assert args[args.index("-smp") + 1] == "2" and args[args.index("-m") + 1] == "512M"
    assert args[args.index("-append") + 1] == f"console={arch.console} quiet"
    assert "-nodefaults" in args
    shares = [a for a in args if a.startswith("local,")]
    assert f"local,path={tmp_path},mount_tag=fmwork,security_model=none" in shares
    assert (
        f"local,path=/home/u/src,mount_tag={boot.share_tag('/home/u/src')},security_model=none"
        in shares
    )
    assert any(a.endswith(",readonly=on") and "/var/lib/binfmts" in a for a in shares)
    assert f"file={tmp_path}/disk0,format=raw,if=virtio,cache=unsafe" in args
    assert "user,id=net0" in args
    # Every line is there (line N is /dev/hvc{N-1}); the wired one on its pipes.
    consoles = [a for a in args if a.startswith("virtconsole,")]
    assert len(consoles) == boot.LINES
    assert f"pipe,id=line1,path={tmp_path}/line1" in args and "null,id=line6" in args


def test_the_lines_are_links_to_the_inherited_descriptors(tmp_path: Path) -> None:
    boot.write_lines(tmp_path, [Line(TERMINAL_LINE, to_guest=7, from_guest=8), Line(GO_LINE, 9)])
    assert (tmp_path / "line1.in").readlink() == Path("/dev/fd/7")
    assert (tmp_path / "line1.out").readlink() == Path("/dev/fd/8")
    assert (tmp_path / "line6.out").readlink() == Path("/dev/null")
    assert boot.QemuLayout(None, VERSION).line_device(TERMINAL_LINE) == "/dev/hvc0"


def _modules(root: Path) -> Path:
    directory = root / "lib/modules"
    deps = {
        "kernel/fs/9p/9p.ko": "kernel/fs/fscache/fscache.ko kernel/net/9p/9pnet.ko",
        "kernel/fs/fscache/fscache.ko": "kernel/fs/netfs/netfs.ko",
        "kernel/fs/netfs/netfs.ko": "",
        "kernel/net/9p/9pnet.ko": "",
        "kernel/drivers/char/virtio_console.ko": "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio.ko": "",
    }
    (directory / VERSION).mkdir(parents=True)
    (directory / VERSION / "modules.dep").write_text(
        "".join(f"{module}: {needs}\n" for module, needs in deps.items())
    )
    for module in deps:
        (directory / VERSION / module).parent.mkdir(parents=True, exist_ok=True)
        (directory / VERSION / module).write_bytes(b"\x7fELF")
    return directory


def test_the_init_loads_the_modules_it_needs_dependencies_first(tmp_path: Path) -> None:
    modules = _modules(tmp_path)
    order = boot.early_modules(modules, VERSION, ("9p", "virtio_console", "virtio_net"))
    assert order == [
        "kernel/net/9p/9pnet.ko",
        "kernel/fs/netfs/netfs.ko",
        "kernel/fs/fscache/fscache.ko",
        "kernel/fs/9p/9p.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/char/virtio_console.ko",
    ]  # fmt: skip (virtio_net: built in or absent, nothing to load)
    layout = boot.QemuLayout(modules, VERSION)
    names = [name for name, _ in layout.early_files()]
    assert names[0] == "fakemachine-modules/9pnet.ko"
    assert (
        layout.early_init().splitlines()[0] == "/bin/busybox insmod /fakemachine-modules/9pnet.ko"
    )


def _image(path: Path, head: bytes, at: int) -> Path:
    data = bytearray(0x400)
    data[at : at + len(head)] = head
    data[0x300:0x340] = b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1"[:0x40]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def test_a_downloaded_kernel_is_found_with_its_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setattr("platform.release", lambda: "no-such-host-kernel")
    root = tmp_path / "pytest-fakemachine" / f"linux-{VERSION}"
    image = _image(root / "boot" / f"vmlinuz-{VERSION}", b"HdrS", 0x202)
    _modules(root)
    found = host.find_kernel(None, "here")
    assert (found.image, found.version, found.modules) == (image, VERSION, root / "lib/modules")


def test_no_kernel_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setattr("platform.release", lambda: "no-such-host-kernel")
    with pytest.raises(BackendUnavailable, match=r"scripts/setup\.sh.*linux-image-"):
        host.find_kernel(None, "here")


def test_a_uml_kernel_given_to_qemu_is_a_config_error_naming_both(tmp_path: Path) -> None:
    uml = tmp_path / "linux.uml"
    uml.write_bytes(b"\x7fELF" + bytes(100))
    elf = r"kernel='.*linux.uml' from here: an ELF executable \(a User-Mode-Linux kernel\?\)"
    with pytest.raises(ConfigError, match=elf + ", where the QEMU backend boots"):
        host.find_kernel(uml, "here")
    with pytest.raises(ConfigError, match="not a bootable kernel image"):
        host.find_kernel(_image(tmp_path / "junk", b"nothing", 0), "here")


def test_the_kvm_answer_is_asked_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(kvm, "_device_problem", lambda: None)
    monkeypatch.setattr(kvm, "_key", lambda qemu, kernel: "k")
    monkeypatch.setattr(kvm, "_cpu_has_virtualization", lambda: False)
    booted: list[str] = []

    def boot_fails(qemu: str, arch: host.Arch, kernel: Path) -> bool:
        booted.append(qemu)
        return False

    monkeypatch.setattr(kvm, "_boot", boot_fails)
    arch = host.arch("x86_64")
    reason = "the CPU has no vmx/svm: a KVM guest does not run"
    assert kvm.kvm_problem("qemu", arch, Path("/k")) == reason
    assert kvm.kvm_problem("qemu", arch, Path("/k")) == reason
    assert booted == ["qemu"]  # the second answer came from the cache
    cached = tmp_path / "cache" / "pytest-fakemachine" / "kvm-k.json"
    assert json.loads(cached.read_text()) == {"problem": reason}


def test_no_device_or_no_access_is_said_without_a_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvm, "DEVICE", "/dev/no-such-kvm")
    assert "no /dev/no-such-kvm" in (kvm._device_problem() or "")


def test_uml_guests_have_one_cpu() -> None:
    with pytest.raises(ConfigError, match=r"cpus=2 from Machine\(\): UML guests have one CPU"):
        Machine(backend="uml", cpus=2).session()
    with pytest.raises(ConfigError, match=r"cpus=0 from Machine\(\): expected a positive"):
        Machine(backend="qemu", cpus=0).session()
