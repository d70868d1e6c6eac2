"""The QEMU backends with real guests: ``qemu`` (QEMU's emulation) runs the same
guest as UML, through the same API; ``kvm`` where KVM does not really run a
guest says so at once. Few guests (each costs half a minute or more under
emulation on 2 cores): one for run() and its parts, one for marked tests, one
as an ordinary user. Skipped, naming what is missing, where QEMU or a kernel
for it is not installed (scripts/setup.sh installs both)."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fakemachine import BackendUnavailable, Machine
from pytest_fakemachine.backend.qemu import boot, host

pytestmark = pytest.mark.qemu
NOBODY = 65534


@pytest.fixture(scope="module")
def kernel() -> host.QemuKernel:
    try:
        Machine(backend="qemu").check_backend()
    except BackendUnavailable as e:
        pytest.skip(f"backend qemu: {e}")
    return host.find_kernel(None, "the test")


@pytest.fixture
def server() -> Iterator[int]:
    """A web server on the host's loopback, which a QEMU guest reaches as 10.0.2.2."""
    handler = http.server.SimpleHTTPRequestHandler
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_run_in_a_qemu_guest(kernel: host.QemuKernel, tmp_path: Path, server: int) -> None:
    volume = tmp_path / "out"
    volume.mkdir()
    # Emulation on a busy 2-core machine: the boot may take minutes, not seconds.
    machine = Machine(backend="qemu", cpus=2, memory="1G", network=True, timeout=900,
                      boot_timeout=600)  # fmt: skip
    disk = machine.add_image(tmp_path / "disk.img", size="64M", label="data")
    machine.add_volume(volume, "/out")
    machine.env["GREETING"] = "hello"
    script = (
        f"nproc; uname -r; mkfs.ext4 -q {disk} && echo mkfs-ok; echo $GREETING >/out/log; "
        "ip -4 -o addr show eth0 | awk '{print $4}'; "
        f"busybox wget -q -O - http://10.0.2.2:{server}/ >/dev/null && echo reached-host; "
        "echo to-stderr >&2; exit 3"
    )
    result = machine.run(script)
    assert result.returncode == 3, result.stdout + result.stderr + result.console[-2000:]
    assert result.stdout.splitlines() == ["2", kernel.version, "mkfs-ok", "10.0.2.15/24",
                                          "reached-host"]  # fmt: skip
    assert result.stderr == "to-stderr\n"
    assert (volume / "log").read_text() == "hello\n"


def test_marked_tests_in_one_qemu_guest(kernel: host.QemuKernel, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, subprocess, pytest
        from pytest_fakemachine import in_fakemachine

        pytestmark = pytest.mark.fakemachine(backend="qemu", scope="module",
                                             images={"data": "64M"})

        def test_inside(tmp_path):
            assert in_fakemachine() and os.getuid() == 0
            subprocess.run(["mkfs.ext4", "-q", "/dev/disk/by-fakemachine-label/data"], check=True)
            subprocess.run(["mount", "/dev/disk/by-fakemachine-label/data", str(tmp_path)],
                           check=True)

        def test_fails():
            assert open("/proc/cmdline").read().count("fakemachine.work=") == 2
        """
    )
    pytester.makeini("[pytest]\nfakemachine_boot_timeout = 600\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           f"--fakemachine-kernel={kernel.image}")  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*"])


def _minimal_kernel_copy(kernel: host.QemuKernel, root: Path) -> Path:
    """The image, modules.dep and the modules the init loads, laid out as an
    unpacked kernel package, for a user who cannot read root's copy."""
    assert kernel.modules is not None
    image = root / "boot" / kernel.image.name
    image.parent.mkdir(parents=True)
    shutil.copy(kernel.image, image)
    source = kernel.modules / kernel.version
    target = root / "lib" / "modules" / kernel.version
    target.mkdir(parents=True)
    shutil.copy(source / "modules.dep", target / "modules.dep")
    for module in boot.early_modules(kernel.modules, kernel.version):
        (target / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / module, target / module)
    return image


@pytest.fixture
def users_dir() -> Iterator[Path]:
    """A directory of the ordinary user's (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fakemachine-nobody-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_an_ordinary_user_runs_a_qemu_guest(kernel: host.QemuKernel, users_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("drops to another uid, which needs root")
    tmp_path = users_dir
    image = _minimal_kernel_copy(kernel, tmp_path / "kernel")
    for path in [tmp_path, *tmp_path.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    code = ("from pytest_fakemachine import Machine; import sys; "
            "r = Machine(backend='qemu', kernel=sys.argv[1], timeout=900, boot_timeout=600)"
            ".run('id -u; ls /root')"
            "; print(r.stdout, end=''); sys.exit(r.returncode)")  # fmt: skip
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "HOME": "/nonexistent",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", code, str(image)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == "0"  # root in the guest, nobody on the host


def test_kvm_where_it_does_not_run_a_guest_says_why_at_once(kernel: host.QemuKernel) -> None:
    start = time.monotonic()
    try:
        Machine(backend="kvm").check_backend()
    except BackendUnavailable as e:
        assert str(e).startswith("kvm: ")
    else:
        pytest.skip("KVM runs guests on this host")
    assert time.monotonic() - start < 30
