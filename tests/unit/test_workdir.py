"""The work directory's files (image.workdir): the run's fstab ends with the guest's root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pytest_fakemachine._config import Volume, in_guest
from pytest_fakemachine.backend.uml.boot import UmlLayout
from pytest_fakemachine.image import templates as t
from pytest_fakemachine.image.initramfs import _MERGED_USR
from pytest_fakemachine.image.system import FHS_LINKS
from pytest_fakemachine.image.workdir import Contents, write_static_files

from .test_cpio import parse_newc


def test_the_new_root_binds_each_tree_once_and_its_archive_never_reaches_a_volume(
    tmp_path: Path,
) -> None:
    host, work = tmp_path / "host", tmp_path / "work"
    host.mkdir()
    work.mkdir()
    guests = ("/opt", "/opt/inner", "/var/run/x", "/home/me")
    volumes = [Volume(host, guest, False) for guest in guests]
    write_static_files(work, UmlLayout(), Contents((), volumes, None, False, None))

    lines = [line.split() for line in (work / "fstab").read_text().splitlines()]
    first = next(i for i, fields in enumerate(lines) if fields[1] == t.NEW_ROOT)
    assert lines[first][:4] == ["tmpfs", t.NEW_ROOT, "tmpfs", "X-mount.mkdir,mode=0755"]
    binds = lines[first + 1 :]  # the last lines: each tree into the new root, at its path
    assert all(f[1:4] == [t.NEW_ROOT + f[0], "none", "X-mount.mkdir,rbind"] for f in binds)
    bound = [f[0] for f in binds]
    assert {*t.ROOT_TREES, "/opt", "/home/me", "/scratch"} <= set(bound)
    # A volume below a bound tree comes with it; one through a link, where it leads.
    assert not {"/opt/inner", "/run/x", "/var/run/x"} & set(bound)
    assert not [b for b in bound for other in bound if b.startswith(other + "/")]

    entries = {e.name: e for e in parse_newc((work / t.ROOT_ARCHIVE).read_bytes())}
    root = t.NEW_ROOT.lstrip("/")
    assert stat.S_ISDIR(entries[f"{root}/home"].mode)  # a volume's parent is the root's own
    assert entries[f"{root}/var/run"].data == b"../run"
    assert entries[f"{root}/bin"].data == b"usr/bin"
    assert stat.S_ISCHR(entries["dev/fuse"].mode)  # the static nodes, into the devtmpfs
    for name in entries:
        path = "/" + name.removeprefix(root + "/") if name.startswith(root + "/") else None
        assert path is None or not [b for b in bound if path == b or path.startswith(b + "/")]


def test_a_path_through_each_of_the_guests_own_links_is_where_it_leads() -> None:
    # The volumes' checks and the new root's binds resolve paths with one table:
    # it must know every link the guest's tree has.
    for link, target in (*FHS_LINKS, *_MERGED_USR.items()):
        leads = os.path.normpath(os.path.join("/", os.path.dirname(link), target))
        assert in_guest(f"/{link}/x") == f"{leads}/x"
