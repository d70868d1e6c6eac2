"""A realistic root-needing test module: the real-suite rows of the benchmark.

Twenty tests of the kinds that make people reach for a machine: file systems
on images, loop devices, partition tables, network namespaces and links,
untar of many small files, subprocess-heavy Python, a systemd unit. No
marker: the benchmark runs the file as root on the host (without the plugin,
inside ``unshare -mn --propagation private``, so mounts and links stay in a
throw-away namespace) and in guests (``--fakemachine-all`` with
``-o fakemachine_scope=module`` or ``function``). Every test undoes what the
host would keep (loop devices, named network namespaces); a tool that is
missing skips its test, and so does the systemd unit where systemd is not
PID 1 (the benchmark says which tests its host row left out).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1 << 20


def run(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=input).stdout


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            pytest.skip(f"{tool} is not installed")


def image(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@contextlib.contextmanager
def loop(path: Path, *flags: str) -> Iterator[str]:
    device = run("losetup", "--find", "--show", *flags, str(path)).strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@contextlib.contextmanager
def mounted(source: str, target: Path, *options: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    run("mount", *options, source, str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    full = f"{name}{os.getpid()}"
    run("ip", "netns", "add", full)
    try:
        yield full
    finally:
        subprocess.run(["ip", "netns", "del", full], check=False)


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def test_mkfs_ext4_mount_write(tmp_path: Path) -> None:
    need("mkfs.ext4")
    disk = image(tmp_path / "disk.img", 64 * MIB)
    run("mkfs.ext4", "-q", "-F", str(disk))
    with mounted(str(disk), tmp_path / "mnt", "-o", "loop") as mnt:
        block = os.urandom(MIB)
        for n in range(8):
            (mnt / f"f{n}").write_bytes(block)
        os.sync()
        assert sum(p.stat().st_size for p in mnt.glob("f*")) == 8 * MIB


def test_loop_device_roundtrip(tmp_path: Path) -> None:
    disk = image(tmp_path / "raw.img", 16 * MIB)
    data = os.urandom(4 * MIB)
    with loop(disk) as device:
        fd = os.open(device, os.O_RDWR)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        run("blockdev", "--flushbufs", device)
    assert disk.read_bytes()[: len(data)] == data


def test_sfdisk_partition_table(tmp_path: Path) -> None:
    need("sfdisk")
    disk = image(tmp_path / "part.img", 64 * MIB)
    run("sfdisk", "-q", str(disk), input="label: gpt\n,16M,L\n,16M,L\n,,L\n")
    dump = run("sfdisk", "--dump", str(disk))
    assert dump.count("type=0FC63DAF") == 3


def test_parted_partition_table(tmp_path: Path) -> None:
    need("parted")
    disk = image(tmp_path / "parted.img", 64 * MIB)
    parted = ("parted", "-s", str(disk))
    run(*parted, "mklabel", "msdos")
    run(*parted, "mkpart", "primary", "ext4", "1MiB", "32MiB")
    run(*parted, "mkpart", "primary", "ext4", "32MiB", "100%")
    assert run(*parted, "print").count("primary") == 2


def test_loop_partitions_mkfs(tmp_path: Path) -> None:
    need("sfdisk", "mkfs.ext4", "mkfs.vfat")
    disk = image(tmp_path / "parts.img", 64 * MIB)
    run("sfdisk", "-q", str(disk), input="label: dos\n,24M,c\n,,L\n")
    table = json.loads(run("sfdisk", "--json", str(disk)))["partitiontable"]["partitions"]
    # Loop devices at each partition's offset: partition nodes (--partscan)
    # need udev or a devtmpfs, which a container's /dev may lack.
    spans = [(str(p["start"] * 512), str(p["size"] * 512)) for p in table]
    with loop(disk, "--offset", spans[0][0], "--sizelimit", spans[0][1]) as first:
        run("mkfs.vfat", first)
        assert "vfat" in run("blkid", "-o", "value", "-s", "TYPE", first)
    with loop(disk, "--offset", spans[1][0], "--sizelimit", spans[1][1]) as second:
        run("mkfs.ext4", "-q", "-F", second)
        with mounted(second, tmp_path / "p2") as mnt:
            (mnt / "hello").write_text("hello")


def test_e2fsck_after_writes(tmp_path: Path) -> None:
    need("mkfs.ext4", "e2fsck")
    disk = image(tmp_path / "fsck.img", 32 * MIB)
    run("mkfs.ext4", "-q", "-F", str(disk))
    with mounted(str(disk), tmp_path / "mnt", "-o", "loop") as mnt:
        for n in range(200):
            (mnt / f"small{n}").write_text("x" * n)
    run("e2fsck", "-f", "-n", str(disk))


def test_tmpfs_bind_remount_readonly(tmp_path: Path) -> None:
    with mounted("tmpfs", tmp_path / "t", "-t", "tmpfs", "-o", "size=16m") as t:
        (t / "data").mkdir()
        (t / "data" / "file").write_text("x")
        with mounted(str(t / "data"), tmp_path / "view", "--bind"):
            run("mount", "-o", "remount,bind,ro", str(tmp_path / "view"))
            with pytest.raises(OSError):
                (tmp_path / "view" / "new").write_text("y")
            assert (tmp_path / "view" / "file").read_text() == "x"


def test_overlayfs(tmp_path: Path) -> None:
    lower, upper, work = (tmp_path / n for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "base").write_text("lower")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    with mounted("overlay", tmp_path / "merged", "-t", "overlay", "-o", options) as merged:
        (merged / "base").write_text("changed")
        (merged / "new").write_text("new")
    assert (lower / "base").read_text() == "lower"
    assert (upper / "base").read_text() == "changed"


def test_netns_veth_ping() -> None:
    need("ping")
    suffix = os.getpid() % 10000
    host_end, ns_end = f"fmv{suffix}a", f"fmv{suffix}b"
    with netns("fmping") as ns:
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        try:
            run("ip", "link", "set", ns_end, "netns", ns)
            run("ip", "addr", "add", "10.213.0.1/24", "dev", host_end)
            run("ip", "link", "set", host_end, "up")
            run("ip", "-n", ns, "addr", "add", "10.213.0.2/24", "dev", ns_end)
            run("ip", "-n", ns, "link", "set", ns_end, "up")
            run("ping", "-c", "2", "-i", "0.2", "-W", "5", "10.213.0.2")
        finally:
            subprocess.run(["ip", "link", "del", host_end], check=False)


def test_bridge_with_veth_ports() -> None:
    suffix = os.getpid() % 10000
    bridge = f"fmbr{suffix}"
    run("ip", "link", "add", bridge, "type", "bridge")
    try:
        for n in range(3):
            a, b = f"fmp{suffix}{n}a", f"fmp{suffix}{n}b"
            run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            run("ip", "link", "set", a, "master", bridge, "up")
        run("ip", "link", "set", bridge, "up")
        ports = run("ip", "-br", "link", "show", "master", bridge).splitlines()
        assert len(ports) == 3
    finally:
        for n in range(3):
            subprocess.run(["ip", "link", "del", f"fmp{suffix}{n}a"], check=False)
        subprocess.run(["ip", "link", "del", bridge], check=False)


def test_iptables_rules_in_netns() -> None:
    need("iptables-legacy")
    with netns("fmipt") as ns:
        for port in range(8000, 8010):
            run("ip", "netns", "exec", ns, "iptables-legacy", "-A", "INPUT", "-p", "tcp",
                "--dport", str(port), "-j", "DROP")  # fmt: skip
        rules = run("ip", "netns", "exec", ns, "iptables-legacy", "-S", "INPUT")
        assert rules.count("-j DROP") == 10


def test_tcp_loopback_round_trips() -> None:
    run("ip", "link", "set", "lo", "up")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    thread = threading.Thread(target=echo)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        for n in range(200):
            client.sendall(b"%d\n" % n)
            assert client.recv(64) == b"%d\n" % n
    thread.join()
    server.close()


def test_untar_small_files(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for d in range(20):
        (source / f"d{d}").mkdir(parents=True)
        for n in range(100):
            (source / f"d{d}" / f"f{n}.txt").write_text(f"{d} {n}\n" * 4)
    archive = tmp_path / "files.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(source, arcname="src")
    target = tmp_path / "out"
    target.mkdir()
    run("tar", "-xf", str(archive), "-C", str(target))
    assert sum(1 for _ in (target / "src").rglob("*.txt")) == 2000


def test_chown_chmod_tree(tmp_path: Path) -> None:
    for n in range(500):
        (tmp_path / f"f{n}").write_text("x")
    for n, path in enumerate(sorted(tmp_path.iterdir())):
        os.chown(path, 1000 + n % 3, 1000)
        os.chmod(path, 0o640)
    assert {p.stat().st_uid for p in tmp_path.iterdir()} == {1000, 1001, 1002}


def test_many_subprocesses() -> None:
    for _ in range(100):
        subprocess.run(["true"], check=True)


def test_shell_pipelines() -> None:
    out = run("sh", "-c", "for i in $(seq 1 30); do echo $i | sed s/1/x/ | tr x y; done | wc -l")
    assert out.strip() == "30"


def test_python_imports_in_subprocess() -> None:
    code = "import json, subprocess, pathlib, email.parser, http.client, unittest, asyncio, decimal"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sqlite_transactions(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "data.db")
    db.execute("create table t (n integer, s text)")
    for n in range(200):
        with db:
            db.execute("insert into t values (?, ?)", (n, str(n) * 10))
    assert db.execute("select count(*) from t").fetchone() == (200,)
    db.close()


def test_sysctl_in_netns() -> None:
    with netns("fmsys") as ns:
        run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        value = run("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward")
        assert value.strip() == "1"


def test_systemd_run_unit(tmp_path: Path) -> None:
    if not os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd is not PID 1 here")
    marker = tmp_path / "ran"
    run("systemd-run", "--wait", "--quiet", "--unit", f"fmbench-{os.getpid()}",
        "/bin/sh", "-c", f"echo ok >{marker}")  # fmt: skip
    assert marker.read_text() == "ok\n"
