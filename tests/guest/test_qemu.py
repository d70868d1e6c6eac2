"""What is the QEMU backends' own, with real guests: several CPUs, QEMU's user
network (the host's loopback at 10.0.2.2), a guest started by an ordinary user
(with a kernel of its own), and ``kvm`` where KVM does not really run a guest
saying so at once. One guest (each costs half a minute or more under emulation
on 2 cores); what every backend does is tests/guest/test_backends.py's.
Skipped, naming what is missing, where QEMU or a kernel for it is not
installed (scripts/setup.sh installs both)."""

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


def test_an_ordinary_user_runs_a_qemu_guest_of_two_cpus_on_the_network(
    kernel: host.QemuKernel, users_dir: Path, server: int
) -> None:
    if os.geteuid() != 0:
        pytest.skip("drops to another uid, which needs root")
    tmp_path = users_dir
    image = _minimal_kernel_copy(kernel, tmp_path / "kernel")
    for path in [tmp_path, *tmp_path.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    script = (
        "id -u; nproc; uname -r; ip -4 -o addr show eth0 | awk '{print $4}'; "
        f"busybox wget -q -O - http://10.0.2.2:{server}/ >/dev/null && echo reached-host"
    )
    code = ("from pytest_fakemachine import Machine; import sys; "
            "r = Machine(backend='qemu', kernel=sys.argv[1], cpus=2, network=True, timeout=900,"
            " boot_timeout=600).run(sys.argv[2])"
            "; print(r.stdout, end=''); print(r.stderr, r.console[-2000:], file=sys.stderr)"
            "; sys.exit(r.returncode)")  # fmt: skip
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "HOME": "/nonexistent",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", code, str(image), script],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Root in the guest, nobody on the host; the host reached at QEMU's gateway.
    assert proc.stdout.splitlines() == ["0", "2", kernel.version, "10.0.2.15/24", "reached-host"], (
        proc.stdout + proc.stderr
    )


def test_kvm_where_it_does_not_run_a_guest_says_why_at_once(kernel: host.QemuKernel) -> None:
    start = time.monotonic()
    try:
        Machine(backend="kvm").check_backend()
    except BackendUnavailable as e:
        assert str(e).startswith("kvm: ")
    else:
        pytest.skip("KVM runs guests on this host")
    assert time.monotonic() - start < 30
