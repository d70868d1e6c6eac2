"""A UML guest's process: ``linux.uml`` with the slirp helper beside it for
``network=True``, its memory file's directory, and what its console says of a
reboot or a full memory file. The rest is :class:`..process.GuestProcess`'s."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..process import GuestProcess
from ..watchdog import OWNER_ENV, make_private
from .host import SHM, find_slirp, memory_file_full

__all__ = ["UmlProcess"]


class UmlProcess(GuestProcess):
    # UML's console when the guest reboots: UML then re-executes itself, and
    # the guest would boot (and run its job) again. An emergency restart
    # (sysrq b) says nothing; then the second start of UML itself tells.
    reboot_line = b"reboot: Restarting system"
    start_line = b"Checking that ptrace can change system call numbers"

    def __init__(
        self,
        kernel: Path,
        args: Sequence[str],
        *,
        network: bool,
        memory_dir: str | None,
        memory_mib: int,
        **common: Any,
    ) -> None:
        # TMPDIR: where UML keeps the guest's memory file (else /dev/shm).
        env = {"TMPDIR": memory_dir} if memory_dir is not None else {}
        super().__init__(kernel, args, what="the UML process (linux.uml)", env=env, **common)
        self._network = network
        self._memory_mib = memory_mib
        # Where UML keeps the guest's memory (TMPDIR, else /dev/shm): for error messages.
        self.memory_dir = memory_dir or os.environ.get("TMPDIR") or SHM
        self._private = False

    def _start_helpers(self) -> tuple[list[str], list[int]]:
        if not self._network:
            return [], []
        slirp = find_slirp()
        guest_end, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._helpers.append(subprocess.Popen(
                [slirp, "--exit-with-parent", f"--fd={host_end.fileno()}"],
                pass_fds=(host_end.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, OWNER_ENV: str(os.getpid())},
            ))  # fmt: skip
        except BaseException:
            guest_end.close()
            raise
        finally:
            host_end.close()
        fd = guest_end.detach()
        return [f"vec0:transport=fd,fd={fd},vec=0"], [fd]

    def _watch_tick(self) -> None:
        if not self._private:  # UML makes its pid file 0644, its directory 0755
            uml = self._workdir / "uml"
            self._private = make_private(uml, uml / "pid")

    def _death_note(self, console: str) -> str:
        if not memory_file_full(console):
            return ""
        try:
            size = f"{shutil.disk_usage(self.memory_dir).total >> 20} MiB"
        except OSError:
            size = "its"
        return (
            f": UML keeps the guest's memory (memory={self._memory_mib}M) in a file in "
            f"{self.memory_dir}, and that {size} file system filled up; give it room (in "
            "Docker: --shm-size), point TMPDIR at one with room, or lower memory="
        )
