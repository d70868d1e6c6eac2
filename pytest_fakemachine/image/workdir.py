"""The files of one boot's work directory, which the guest mounts at ``GUEST_WORK``:
the run's fstab (volumes, the scratch disk, the kernel's modules), the udev
rules that name the disks, the unit, and the job with its command.

Backend-neutral: how the guest mounts a host directory and names a disk is the
backend's :class:`~..backend.base.Layout`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._config import ImageSpec, Volume, in_guest
from .._errors import FakeMachineError
from ..backend.base import Layout
from . import templates as t
from .initramfs import root_archive
from .system import BOOT_SOCKETS, boot_tmpfs_mounts, procps_needs_core_id

__all__ = [
    "CWD_MISSING",
    "GUEST_PATH",
    "INLINE_COMMAND_MAX",
    "RUN_FILES",
    "Contents",
    "command_body",
    "write_job",
    "write_static_files",
]

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Read-only host directories the host's tools expect (as upstream fakemachine
# had). The host's /etc comes with the initramfs (see image.system).
STATIC_MOUNTS = ("/var/lib/binfmts",)
# A longer command body goes through the work directory (COMMAND_BODY_FROM_FILE):
# exec takes no argument over 128 KiB, nor 2 MiB of them in all.
INLINE_COMMAND_MAX = 64 * 1024
# Left in the work directory by the command body when it cannot enter its cwd.
CWD_MISSING = "cwd-missing"
# What one launch writes, removed before the next launch of the same directory.
RUN_FILES = ("started", "status", "stdout", "stderr", "command", CWD_MISSING, "job-began")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@dataclass(frozen=True)
class Contents:
    """What goes into a guest, as the work directory's files say it."""

    images: Sequence[ImageSpec]
    volumes: Sequence[Volume]
    scratch_bytes: int | None
    network: bool
    modules: tuple[Path, Path] | None  # (host directory, guest mount point) of the kernel's


def command_body(argv: list[str] | str, cwd: str, env: dict[str, str]) -> str:
    """Shell lines that run ``argv`` (a shell string or a list) in ``cwd`` with ``env``."""
    assignments = {"HOME": "/root", "PATH": GUEST_PATH, "LANG": "C.UTF-8", **env}
    env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in assignments.items())
    if isinstance(argv, str):
        command, rest = shlex.quote(argv), ""
    else:  # "$@" hands every item over unchanged, whatever it contains
        command, rest = shlex.quote('exec "$@"'), " sh " + " ".join(map(shlex.quote, argv))
    body = t.COMMAND_BODY.format(cwd=shlex.quote(cwd), env=env_words, command=command, argv=rest)
    if len(body.encode(errors="surrogateescape")) <= INLINE_COMMAND_MAX:
        return body
    script = "".join(f"export {shlex.quote(f'{k}={v}')}\n" for k, v in assignments.items())
    script += argv if isinstance(argv, str) else "exec " + " ".join(map(shlex.quote, argv))
    return t.COMMAND_BODY_FROM_FILE.format(cwd=shlex.quote(cwd), script=shlex.quote(script))


def write_static_files(
    work: Path, layout: Layout, contents: Contents
) -> tuple[list[Path], list[tuple[str, bool]]]:
    """The files every launch of this work directory reads; the disks in order,
    and the host directories the guest mounts (path, read-only)."""
    disks = [image.path for image in contents.images]
    shares: list[tuple[str, bool]] = []
    _write(work / "fstab", "".join(_fstab(work, layout, contents, shares)))
    if contents.scratch_bytes is not None:
        disks.append(work / "scratch.img")
    _write(work / "setup.sh", t.SETUP.format(work=t.GUEST_WORK))
    rules = "".join(
        t.UDEV_RULE_DISK.format(kernel=layout.disk(i), label=image.label)
        for i, image in enumerate(contents.images)
    )
    _write(work / "udev.rules", rules)
    _write(
        work / t.UNIT_NAME,
        t.UNIT.format(work=t.GUEST_WORK, sockets=" ".join(BOOT_SOCKETS)),
        mode=0o644,  # systemd warns about units others cannot read
    )
    if contents.network:
        _write(work / "udhcpc.sh", t.UDHCPC_SCRIPT, mode=0o700)
    for index, disk in enumerate(disks):
        os.symlink(disk, work / f"disk{index}")
    return disks, shares


def _fstab(
    work: Path, layout: Layout, contents: Contents, shares: list[tuple[str, bool]]
) -> list[str]:
    def share(host: str, guest: str, read_only: bool) -> str:
        shares.append((host, read_only))
        how = layout.share(host, guest, read_only=read_only)
        return _mount(how.source, guest, how.fstype, how.options)

    # First: volumes may go below them. As on the host (Debian 13's /tmp).
    mounts = [_mount("tmpfs", where, "tmpfs", opts) for where, opts in boot_tmpfs_mounts()]
    mounts += [share(path, path, True) for path in STATIC_MOUNTS if os.path.isdir(path)]
    if procps_needs_core_id():  # init's copy of /proc/cpuinfo, for procps' ps
        mounts.append(_mount(t.CPUINFO, "/proc/cpuinfo", "none", "bind"))
    # Here, not by systemd's dev-mqueue.mount (a mount process) on first use.
    mounts.append(_mount("mqueue", "/dev/mqueue", "mqueue", "nosuid,nodev,noexec"))
    if contents.modules is not None:  # the kernel's modules, where modprobe looks for them
        mounts.append(share(str(contents.modules[0]), str(contents.modules[1]), True))
    if contents.scratch_bytes is None:
        mounts.append(_mount("tmpfs", "/scratch", "tmpfs", "mode=1777"))
    else:
        _make_scratch(work / "scratch.img", contents.scratch_bytes)
        device = f"/dev/{layout.disk(len(contents.images))}"
        mounts.append(_mount(device, "/scratch", "ext4", "defaults"))
    for index, volume in enumerate(sorted(contents.volumes, key=lambda v: v.guest.count("/"))):
        link = work / f"volume{index}"  # the guest's paths hold no whitespace or commas
        os.symlink(volume.host, link)
        mounts.append(share(str(link), volume.guest, volume.read_only))
    return mounts + _new_root(work, [line.split()[1] for line in mounts])


def _new_root(work: Path, targets: list[str]) -> list[str]:
    """The fstab's last lines: the guest's root, a tmpfs, with every tree mounted
    before it bound into it (see INIT); writes the archive of its own tree."""
    bound: list[str] = []
    for path in sorted({in_guest(p) for p in (*t.ROOT_TREES, *targets)}):
        if not any(path.startswith(b + "/") for b in bound):  # sorted: parents first
            bound.append(path)
    with open(os.open(work / t.ROOT_ARCHIVE, _NEW_FILE, 0o600), "wb") as f:
        f.write(root_archive(bound))
    mounts = [t.FSTAB_LINE.format(source="tmpfs", guest=t.NEW_ROOT, fstype="tmpfs",
                                  options="X-mount.mkdir,mode=0755")]  # fmt: skip
    for path in bound:
        mounts.append(t.FSTAB_LINE.format(source=path, guest=t.NEW_ROOT + path, fstype="none",
                                          options="X-mount.mkdir,rbind"))  # fmt: skip
    return mounts


def write_job(work: Path, layout: Layout, body: str, *, disks: bool, network: bool) -> None:
    """The job of the next launch, with ``body`` as its command; clears the last run's files."""
    for name in RUN_FILES:
        (work / name).unlink(missing_ok=True)
    prelude = []
    if disks:
        prelude.append(t.PRELUDE_UDEV)
    if network:
        prelude.append(t.PRELUDE_NETWORK.format(device=layout.network_device()))
    job = t.JOB.format(work=t.GUEST_WORK, prelude="\n".join(prelude), body=body)
    _write(work / "job.sh", job)


def _mount(source: str, guest: str, fstype: str, options: str) -> str:
    # x-initrd.mount (kept in /run/mount/utab): systemd gives these mounts no
    # default dependencies, which would load ~110 host units at boot (see INIT).
    return t.FSTAB_LINE.format(
        source=source, guest=guest, fstype=fstype,
        options=f"X-mount.mkdir,x-initrd.mount,{options}",
    )  # fmt: skip


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, _NEW_FILE, mode)
    # surrogateescape: bytes of a command line that are not UTF-8 (sys.argv
    # holds them as lone surrogates) reach the guest's command unchanged.
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)


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
