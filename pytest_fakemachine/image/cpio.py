"""A minimal writer for the ``newc`` cpio format the Linux kernel unpacks as initramfs."""

from __future__ import annotations

import stat
from typing import BinaryIO, final

__all__ = ["CpioWriter"]

_TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


@final
class CpioWriter:
    """Writes entries one by one; :meth:`close` appends the trailer.

    Entries carry fixed ownership (root) and a zero mtime, so the same
    content always gives the same archive bytes: the archive is cached by hash.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._closed = False

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        nlink: int = 1,
        *,
        gid: int = 0,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        if self._closed:
            raise ValueError("cpio archive already closed")
        name = name.lstrip("/") or "."
        encoded = name.encode() + b"\0"
        self._ino += 1
        fields = (
            self._ino,  # inode
            mode,
            0,  # uid
            gid,
            nlink,
            0,  # mtime
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],  # rdevmajor
            rdev[1],  # rdevminor
            len(encoded),
            0,  # check
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + _pad4(len(header) + len(encoded)))
        self._out.write(data + _pad4(len(data)))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, perm: int, gid: int = 0) -> None:
        self._entry(name, stat.S_IFCHR | perm, gid=gid, rdev=(major, minor))

    def close(self) -> None:
        if not self._closed:
            self._entry(_TRAILER, 0, nlink=1)
            self._closed = True
