"""LVM on LUKS on partitions: the storage stack of an installer, built as root.

The guest runs udev with the host's rules (device-mapper, LVM, the
/dev/disk/by-* links), so `cryptsetup open` and `lvcreate` complete as on a
booted system. The LUKS key derivation is made fast (PBKDF2, 1000
iterations): the test checks the plumbing, not the password hashing.

Needs the host's cryptsetup and lvm2 (optional packages of scripts/setup.sh);
skipped, naming the package, where one is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DISK = "/dev/disk/by-fakemachine-label/install"
pytestmark = pytest.mark.fakemachine(images={"install": "128M"}, timeout=300)


def need(tool: str, package: str) -> None:
    if shutil.which(tool, path="/usr/sbin:/usr/bin") is None:
        pytest.skip(f"{tool} is missing: install the {package} package")


def run(command: str, stdin: str | None = None) -> str:
    # `timeout`: a device-mapper wait that never ends fails the test, not the run.
    proc = subprocess.run(
        ["timeout", "120", "sh", "-ec", command],
        input=stdin, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{command}: {proc.stderr}"
    return proc.stdout


def test_lvm_on_luks_on_partitions(tmp_path: Path) -> None:
    need("cryptsetup", "cryptsetup")
    need("lvcreate", "lvm2")
    # A GPT with a small boot partition and the rest for the encrypted volume.
    run(f"sfdisk -q {DISK}", stdin="label: gpt\n,16M,L\n,,L\n")
    run("udevadm settle")
    part = f"{DISK}-part2"
    assert Path(part).exists()

    key = tmp_path / "key"
    key.write_bytes(b"correct horse battery staple")
    run(f"cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000"
        f" --key-file {key} {part}")  # fmt: skip
    run(f"cryptsetup open --key-file {key} {part} cryptroot")

    run("pvcreate -q /dev/mapper/cryptroot && vgcreate -q system /dev/mapper/cryptroot")
    run("lvcreate -q -L 32M -n root system && lvcreate -q -l 100%FREE -n home system")
    run("mkfs.ext4 -q /dev/system/root && mkfs.ext4 -q /dev/system/home")
    run("mkdir -p /target && mount /dev/system/root /target")
    run("mkdir -p /target/home && mount /dev/system/home /target/home")
    Path("/target/home/hello").write_text("encrypted hello\n")

    # The by-id links come from udev's rules, as on the host.
    links = run("ls /dev/disk/by-id")
    assert "dm-name-system-home" in links
    assert "lvm-pv-uuid-" in links

    # Tear everything down, then bring it back up from the disk alone.
    run("umount /target/home /target && vgchange -q -an system && cryptsetup close cryptroot")
    assert not Path("/dev/mapper/cryptroot").exists()
    run(f"cryptsetup open --key-file {key} {part} cryptroot && vgchange -q -ay system")
    run("mount /dev/system/root /target && mount /dev/system/home /target/home")
    assert Path("/target/home/hello").read_text() == "encrypted hello\n"
    # With NAME, lsblk prints the tree (disk first); without, it may print by device number.
    lsblk = [line.split()[-1] for line in run(f"lsblk -n -o NAME,TYPE {DISK}").splitlines()]
    assert lsblk[:4] == ["disk", "part", "part", "crypt"]
    assert lsblk.count("lvm") == 2
    run("umount /target/home /target && vgchange -q -an system && cryptsetup close cryptroot")
