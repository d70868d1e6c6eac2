"""Storage tools in the guest: udev's rules run, so device-mapper never hangs.

One guest with an image (so udevd runs with the host's rules, as on a booted
system) for every row. Each command is bounded by `timeout`: a udev cookie
that is never completed fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

storage = pytest.mark.fakemachine(scope="module", images={"disk": "96M"}, timeout=180)
DISK = "/dev/disk/by-fakemachine-label/disk"


def need(tool: str, package: str) -> None:
    if shutil.which(tool, path="/usr/sbin:/usr/bin") is None:
        pytest.skip(f"{tool} is missing: install the {package} package")


def sh(command: str) -> str:
    proc = subprocess.run(
        ["timeout", "60", "sh", "-ec", command], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def loop_file(name: str, size: str = "32M") -> str:
    path = f"/scratch/{name}.img"
    sh(f"truncate -s {size} {path}")
    return sh(f"losetup -f --show {path}").strip()


@storage
def test_dmsetup_linear() -> None:
    need("dmsetup", "dmsetup")
    sh(f'dmsetup create fmlinear --table "0 2048 linear $(readlink -f {DISK}) 0"')
    assert os.path.exists("/dev/mapper/fmlinear")
    assert sh("blockdev --getsz /dev/mapper/fmlinear").strip() == "2048"
    sh("dmsetup remove fmlinear")


@storage
def test_lvm_create_activate_mkfs_mount() -> None:
    need("lvcreate", "lvm2")
    sh(f"pvcreate -q {DISK} && vgcreate -q fmvg {DISK} && lvcreate -q -L 16M -n data fmvg")
    assert os.path.exists("/dev/fmvg/data")  # a udev rule's link
    sh("mkfs.ext4 -q /dev/fmvg/data && mkdir -p /mnt/lv && mount /dev/fmvg/data /mnt/lv")
    sh("touch /mnt/lv/x && umount /mnt/lv && vgchange -q -an fmvg")
    assert not os.path.exists("/dev/fmvg/data")
    sh("vgchange -q -ay fmvg && test -b /dev/mapper/fmvg-data")
    sh("vgchange -q -an fmvg && vgremove -q -f fmvg && pvremove -q " + DISK)


@storage
def test_cryptsetup_open_with_a_key_file() -> None:
    need("cryptsetup", "cryptsetup")
    device = loop_file("luks")
    sh("head -c 32 /dev/urandom >/scratch/key")
    # A fast PBKDF: the test checks the plumbing, not the key derivation.
    sh(f"cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "
       f"--key-file /scratch/key {device}")  # fmt: skip
    sh(f"cryptsetup open --key-file /scratch/key {device} fmcrypt")
    assert os.path.exists("/dev/mapper/fmcrypt")
    sh("mkfs.ext4 -q /dev/mapper/fmcrypt && cryptsetup close fmcrypt")
    sh(f"losetup -d {device}")


@storage
def test_kpartx_maps_partitions() -> None:
    need("kpartx", "kpartx")
    device = loop_file("parts")
    sh(f"printf 'label: dos\\n,8M\\n,8M\\n' | sfdisk -q {device}")
    sh(f"kpartx -a -s {device}")
    name = os.path.basename(device)
    assert os.path.exists(f"/dev/mapper/{name}p2")
    sh(f"kpartx -d {device} && losetup -d {device}")


@storage
def test_mdadm_raid1() -> None:
    need("mdadm", "mdadm")
    first, second = loop_file("md0"), loop_file("md1")
    sh(f"mdadm --create /dev/md/fmraid --run --level=1 --raid-devices=2 --metadata=1.2 "
       f"{first} {second}")  # fmt: skip
    assert "raid1" in sh("cat /proc/mdstat")
    sh("mdadm --stop /dev/md/fmraid")
    sh(f"losetup -d {first} {second}")
