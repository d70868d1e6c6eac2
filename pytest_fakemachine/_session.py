"""One guest boot's work directory: generated files, kernel command line, outcome.

The work directory is private to the user (0700), holds every per-run file
the guest reads (mounted at ``/run/fakemachine``) and the files it writes back
(``stdout``, ``stderr``, ``status``), and is removed afterwards unless kept.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._config import ImageSpec, Volume
from ._errors import BootError, FakeMachineError, GuestTimeout
from .backend.uml.host import MODULES_MOUNTPOINT, memory_dir, memory_file_full
from .backend.uml.process import GuestProcess, Reaper
from .image import templates as t
from .image.initramfs import initramfs
from .image.system import BOOT_SOCKETS, boot_tmpfs_mounts, procps_needs_core_id

__all__ = ["BootOutcome", "Session", "command_body", "console_tail"]

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Read-only host directories the host's tools expect (as upstream fakemachine
# had). The host's /etc comes with the initramfs (see _guest_system).
STATIC_MOUNTS = ("/var/lib/binfmts",)
# Boot-time costs that serve no test: the RAID6/XOR benchmarks (most of a
# second; btrfs RAID5/6 needs them, see Machine.raid_benchmarks), zswap and
# strparser set-up, 256 legacy BSD ptys, and the delay-loop calibration.
# Each kernel names them its own way; a name a kernel lacks is ignored. Linux
# 7.x's lib/raid renamed them raid6_init and xor_init (0.85 s of a 7.2 boot).
SKIP_RAID_BENCHMARKS = ("raid6_select_algo", "calibrate_xor_blocks", "raid6_init", "xor_init")
# ubd0_init points a disk-less guest's ubd0 at ./root_fs, and the boot then
# prints "Failed to initialize ubd device 0", which reads like a real failure.
# zswap's is init_zswap up to 6.12, zswap_init later.
SKIP_INITCALLS = ("init_zswap", "zswap_init", "strp_dev_init", "ubd0_init")
FAST_BOOT_ARGS = ("pty.legacy_count=0", "lpj=10000000", "printk.time=1")
_CONSOLE_TAIL_LINES = 30
# A longer command body goes through the work directory (COMMAND_BODY_FROM_FILE):
# exec takes no argument over 128 KiB, nor 2 MiB of them in all.
INLINE_COMMAND_MAX = 64 * 1024
# Left in the work directory by the command body when it cannot enter its cwd.
CWD_MISSING = "cwd-missing"
_SAFE_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+")


def console_tail(console: str, lines: int = _CONSOLE_TAIL_LINES) -> str:
    return "\n".join(console.rstrip().splitlines()[-lines:])


def command_body(argv: list[str] | str, cwd: str, env: dict[str, str]) -> str:
    """Shell lines that run ``argv`` (a shell string or a list) in ``cwd`` with ``env``."""
    assignments = {"HOME": "/root", "PATH": GUEST_PATH, "LANG": "C.UTF-8", **env}
    env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in assignments.items())
    if isinstance(argv, str):
        command, rest = shlex.quote(argv), ""
    else:  # "$@" hands every item over unchanged, whatever it contains
        command, rest = shlex.quote('exec "$@"'), " sh " + " ".join(map(shlex.quote, argv))
    body = t.COMMAND_BODY.format(cwd=shlex.quote(cwd), env=env_words, command=command, argv=rest)
    if len(body.encode()) <= INLINE_COMMAND_MAX:
        return body
    script = "".join(f"export {shlex.quote(f'{k}={v}')}\n" for k, v in assignments.items())
    script += argv if isinstance(argv, str) else "exec " + " ".join(map(shlex.quote, argv))
    return t.COMMAND_BODY_FROM_FILE.format(cwd=shlex.quote(cwd), script=shlex.quote(script))


@dataclass
class BootOutcome:
    """What the host found after the guest powered off."""

    status: int
    console: str
    seconds: float


@dataclass
class Session:
    """A validated configuration with its work directory; use as a context manager."""

    kernel: Path
    modules: Path | None  # None: a kernel without module support
    memory_mib: int
    scratch_bytes: int | None
    network: bool
    images: tuple[ImageSpec, ...]
    volumes: tuple[Volume, ...]
    keep: bool = False
    echo: Callable[[str], None] | None = None
    extra_kernel_args: tuple[str, ...] = ()
    kernel_own_args: tuple[str, ...] = ()  # this kernel's (its seccomp mode): _kernel.boot_args
    raid_benchmarks: bool = False
    pass_fds: tuple[int, ...] = ()  # host fds for channels in extra_kernel_args
    cleanup: list[Path] = field(default_factory=list)  # removed even if the host dies
    boot_timeout: float | None = None  # seconds from launch until the job starts
    workdir: Path = field(init=False)
    _locks: list[int] = field(init=False, default_factory=list)
    _reaper: Reaper | None = field(init=False, default=None)

    def __enter__(self) -> Session:
        try:
            self.workdir = _make_workdir()
        except OSError as e:
            raise FakeMachineError(
                f"cannot create a work directory in {tempfile.gettempdir()}: {e.strerror}"
            ) from None
        try:
            if not self.keep:  # before anything goes in: a kill at any point leaves nothing
                self._reaper = Reaper([self.workdir, *self.cleanup])
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        try:
            self._lock_images()
            self._write_static_files()
        except OSError as e:
            self.__exit__()
            raise FakeMachineError(
                f"cannot prepare the guest's work directory {self.workdir}: {e}"
            ) from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __repr__(self) -> str:
        workdir = getattr(self, "workdir", None)  # set by __enter__
        return (
            f"<Session kernel={str(self.kernel)!r} memory={self.memory_mib}M "
            f"images={[i.label for i in self.images]} volumes={[v.guest for v in self.volumes]} "
            f"workdir={None if workdir is None else str(workdir)!r}>"
        )

    def __exit__(self, *exc: object) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None

    def _lock_images(self) -> None:
        for image in self.images:
            fd = os.open(image.path, os.O_RDONLY | os.O_CLOEXEC)
            self._locks.append(fd)
            try:
                # flock, not fcntl: UML takes fcntl locks of its own on ubd files.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FakeMachineError(
                    f"image {str(image.path)!r} (label {image.label!r}) is attached to another "
                    "running guest; two kernels writing one disk would corrupt it"
                ) from None

    def _disk_paths(self) -> list[Path]:
        disks = [image.path for image in self.images]
        if self.scratch_bytes is not None:
            disks.append(self.workdir / "scratch.img")
        return disks

    def _write_static_files(self) -> None:
        work = self.workdir
        # First: volumes may go below them. As on the host (Debian 13's /tmp).
        mounts = [_mount("tmpfs", where, "tmpfs", opts) for where, opts in boot_tmpfs_mounts()]
        mounts += [_hostfs(path, path, read_only=True) for path in STATIC_MOUNTS
                   if os.path.isdir(path)]  # fmt: skip
        if procps_needs_core_id():  # init's copy of /proc/cpuinfo, for procps' ps
            mounts.append(_mount(t.CPUINFO, "/proc/cpuinfo", "none", "bind"))
        # Here, not by systemd's dev-mqueue.mount (a mount process) on first use.
        mounts.append(_mount("mqueue", "/dev/mqueue", "mqueue", "nosuid,nodev,noexec"))
        # The UML kernel's modules, where modprobe looks for them.
        if self.modules is not None:
            mounts.append(_hostfs(str(self.modules), str(MODULES_MOUNTPOINT), read_only=True))
        if self.scratch_bytes is None:
            mounts.append(_mount("tmpfs", "/scratch", "tmpfs", "mode=1777"))
        else:
            _make_scratch(work / "scratch.img", self.scratch_bytes)
            device = f"/dev/ubd{chr(ord('a') + len(self.images))}"
            mounts.append(_mount(device, "/scratch", "ext4", "defaults"))
        for index, volume in enumerate(sorted(self.volumes, key=lambda v: v.guest.count("/"))):
            link = work / f"volume{index}"
            os.symlink(volume.host, link)
            mounts.append(_hostfs(str(link), volume.guest, read_only=volume.read_only))
        # Last: init moves this bind of the whole tree onto / (see INIT).
        mounts.append(t.FSTAB_LINE.format(source="/", guest="/mnt", fstype="none", options="rbind"))
        _write(work / "fstab", "".join(mounts))
        _write(work / "setup.sh", t.SETUP.format(work=t.GUEST_WORK))
        rules = "".join(
            t.UDEV_RULE_DISK.format(kernel=f"ubd{chr(ord('a') + i)}", label=image.label)
            for i, image in enumerate(self.images)
        )
        _write(work / "udev.rules", rules)
        _write(
            work / t.UNIT_NAME,
            t.UNIT.format(work=t.GUEST_WORK, sockets=" ".join(BOOT_SOCKETS)),
            mode=0o644,  # systemd warns about units others cannot read
        )
        if self.network:
            _write(work / "udhcpc.sh", t.UDHCPC_SCRIPT, mode=0o700)
        for index, disk in enumerate(self._disk_paths()):
            os.symlink(disk, work / f"disk{index}")

    def kernel_args(self) -> list[str]:
        work = str(self.workdir)
        args = [
            f"mem={self.memory_mib}M",
            f"initrd={initramfs()}",
            # Console 0 to our pipe (UML's stdout), every other line nowhere.
            "con=null",
            "con0=null,fd:1",
            "ssl=null",
            "panic=-1",
            # A tmpfs root, not ramfs: / and the /run bound from it report free
            # space, which `systemctl daemon-reload` insists on.
            "rootfstype=tmpfs",
            f"uml_dir={work}",
            "umid=uml",
            f"fakemachine.work={work}",
            f"FAKEMACHINE_WORK={work}",
            f"systemd.unit={t.UNIT_NAME}",
            "initcall_blacklist="
            + ",".join(SKIP_INITCALLS + (() if self.raid_benchmarks else SKIP_RAID_BENCHMARKS)),
            *FAST_BOOT_ARGS,
        ]
        # Through links in the work dir: ubd takes ',' in a file name as a COW file.
        args += [f"ubd{i}={work}/disk{i}" for i in range(len(self._disk_paths()))]
        args += self.kernel_own_args
        args += self.extra_kernel_args
        return [a for a in args if a]

    def launch(self, body: str) -> GuestProcess:
        """Write the job with ``body`` and start the guest; the caller must kill it."""
        work = self.workdir
        for name in ("started", "status", "stdout", "stderr", "command", CWD_MISSING, "job-began"):
            (work / name).unlink(missing_ok=True)
        prelude = []
        if self.images:
            prelude.append(t.PRELUDE_UDEV)
        if self.network:
            prelude.append(t.PRELUDE_NETWORK)
        job = t.JOB.format(work=t.GUEST_WORK, prelude="\n".join(prelude), body=body)
        _write(work / "job.sh", job)
        guest = GuestProcess(
            self.kernel,
            self.kernel_args(),
            workdir=work,
            network=self.network,
            console_log=work / "console.log" if self.keep else None,
            echo=self.echo,
            cleanup=[] if self.keep else [work, *self.cleanup],
            memory_dir=memory_dir(self.memory_mib),
            boot_timeout=self.boot_timeout,
            started_file=work / "started",
            reaper=self._reaper,
            pass_fds=self.pass_fds,
        )
        guest.start()
        return guest

    def outcome(self, guest: GuestProcess, finished: bool, timeout: float | None) -> BootOutcome:
        """What the guest left behind; GuestTimeout or BootError if it has no status."""
        console = guest.console()
        if not finished:
            raise GuestTimeout(
                f"the guest timed out after {timeout or 0:g} s and was killed; last console "
                f"lines:\n{console_tail(console)}",
                timeout or 0.0,
                console,
            )
        try:
            status = int((self.workdir / "status").read_text())
        except (FileNotFoundError, ValueError):
            started = (self.workdir / "started").exists()
            killed = -(guest.returncode or 0)
            if guest.ended_why is not None:
                what = guest.ended_why
            elif not self.workdir.is_dir():
                what = f"the work directory {self.workdir} disappeared during the run"
            elif killed > 0 and killed != signal.SIGABRT:  # UML aborts on a kernel panic
                what = (
                    f"the UML process (linux.uml) was killed by signal "
                    f"{signal.Signals(killed).name} from outside "
                    + ("during the command" if started else "before the command")
                )
            elif started:
                what = "the guest powered off during the command"
            else:
                what = "the guest did not boot to the command"
            if memory_file_full(console):
                where = guest.memory_dir
                try:
                    size = f"{shutil.disk_usage(where).total >> 20} MiB"
                except OSError:
                    size = "its"
                what += (
                    f": UML keeps the guest's memory (memory={self.memory_mib}M) in a file in "
                    f"{where}, and that {size} file system filled up; give it room (in Docker: "
                    "--shm-size), point TMPDIR at one with room, or lower memory="
                )
            raise BootError(
                f"{what} (linux.uml exit status {guest.returncode}); last console lines:\n"
                f"{console_tail(console)}",
                console,
            ) from None
        return BootOutcome(status, console, guest.ended_at - guest.started_at)

    def boot(
        self, body: str, timeout: float | None, poll: Callable[[], None] | None = None
    ) -> BootOutcome:
        """Boot once with ``body`` as the job and wait for the guest to power off."""
        guest = self.launch(body)
        try:
            finished = guest.wait(timeout, poll)
        finally:
            guest.kill()
        return self.outcome(guest, finished, timeout)

    def read_text(self, name: str) -> str:
        try:
            return (self.workdir / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _mount(source: str, guest: str, fstype: str, options: str) -> str:
    # x-initrd.mount (kept in /run/mount/utab): systemd gives these mounts no
    # default dependencies, which would load ~110 host units at boot (see INIT).
    return t.FSTAB_LINE.format(
        source=source, guest=guest, fstype=fstype,
        options=f"X-mount.mkdir,x-initrd.mount,{options}",
    )  # fmt: skip


def _hostfs(host: str, guest: str, *, read_only: bool) -> str:
    # hostfs takes the host path as its mount data; the paths are ours (links in
    # the work dir) or checked to hold no whitespace, so fstab needs no escapes.
    return _mount("none", guest, "hostfs", ("ro," if read_only else "") + host)


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _make_workdir() -> Path:
    base = tempfile.gettempdir()
    # mkdtemp makes it 0700: the guest's files are the user's business only.
    if not set(base) <= _SAFE_PATH_CHARS:
        base = "/tmp"  # the path goes on the kernel command line: no spaces or commas
    return Path(tempfile.mkdtemp(prefix="fakemachine-", dir=base))


def _make_scratch(path: Path, size: int) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.truncate(size)
    mkfs = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    if mkfs is None:
        raise FakeMachineError("mkfs.ext4 is missing: install e2fsprogs to use a scratch disk")
    proc = subprocess.run(
        [mkfs, "-q", "-F", "-L", "scratch", "-E", "lazy_itable_init=1,lazy_journal_init=1",
         str(path)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise FakeMachineError(f"mkfs.ext4 of the scratch disk failed: {proc.stderr.strip()}")
