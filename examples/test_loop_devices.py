"""Loop devices: a file turned into a block device, formatted, mounted, detached.

``losetup`` needs root and the loop driver; tools that build disk images
(and their tests) use it all the time. In the guest it is just there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fakemachine import Machine

MiB = 1 << 20
SECTOR = 512


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def host_tool(name: str) -> str:
    """The path of a host tool (often in sbin, off a user's PATH), or skip the test."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        pytest.skip(f"{name} is not installed on the host")
    return found


def attached(backing: Path) -> list[str]:
    """The loop devices backed by ``backing`` right now."""
    devices = json.loads(run("losetup", "--list", "--json") or '{"loopdevices": []}')
    return [d["name"] for d in devices["loopdevices"] if d["back-file"] == str(backing)]


@pytest.fixture
def backing_file(tmp_path: Path) -> Iterator[Path]:
    # The loop driver is a module of the UML kernel; nothing has loaded it yet.
    subprocess.run(["modprobe", "loop"], check=True)
    path = tmp_path / "backing.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)  # sparse: costs no space until written
    yield path
    for device in attached(path):  # a failed test must not leave it attached
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.mark.fakemachine
def test_file_backed_ext4_round_trip(backing_file: Path, tmp_path: Path) -> None:
    device = run("losetup", "--find", "--show", str(backing_file))
    assert device.startswith("/dev/loop")
    assert attached(backing_file) == [device]
    assert run("blockdev", "--getsize64", device) == str(64 * MiB)

    run("mkfs.ext4", "-q", "-L", "looped", device)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", device, str(mnt))
    try:
        (mnt / "note.txt").write_text("kept in a plain file\n")
        assert run("findmnt", "-rno", "SOURCE", str(mnt)) == device
    finally:
        run("umount", str(mnt))
    run("losetup", "--detach", device)
    assert attached(backing_file) == []

    # Everything went into the file: mount it again through a fresh loop device,
    # the short way (mount -o loop attaches and, on umount, detaches for us).
    assert run("blkid", "-s", "LABEL", "-o", "value", str(backing_file)) == "looped"
    run("mount", "-o", "loop,ro", str(backing_file), str(mnt))
    try:
        assert (mnt / "note.txt").read_text() == "kept in a plain file\n"
    finally:
        run("umount", str(mnt))
    assert attached(backing_file) == []


# The fixture way: build a partitioned image in a host directory through a
# loop device with partition scanning, then inspect it on the host.
BUILD_IMAGE = r"""
set -eu
modprobe loop
dev=$(losetup --find --show --partscan /out/image.raw)
printf 'label: dos\n,32MiB,L\n,,L\n' | sfdisk --quiet "$dev"
# The kernel makes /dev/loopNpM in devtmpfs as it re-reads the table: no udev wait.
mkfs.ext4 -q -L first "${dev}p1"
mkfs.ext4 -q -L second "${dev}p2"
mkdir -p /mnt/first
mount "${dev}p1" /mnt/first
echo "first partition" >/mnt/first/which.txt
umount /mnt/first
losetup --detach "$dev"
echo "device=$dev"
"""


def test_partitioned_image_built_through_a_loop_device(
    fakemachine: Machine, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    image = out / "image.raw"
    with open(image, "wb") as f:
        f.truncate(96 * MiB)
    # The image is an ordinary file in a shared directory, not a guest disk.
    fakemachine.add_volume(out, "/out")
    result = fakemachine.run(BUILD_IMAGE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("device=/dev/loop")

    table = json.loads(run(host_tool("sfdisk"), "--json", str(image)))["partitiontable"]
    assert table["label"] == "dos"
    first, second = table["partitions"]
    assert first["size"] == 32 * MiB // SECTOR
    assert second["start"] == first["start"] + first["size"]
    offset = first["start"] * SECTOR
    assert (
        run(host_tool("debugfs"), "-R", "cat /which.txt", f"{image}?offset={offset}")
        == "first partition"
    )
