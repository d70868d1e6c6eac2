"""What does not depend on the backend, written once and run on each: ``uml``,
``qemu`` (QEMU's emulation) and ``kvm`` (where KVM really runs a guest; else
skipped with the doctor's reason). ``-m qemu`` chooses the QEMU cases.

Few guests per backend, many checks per guest (a QEMU guest under emulation
costs half a minute or more on 2 cores): one ``run()``; one inner session with
two function-scoped tests (the second booted ahead) and a module-scoped guest
for the outcomes and the fidelity rows; one guest for the shell and the
debugger on a pseudo-terminal. The UML-only modules check each row in depth.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from pytest_fakemachine import BackendUnavailable, Machine

pexpect = pytest.importorskip("pexpect", reason="the `test` extra installs it")

BACKENDS = ["uml", pytest.param("qemu", marks=pytest.mark.qemu),
            pytest.param("kvm", marks=pytest.mark.qemu)]  # fmt: skip
# What systemd-detect-virt says in each backend's guest (QEMU's emulation: qemu).
VIRT = {"uml": "uml", "qemu": "qemu", "kvm": "kvm"}
MiB = 1 << 20
# Emulation on a busy 2-core machine: a boot may take minutes, not seconds.
BOOT_TIMEOUT = 600
INI = f"[pytest]\nfakemachine_boot_timeout = {BOOT_TIMEOUT}\nfakemachine_timeout = 1800\n"
DATA_HOME = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend's name; skipped with its reason (the doctor's, for kvm) where
    it cannot run here."""
    name: str = request.param
    try:
        Machine(backend=name).check_backend()
    except BackendUnavailable as e:
        pytest.skip(f"backend {name}: {e}")
    return name


# --------------------------------------------------------------------------
# Machine.run(): streams, status, env, an image and its partitions, volumes,
# scratch, the console
# --------------------------------------------------------------------------


def test_run_keeps_streams_status_env_disks_volumes_and_the_console(
    backend: str, tmp_path: Path
) -> None:
    shared, readonly = tmp_path / "shared", tmp_path / "ro"
    shared.mkdir()
    readonly.mkdir()
    (shared / "in.txt").write_text("from host\n")
    image = tmp_path / "disk.img"
    machine = Machine(backend=backend, scratch="64M", timeout=1800, boot_timeout=BOOT_TIMEOUT)
    disk = machine.add_image(image, size="64M", label="data")
    machine.add_volume(shared, "/shared")
    machine.add_volume(readonly, read_only=True)
    machine.env["GREETING"] = "hello"
    script = f"""\
echo "uid=$(id -u) pwd=$(pwd) home=$HOME greeting=$GREETING extra=$EXTRA"
echo "scratch=$(sed -n 's#^[^ ]* /scratch \\([^ ]*\\) .*#\\1#p' /proc/mounts)"
echo "disk=$(blockdev --getsize64 {disk})"
printf 'label: dos\\n,16M\\n,\\n' | sfdisk -q {disk} && udevadm settle
echo "part1=$(blockdev --getsize64 {disk}-part1)"
mkdir -p /mnt/p2 && mkfs.ext4 -q {disk}-part2 && mount {disk}-part2 /mnt/p2 &&
    echo data >/mnt/p2/f && umount /mnt/p2 && echo ext4=ok
cat /shared/in.txt && echo from-guest >/shared/out.txt
touch {readonly}/x 2>/dev/null || echo read-only=refused
echo to-stderr >&2
exit 3
"""
    result = machine.run(script, env={"EXTRA": "per-run"})
    why = f"{result.stdout}\n{result.stderr}\n{result.console[-3000:]}"
    assert result.returncode == 3, why
    assert result.stdout.splitlines() == [
        "uid=0 pwd=/scratch home=/root greeting=hello extra=per-run",
        "scratch=ext4",
        f"disk={64 * MiB}",
        f"part1={16 * MiB}",
        "ext4=ok",
        "from host",
        "read-only=refused",
    ], why
    assert result.stderr == "to-stderr\n", why
    assert (shared / "out.txt").read_text() == "from-guest\n"
    assert not (readonly / "x").exists()
    with open(image, "rb") as f:  # the partition table reached the host's file
        f.seek(510)
        assert f.read(2) == b"\x55\xaa"
    # A failed command's result still has the guest's console, for the why.
    assert "Linux version" in result.console
    assert "systemd[1]:" in result.console
    assert "to-stderr" not in result.console


# --------------------------------------------------------------------------
# Marked tests: two function-scoped guests (the second booted ahead while the
# first runs), then one module-scoped guest for every outcome and the rows of
# a booted system
# --------------------------------------------------------------------------

MARKED = """
import os, pathlib, subprocess, pytest

LOG = pathlib.Path({log!r})
ALONE = pytest.mark.fakemachine(backend={backend!r}, volumes=[str(LOG)])
SHARED = pytest.mark.fakemachine(backend={backend!r}, volumes=[str(LOG)], scope="module",
                                 images={{"data": "64M"}})

def record(name):
    waited = os.path.exists("/run/fakemachine/waiting")  # booted ahead, it waited its turn
    boot_id = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (LOG / name).write_text(f"{{waited}} {{boot_id}}")

def sh(command):
    done = subprocess.run(["sh", "-ec", command], capture_output=True, text=True, check=False)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout

@ALONE
def test_alone_first():
    record("first")

@ALONE
def test_alone_second():
    record("second")

@pytest.fixture
def broken():
    raise RuntimeError("setup went wrong")

@SHARED
def test_fails():
    record("fails")
    x = 41
    assert x == 42

@SHARED
def test_skips():
    record("skips")
    pytest.skip("not in this guest")

@SHARED
@pytest.mark.xfail(strict=True, reason="must fail")
def test_xfails():
    record("xfails")
    assert False

@SHARED
def test_setup_error(broken):
    pass

@SHARED
def test_systemd_is_pid_1_and_answers():
    record("systemd")
    assert pathlib.Path("/proc/1/comm").read_text() == "systemd\\n"
    state = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True)
    # Booted to the job's unit, not a target: "initializing" on UML; never offline.
    assert state.stdout.strip() in ("initializing", "starting", "running", "degraded"), state

@SHARED
def test_labelled_disk_ext4_and_loop():
    record("disks")
    disk = "/dev/disk/by-fakemachine-label/data"
    assert sh(f"mkfs.ext4 -q {{disk}} && mkdir -p /mnt/d && mount {{disk}} /mnt/d && "
              "echo x >/mnt/d/f && umount /mnt/d && echo ok") == "ok\\n"
    loop = sh("truncate -s 8M /mnt/loop.img && mkfs.ext4 -q /mnt/loop.img && "
              "losetup -f --show /mnt/loop.img").strip()
    assert loop.startswith("/dev/loop")
    sh(f"mkdir -p /mnt/l && mount {{loop}} /mnt/l && touch /mnt/l/x && umount /mnt/l && "
       f"losetup -d {{loop}}")

@SHARED
def test_network_tools_hostname_cmdline_and_virt():
    record("system")
    assert sh("hostname") == "fakemachine\\n"
    # A tun device loads the tun module: the kernel's modules are there.
    sh("ip link show lo && ip tuntap add dev fmtun mode tun && ip link show fmtun")
    assert pathlib.Path("/proc/cmdline").read_text().count("fakemachine.work=") == 1
    virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True)
    assert virt.stdout == {virt!r} + "\\n", virt
"""


@pytest.fixture
def inner_session(backend: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inner session's settings: generous timeouts, and the QEMU kernel that
    scripts/setup.sh unpacked into the user's data directory (pytester gives
    the inner session a HOME of its own)."""
    pytester.makeini(INI)
    if backend != "uml":
        monkeypatch.setenv("XDG_DATA_HOME", DATA_HOME)


@pytest.fixture
def booting_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """An inner session that may boot ahead (as tests/guest/test_boot_ahead.py's)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("booting ahead needs an idle CPU: this host gives one")
    # From an xdist worker, an inner session would take the worker's share of
    # the CPUs (one here) and boot nothing ahead.
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


def test_marked_tests_scopes_booting_ahead_outcomes_and_the_system(
    backend: str,
    pytester: pytest.Pytester,
    tmp_path: Path,
    inner_session: None,
    booting_ahead: None,
) -> None:
    log = tmp_path / "log"
    log.mkdir()
    pytester.makepyfile(test_inner=MARKED.format(log=str(log), backend=backend,
                                                 virt=VIRT[backend]))  # fmt: skip
    result = pytester.runpytest_subprocess("-v", "-rA", "--fakemachine-show-boot")
    result.assert_outcomes(passed=5, failed=1, skipped=1, xfailed=1, errors=1)
    result.stdout.fnmatch_lines(["*assert 41 == 42*"])  # the guest's assertion rewriting
    result.stdout.fnmatch_lines(["*RuntimeError: setup went wrong*"])
    result.stdout.fnmatch_lines(["SKIPPED * not in this guest"])
    seen = {path.name: path.read_text().split() for path in log.iterdir()}
    assert sorted(seen) == ["disks", "fails", "first", "second", "skips", "system", "systemd",
                            "xfails"]  # fmt: skip
    boots = {name: boot_id for name, (_, boot_id) in seen.items()}
    shared = {boots[name] for name in ("fails", "skips", "xfails", "systemd", "disks", "system")}
    assert len(shared) == 1  # the module's tests shared one guest
    assert len({boots["first"], boots["second"], *shared}) == 3  # each function its own
    # The second function-scoped guest booted while the first test ran.
    assert (seen["first"][0], seen["second"][0]) == ("False", "True")
    # --fakemachine-show-boot: each guest's console once, under its test's name
    # (the second's, booted during the first, at its turn).
    out = result.stdout.str()
    assert out.count("Welcome to") == 3
    during_first = out.partition("::test_alone_first ")[2].partition("::test_alone_second ")[0]
    during_second = out.partition("::test_alone_second ")[2].partition("::test_fails ")[0]
    assert during_first.count("Welcome to") == during_second.count("Welcome to") == 1


# --------------------------------------------------------------------------
# The debugger and the shell on the user's terminal (a pseudo-terminal here)
# --------------------------------------------------------------------------

INTERACTIVE = """
import pytest

pytestmark = pytest.mark.fakemachine(backend={backend!r}, scope="module")

def test_breaks():
    y = 5
    breakpoint()
    assert y == 5

def test_fails(tmp_path):
    (tmp_path / "marker").write_text("left-by-test")
    assert 1 == 2
"""


def test_the_debugger_and_the_shell_on_fail_talk_to_the_terminal(
    backend: str, pytester: pytest.Pytester, inner_session: None
) -> None:
    pytester.makepyfile(test_t=INTERACTIVE.format(backend=backend))
    session = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:cacheprovider", "-s", "--fakemachine-shell-on-fail", "-q"],
        cwd=str(pytester.path), timeout=120, dimensions=(30, 100),
    )  # fmt: skip
    session.logfile_read = log = io.BytesIO()
    try:
        session.expect(r"test_t.py\(\d+\)test_breaks\(\)", timeout=BOOT_TIMEOUT)
        session.expect_exact("(Pdb) ")
        session.sendline("p y * 10, __import__('os').getuid()")
        session.expect_exact("(50, 0)")
        session.sendline("c")
        session.expect_exact("test_t.py::test_fails failed; a root shell in its guest")
        session.expect_exact("/test_fails0# ")  # in the test's tmp_path
        session.sendline("cat marker; echo ' sum-'$((20 + 1))")
        session.expect_exact("left-by-test sum-21\r\n")
        session.sendline("exit")
        session.expect_exact("the shell has ended; the session goes on.")
        session.expect_exact("1 failed, 1 passed")
        session.expect(pexpect.EOF)
    finally:
        session.close(force=True)
        print(log.getvalue().decode(errors="replace"))
    assert session.exitstatus == 1
