"""Integration tests of ``Machine``'s storage: disk images, scratch, memory, volumes.

Every guest here is a real UML boot, through the ``fakemachine`` fixture.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_fakemachine import ConfigError, FakeMachineError, Machine
from pytest_fakemachine.backend import leftovers

MiB = 1 << 20
LABEL_DIR = "/dev/disk/by-fakemachine-label"


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def host_tool(name: str) -> str:
    found = shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        pytest.skip(f"{name} is not installed on the host")
    return found


# --------------------------------------------------------------------------
# Disk images
# --------------------------------------------------------------------------


def test_images_appear_under_their_labels(fakemachine: Machine, tmp_path: Path) -> None:
    default = fakemachine.add_image(tmp_path / "a.img", size="64M")
    named = fakemachine.add_image(tmp_path / "b.img", size=32 * MiB, label="data")
    assert default == f"{LABEL_DIR}/fakedisk-0"
    assert named == f"{LABEL_DIR}/data"
    result = fakemachine.run(
        f'for d in {default} {named}; do test -b "$d" && echo "$d $(readlink -f "$d") '
        f'$(blockdev --getss "$d") $(blockdev --getsize64 "$d")"; done',
        check=True,
    )
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == [default, named]
    devices = [line[1] for line in lines]
    assert all(d.startswith("/dev/") for d in devices) and devices[0] != devices[1]
    assert [line[2] for line in lines] == ["512", "512"]  # sector size
    assert [int(line[3]) for line in lines] == [64 * MiB, 32 * MiB]


def test_new_image_is_created_sparse(tmp_path: Path) -> None:
    image = tmp_path / "sparse.img"
    Machine().add_image(image, size="1G")
    st = os.stat(image)
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < MiB


def test_existing_image_is_not_shrunk(tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    data = secrets.token_bytes(2 * MiB)
    image.write_bytes(data)
    with pytest.raises(ConfigError):
        Machine().add_image(image, size="1M")
    assert image.read_bytes() == data


def test_existing_image_is_reused_as_is(fakemachine: Machine, tmp_path: Path) -> None:
    image = tmp_path / "existing.img"
    data = secrets.token_bytes(3 * MiB + 4096)  # not a whole number of MiB
    image.write_bytes(data)
    disk = fakemachine.add_image(image, label="existing")
    result = fakemachine.run(
        f"blockdev --getsize64 {disk}; sha256sum <{disk}; head -c 16 {disk} | od -An -tx1",
        check=True,
    )
    size, digest, head = result.stdout.splitlines()
    assert int(size) == len(data)
    assert digest.split()[0] == sha256(data)
    assert head.split() == [f"{b:02x}" for b in data[:16]]
    assert image.stat().st_size == len(data)
    assert image.read_bytes() == data


def test_filesystem_written_in_guest_is_readable_on_host(
    fakemachine: Machine, tmp_path: Path
) -> None:
    debugfs, e2fsck = host_tool("debugfs"), host_tool("e2fsck")
    image = tmp_path / "fs.img"
    disk = fakemachine.add_image(image, size="64M", label="fs")
    # No umount: the file system must be clean when run() returns anyway.
    fakemachine.run(
        f"mkfs.ext4 -q {disk} && mkdir -p /mnt/fs && mount {disk} /mnt/fs && "
        "echo 'written in the guest' >/mnt/fs/file",
        check=True,
    )
    cat = subprocess.run(
        [debugfs, "-R", "cat /file", str(image)],
        capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert cat.stdout == "written in the guest\n"
    fsck = subprocess.run(
        [e2fsck, "-fn", str(image)],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_partitions_get_part_links(fakemachine: Machine, tmp_path: Path) -> None:
    image = tmp_path / "parts.img"
    disk = fakemachine.add_image(image, size="64M", label="parts")
    result = fakemachine.run(
        f"printf 'label: dos\\n,16M\\n,\\n' | sfdisk -q {disk} && udevadm settle && "
        f'for p in {disk}-part1 {disk}-part2; do test -b "$p" && '
        f'echo "$p $(blockdev --getsize64 "$p")"; done',
        check=True,
    )
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == [f"{disk}-part1", f"{disk}-part2"]
    assert int(lines[0][1]) == 16 * MiB
    assert 40 * MiB < int(lines[1][1]) < 48 * MiB
    with open(image, "rb") as f:  # the partition table reached the host file
        f.seek(510)
        assert f.read(2) == b"\x55\xaa"


# --------------------------------------------------------------------------
# Scratch and memory
# --------------------------------------------------------------------------


def test_scratch_size_gives_an_ext4_disk(fakemachine: Machine) -> None:
    fakemachine.scratch = "256M"
    result = fakemachine.run(
        "grep ' /scratch ' /proc/mounts; stat -f -c '%b %S' /scratch; "
        "echo data >/scratch/f && cat /scratch/f",
        check=True,
    )
    mount, blocks, data = result.stdout.splitlines()
    assert mount.split()[2] == "ext4"
    count, block_size = map(int, blocks.split())
    assert 200 * MiB < count * block_size <= 256 * MiB
    assert data == "data"


@pytest.mark.parametrize(("memory", "low_mib", "high_mib"), [("512M", 300, 512), ("1G", 700, 1024)])
def test_memory_is_honoured(fakemachine: Machine, memory: str, low_mib: int, high_mib: int) -> None:
    fakemachine.memory = memory
    result = fakemachine.run("grep MemTotal /proc/meminfo", check=True)
    name, kib, unit = result.stdout.split()
    assert (name, unit) == ("MemTotal:", "kB")
    assert low_mib * 1024 < int(kib) < high_mib * 1024


# --------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------


def test_read_write_volume_writes_reach_the_host(fakemachine: Machine, tmp_path: Path) -> None:
    shared = tmp_path / "rw"
    shared.mkdir()
    (shared / "in.txt").write_text("from host\n")
    fakemachine.add_volume(shared)
    result = fakemachine.run(
        f"cat {shared}/in.txt && echo from-guest >{shared}/out.txt && "
        f"mkdir {shared}/sub && echo nested >{shared}/sub/n && rm {shared}/in.txt",
        check=True,
    )
    assert result.stdout == "from host\n"
    assert (shared / "out.txt").read_text() == "from-guest\n"
    assert (shared / "sub" / "n").read_text() == "nested\n"
    assert not (shared / "in.txt").exists()


def test_read_only_volume_refuses_writes(fakemachine: Machine, tmp_path: Path) -> None:
    shared = tmp_path / "ro"
    shared.mkdir()
    (shared / "in.txt").write_text("from host\n")
    fakemachine.add_volume(shared, "/ro", read_only=True)
    result = fakemachine.run(
        "cat /ro/in.txt\n"
        "if echo x >/ro/new 2>/dev/null; then echo write=ok; else echo write=refused; fi\n"
        "if rm /ro/in.txt 2>/dev/null; then echo rm=ok; else echo rm=refused; fi\n",
        check=True,
    )
    assert result.stdout == "from host\nwrite=refused\nrm=refused\n"
    assert sorted(os.listdir(shared)) == ["in.txt"]
    assert (shared / "in.txt").read_text() == "from host\n"


def test_volume_guest_dir_differs_from_host_path(fakemachine: Machine, tmp_path: Path) -> None:
    shared = tmp_path / "elsewhere"
    shared.mkdir()
    (shared / "in.txt").write_text("from host\n")
    fakemachine.add_volume(shared, "/srv/shared")
    result = fakemachine.run(
        f"cat /srv/shared/in.txt && echo hi >/srv/shared/out && "
        f"if test -e {shared}; then echo host_path=present; else echo host_path=absent; fi",
        check=True,
    )
    assert result.stdout == "from host\nhost_path=absent\n"
    assert (shared / "out").read_text() == "hi\n"


VolumeArgs = Callable[[Path], "tuple[str | Path, str | None]"]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tmp: (tmp / "missing", None), id="missing"),
        pytest.param(lambda tmp: ("/dev/null", None), id="device-file"),
        pytest.param(lambda tmp: (tmp / "file.txt", None), id="regular-file"),
        pytest.param(lambda tmp: (tmp, "/with space"), id="space-in-guest-path"),
        pytest.param(lambda tmp: (tmp, "/with\ttab"), id="tab-in-guest-path"),
        pytest.param(lambda tmp: (tmp, "relative/dir"), id="relative-guest-path"),
    ],
)
def test_bad_volume_is_a_config_error_before_any_guest(
    fakemachine: Machine, tmp_path: Path, private_tempdir: Path, make: VolumeArgs
) -> None:
    (tmp_path / "file.txt").write_text("not a directory\n")
    host, guest = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        fakemachine.add_volume(host, guest)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FakeMachineError)
    assert fakemachine.volumes == ()
    assert leftovers(os.getpid()) == []
    assert os.listdir(private_tempdir) == []


def test_duplicate_labels_are_refused(fakemachine: Machine, tmp_path: Path) -> None:
    fakemachine.add_image(tmp_path / "a.img", size="1M", label="same")
    with pytest.raises(ConfigError, match="same"):
        fakemachine.add_image(tmp_path / "b.img", size="1M", label="same")
    fakemachine.add_image(tmp_path / "c.img", size="1M")  # fakedisk-1
    with pytest.raises(ConfigError, match="fakedisk-1"):
        fakemachine.add_image(tmp_path / "d.img", size="1M", label="fakedisk-1")
    assert [image.label for image in fakemachine.images] == ["same", "fakedisk-1"]
