"""A test's ``tmp_path`` handed to the host, guest side: its directories and
regular files packed into the run's work directory (``runs.transport.unpack_kept``
unpacks them on the host).

Standalone (standard library only): the guest runner loads it by path, the
first time a test's ``tmp_path`` is kept.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tarfile

# A file at least this big with holes in it (a disk image) goes to the host
# directly, holes skipped; the rest goes into one archive. Measured in UML 6.1:
# copying 2,000 small files one by one onto hostfs took 12.6 s (a file created
# over hostfs costs ~6 ms), the same files in one archive 1.7 s with tarfile
# and 0.3 s with GNU tar (which costs a program start, ~50 ms: worth it from
# ARCHIVER_MIN_FILES files); a 64 MiB image with 8 MiB written took 0.7 s
# copied whole (and arrived 64 MiB on the host), 0.03 s by its data extents.
SPARSE_DIRECT_MIN = 1 << 20
ARCHIVER_MIN_FILES = 64
ARCHIVE_SUFFIX = ".tar"
_READ_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def pack_regular_files(source: str, target_dir: str, name: str) -> None:
    """Hand the directories and regular files under ``source`` (no links,
    devices, sockets or fifos; nothing on other file systems mounted below) to
    the host: ``name.tar`` in ``target_dir``, and sparse big files directly
    under ``target_dir/name``; the host unpacks the archive there
    (``_transport.unpack_kept``). A ``source`` that is not a directory itself
    (a test replaced its tmp_path by a symlink) hands nothing over: a link is
    not followed, at the top as below."""
    top = os.lstat(source)
    if not stat.S_ISDIR(top.st_mode):
        return
    device = top.st_dev
    direct = os.path.join(target_dir, name)
    archive = os.path.join(target_dir, name + ARCHIVE_SUFFIX)
    members: list[tuple[str, os.stat_result]] = []
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if _is_dir_on(os.path.join(root, d), device)]
        relative = os.path.relpath(root, source)
        members.append((relative, os.lstat(root)))
        for file_name in files:
            path = os.path.join(root, file_name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            member = os.path.normpath(os.path.join(relative, file_name))
            if st.st_size >= SPARSE_DIRECT_MIN and st.st_blocks * 512 < st.st_size:
                _copy_sparse(path, os.path.join(direct, member), st)
            else:
                members.append((member, st))
    import tarfile  # noqa: PLC0415 (here: the runner's start-up does without it)

    gnu_tar = shutil.which("tar") if len(members) >= ARCHIVER_MIN_FILES else None
    if gnu_tar is not None and _gnu_tar(gnu_tar, source, archive, [m for m, _ in members]):
        return
    with open(archive, "wb", buffering=1 << 20) as out, tarfile.open(fileobj=out, mode="w|") as tar:
        for member, st in members:
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(_tar_info(member, st, tarfile.DIRTYPE))
                continue
            try:  # a file turned into a link since it was listed is left out
                fd = os.open(os.path.join(source, member), _READ_NOFOLLOW)
            except OSError:
                continue
            with open(fd, "rb") as f:
                tar.addfile(_tar_info(member, st, tarfile.REGTYPE), f)


def _gnu_tar(tar: str, source: str, archive: str, members: list[str]) -> bool:
    """Archive ``members`` (relative to ``source``, none recursed into) with GNU tar."""
    names = b"".join(os.fsencode(os.path.join(".", m)) + b"\0" for m in members)
    argv = [tar, "-c", "-f", archive, "-C", source, "--no-recursion", "--numeric-owner",
            "--null", "--verbatim-files-from", "-T", "-"]  # fmt: skip
    try:
        proc = subprocess.run(argv, input=names, capture_output=True, check=False)
    except OSError:
        return False
    return proc.returncode == 0


def _tar_info(member: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    import tarfile  # noqa: PLC0415 (see pack_regular_files)

    # Made here, not by tar.gettarinfo(), which looks up the owner's name in
    # the user database for every file: syscalls the host does not need.
    info = tarfile.TarInfo(member)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.size = st.st_size if kind == tarfile.REGTYPE else 0
    return info


def _copy_sparse(path: str, target: str, st: os.stat_result) -> None:
    """Copy ``path`` to ``target`` by its data extents, leaving the holes out."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    src = os.open(path, _READ_NOFOLLOW)
    try:
        mode = stat.S_IMODE(st.st_mode) & 0o777  # no setuid, setgid or sticky bit
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            offset = 0
            while True:
                try:
                    offset = os.lseek(src, offset, os.SEEK_DATA)
                except OSError:  # ENXIO: no data past offset
                    break
                end = os.lseek(src, offset, os.SEEK_HOLE)
                os.lseek(dst, offset, os.SEEK_SET)  # sendfile writes at dst's position
                while offset < end:
                    sent = os.sendfile(dst, src, offset, end - offset)
                    if sent == 0:  # the file shrank under us
                        offset = end
                    offset += sent
            os.ftruncate(dst, st.st_size)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _is_dir_on(path: str, device: int) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_dev == device
