"""A UML guest's boot: how it reaches the host (hostfs, ubd disks, ssl serial
lines) and its kernel command line."""

from __future__ import annotations

from pathlib import Path
from typing import final

from ..base import BootSpec, Line, Prepared, Share

__all__ = ["FAST_BOOT_ARGS", "SKIP_INITCALLS", "SKIP_RAID_BENCHMARKS", "UmlLayout", "kernel_args"]

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


@final
class UmlLayout:
    """hostfs for host directories, ubd for disks, ttyS for serial lines."""

    def share(self, host: str, guest: str, *, read_only: bool) -> Share:
        # hostfs takes the host path as its mount data; the paths are ours (links in
        # the work dir) or checked to hold no whitespace, so fstab needs no escapes.
        return Share("none", "hostfs", ("ro," if read_only else "") + host)

    def work_mount(self) -> str:
        return "none /run/fakemachine hostfs $FAKEMACHINE_WORK 0 0"

    def disk(self, index: int) -> str:
        return f"ubd{chr(ord('a') + index)}"

    def line_device(self, number: int) -> str:
        return f"/dev/ttyS{number}"

    def network_device(self) -> str:
        return "vec0"  # the vector driver's, on a socket the host hands over

    def early_files(self) -> list[tuple[str, Path]]:
        return []  # UML's drivers are built in

    def early_init(self) -> str:
        return ""


def _line_arg(line: Line) -> str:
    chan_in = "null" if line.to_guest is None else f"fd:{line.to_guest}"
    chan_out = "null" if line.from_guest is None else f"fd:{line.from_guest}"
    return f"ssl{line.number}={chan_in},{chan_out}"


def kernel_args(prepared: Prepared, spec: BootSpec, initramfs: Path, unit: str) -> list[str]:
    """The kernel command line of a boot (UML takes its devices there too)."""
    work = str(spec.workdir)
    args = [
        f"mem={spec.memory_mib}M",
        f"initrd={initramfs}",
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
        f"systemd.unit={unit}",
        "initcall_blacklist="
        + ",".join(SKIP_INITCALLS + (() if spec.raid_benchmarks else SKIP_RAID_BENCHMARKS)),
        *FAST_BOOT_ARGS,
    ]
    # Through links in the work dir: ubd takes ',' in a file name as a COW file.
    args += [f"ubd{i}={work}/disk{i}" for i in range(len(spec.disks))]
    args += [_line_arg(line) for line in spec.lines]
    args += prepared.kernel_args
    args += spec.kernel_args
    return [a for a in args if a]
