"""Partition a disk image, make file systems on it, and check the result on the host.

Partitioning, mkfs and mount on a block device need root and a kernel that
re-reads partition tables. Here the guest does that work on a plain image
file; the host then reads the image back with ordinary, unprivileged tools.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_fakemachine import Machine

MiB = 1 << 20
SECTOR = 512  # UML disks have 512-byte sectors (docs/usage.md)
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

# What an image builder would write: GPT, a 64 MiB root partition, the rest an ESP.
LAYOUT = """\
label: gpt
size=64MiB, type=linux, name=root
type=uefi, name=esp
"""

# Runs as root in the guest. The layout and message come in through the
# environment, so the script needs no quoting of its data.
PARTITION_AND_FORMAT = r"""
set -eu
printf '%s' "$LAYOUT" | sfdisk --quiet "$DISK"
# The kernel has re-read the table; wait until udev has made the -partN links.
udevadm settle
mkfs.ext4 -q -L root "$DISK-part1"
# dosfstools' mkfs.vfat is not always installed; busybox (the guest's init) has mkdosfs.
if command -v mkfs.vfat >/dev/null; then
    mkfs.vfat -n ESP "$DISK-part2" >/dev/null
else
    busybox mkdosfs -n ESP "$DISK-part2"
fi
mkdir -p /mnt/root /mnt/esp
mount "$DISK-part1" /mnt/root
mount -t vfat "$DISK-part2" /mnt/esp
echo "$MESSAGE" >/mnt/root/hello.txt
mkdir -p /mnt/esp/EFI/BOOT
echo "$MESSAGE" >/mnt/esp/EFI/BOOT/hello.txt
echo "root=$(findmnt -rno FSTYPE /mnt/root)"
echo "esp=$(findmnt -rno FSTYPE /mnt/esp)"
umount /mnt/root /mnt/esp
"""


def host_tool(name: str) -> str:
    """The path of a host tool (often in sbin, off a user's PATH), or skip the test."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        pytest.skip(f"{name} is not installed on the host")
    return found


def key_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# mkfs and its flags per file system; a file system whose mkfs the host lacks is skipped.
MKFS: dict[str, list[str]] = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-L", "data"],
    "vfat": ["mkfs.vfat", "-n", "DATA"],
    "btrfs": ["mkfs.btrfs", "-q", "-f", "-L", "data"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-L", "data"],  # needs at least 300 MiB
}
DATA_DISK = "/dev/disk/by-fakemachine-label/data"


def mkfs_argv(fstype: str) -> list[str]:
    argv = MKFS[fstype]
    if shutil.which(argv[0]):
        return argv
    if fstype == "vfat" and shutil.which("busybox"):
        return ["busybox", "mkdosfs", "-n", "DATA"]
    pytest.skip(f"{argv[0]} is not installed on the host (the guest runs the host's /usr)")


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


# The whole test runs as root in one guest shared by the four cases
# (scope="module"); each case reformats the same 320 MiB image.
@pytest.mark.fakemachine(images={"data": "320M"}, scope="module")
@pytest.mark.parametrize("fstype", list(MKFS))
def test_mkfs_mount_write_and_remount_read_only(fstype: str, tmp_path: Path) -> None:
    argv = mkfs_argv(fstype)  # skips here, in the guest, where the check is true
    # The previous case left its file system on the disk; wipe its signature.
    run("wipefs", "-a", "-q", DATA_DISK)
    run(*argv, DATA_DISK)
    assert run("blkid", "-p", "-s", "TYPE", "-o", "value", DATA_DISK).strip() == fstype

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    payload = os.urandom(1 << 20)
    run("mount", "-t", fstype, DATA_DISK, str(mnt))
    try:
        assert run("findmnt", "-rno", "FSTYPE", str(mnt)).strip() == fstype
        (mnt / "payload.bin").write_bytes(payload)
    finally:
        run("umount", str(mnt))

    # What was written survived the unmount, and a read-only mount refuses writes.
    run("mount", "-o", "ro", "-t", fstype, DATA_DISK, str(mnt))
    try:
        assert (mnt / "payload.bin").read_bytes() == payload
        with pytest.raises(OSError, match="Read-only file system"):
            (mnt / "other.bin").write_bytes(b"x")
    finally:
        run("umount", str(mnt))


# The fixture way: the test runs on the host, sends the script above to a guest, then
# reads the image with host tools. (It comes after the marked tests on purpose: in
# pytest-fakemachine 0.1.0 a host-run test followed by marked tests up to the end of
# its module breaks the setup of the next module's first host-run test.)
def test_gpt_with_ext4_and_vfat_readable_on_the_host(fakemachine: Machine, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    disk = fakemachine.add_image(image, size="128M", label="disk")
    assert disk == "/dev/disk/by-fakemachine-label/disk"
    message = "written in the guest"
    result = fakemachine.run(
        PARTITION_AND_FORMAT, env={"DISK": disk, "LAYOUT": LAYOUT, "MESSAGE": message}
    )
    assert result.returncode == 0, result.stderr
    assert key_values(result.stdout) == {"root": "ext4", "esp": "vfat"}

    # The partition table, as the host's sfdisk reads it from the image file.
    table = json.loads(
        subprocess.run(
            [host_tool("sfdisk"), "--json", str(image)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    assert table["label"] == "gpt"
    root, esp = table["partitions"]
    assert (root["name"], root["type"], root["size"]) == ("root", LINUX_GUID, 64 * MiB // SECTOR)
    assert (esp["name"], esp["type"]) == ("esp", ESP_GUID)
    assert esp["start"] >= root["start"] + root["size"]

    # The ext4 file, read straight from the image with debugfs at the partition's offset.
    debugfs = subprocess.run(
        [host_tool("debugfs"), "-R", "cat /hello.txt", f"{image}?offset={root['start'] * SECTOR}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert debugfs.stdout == message + "\n"

    # The FAT file system's label, probed by blkid at the ESP's offset.
    blkid = subprocess.run(
        [host_tool("blkid"), "-p", "-O", str(esp["start"] * SECTOR), "-o", "export", str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    probed = key_values(blkid.stdout)
    assert (probed["TYPE"], probed["LABEL"]) == ("vfat", "ESP")
