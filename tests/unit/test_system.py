"""What the guest's system is made of (image.system): its /etc from the host's
without secrets, the units it masks, the boot's tmpfs mounts."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from pytest_fakemachine.backend.uml.boot import UmlLayout
from pytest_fakemachine.image import initramfs as _initramfs
from pytest_fakemachine.image import system as gs


def _tree(root: Path, files: dict[str, int]) -> None:
    for rel, mode in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
        path.chmod(mode)


def _getent(database: str, key: str) -> str:
    return subprocess.run(
        ["getent", database, key], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_etc_copy_leaves_out_secrets_and_what_others_cannot_read(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "nsswitch.conf": 0o644,
            "pam.d/su": 0o644,
            "ld.so.cache": 0o644,
            "shadow": 0o644,  # even readable: never copied
            "gshadow": 0o644,
            "passwd-": 0o644,
            "ssh/ssh_host_ed25519_key": 0o644,
            "ssh/ssh_config": 0o644,
            "sudoers.d/README": 0o644,
            "krb5.keytab": 0o644,
            "ssl/private/key.pem": 0o644,
            "ssl/certs/ca.pem": 0o644,
            "app/secret.conf": 0o640,  # not world-readable
            "locked/inner.conf": 0o644,
        },
    )
    (tmp_path / "locked").chmod(0o700)
    (tmp_path / "link").symlink_to("nsswitch.conf")
    got = {os.path.relpath(path, tmp_path) for path, _ in gs.etc_entries(str(tmp_path))}
    assert got == {
        "nsswitch.conf",
        "pam.d/su",
        "ld.so.cache",
        "ssh/ssh_config",
        "ssl/certs/ca.pem",
        "link",
    }


def test_generated_shadow_locks_every_account() -> None:
    files = gs.generated_etc("none /usr hostfs ro,/usr 0 0\n")
    shadow = files["etc/shadow"][0].decode().splitlines()
    assert shadow[0].startswith("root:!*:")
    assert all(line.split(":")[1] == "!*" for line in shadow)
    assert files["etc/shadow"][1] == 0o600
    assert "fakemachine" in files["etc/hosts"][0].decode()


def test_initramfs_of_this_host_holds_no_secret() -> None:
    inputs = _initramfs._collect_inputs(UmlLayout())
    copied = {path for path, *_ in inputs.etc}
    assert "/etc/nsswitch.conf" in copied
    for path, mode, *_ in inputs.etc:
        assert not gs.denied(os.path.relpath(path, "/etc")), path
        assert stat.S_ISLNK(mode) or mode & 0o004, path
    host_shadow = Path("/etc/shadow")
    if host_shadow.exists() and os.access(host_shadow, os.R_OK):
        archive = _initramfs._archive(inputs)
        for line in host_shadow.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 1 and len(fields[1]) > 3:  # a real hash
                assert fields[1].encode() not in archive


@pytest.mark.parametrize(
    ("version", "needed"),
    [("procps-ng 4.0.2", True), ("procps-ng 4.0.4", False), ("procps-ng 3.3.17", False),
     ("busybox", False)],
)  # fmt: skip
def test_cpuinfo_copy_only_for_a_ps_that_needs_core_id(
    monkeypatch: pytest.MonkeyPatch, version: str, needed: bool
) -> None:
    def fake_run(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 0, f"ps from {version}\n", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert gs.procps_needs_core_id.__wrapped__() is needed


@pytest.mark.parametrize(
    ("wants", "masked", "expected"),
    [
        (True, "", [("/tmp", "mode=1777,nosuid,size=50%")]),  # Debian 13
        (False, "", []),  # Debian 12: tmp.mount is shipped, wanted by nothing
        (True, "tmp.mount", []),  # the admin masked it
        (True, "local-fs.target.wants/tmp.mount", []),  # or masked it as a dependency
    ],
    ids=["wanted", "not-wanted", "masked", "masked-as-a-dependency"],
)
def test_boot_tmpfs_mounts_are_those_the_hosts_systemd_makes(
    tmp_path: Path, wants: bool, masked: str, expected: list[tuple[str, str]]
) -> None:
    units = tmp_path / "usr/lib/systemd/system"
    (units / "local-fs.target.wants").mkdir(parents=True)
    (units / "tmp.mount").write_text(
        "[Unit]\nBefore=local-fs.target\n[Mount]\nWhat=tmpfs\nWhere=/tmp\nType=tmpfs\n"
        "Options=mode=1777,nosuid,size=50%%\n[Install]\nWantedBy=local-fs.target\n"
    )
    if wants:
        (units / "local-fs.target.wants" / "tmp.mount").symlink_to("../tmp.mount")
    if masked:
        (tmp_path / "etc/systemd/system" / masked).parent.mkdir(parents=True)
        (tmp_path / "etc/systemd/system" / masked).symlink_to("/dev/null")
    assert list(gs.boot_tmpfs_mounts.__wrapped__(str(tmp_path))) == expected
    # The guest's systemd never mounts it again, and a host's own copy never replaces the mask.
    assert "tmp.mount" in gs.MASKED_UNITS
    assert gs.denied("systemd/system/tmp.mount")
