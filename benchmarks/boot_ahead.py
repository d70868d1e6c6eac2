"""Function scope, booted ahead: 10 trivial function-scoped marked tests, whole pytest runs.

    python benchmarks/boot_ahead.py [--before /work/ref-2834e98] [--rounds 5] [--tests 10]

Rows, run interleaved (one of each per round, the order rotating), each a
whole ``python -m pytest`` process with this interpreter:

- before: ``-n 0`` with the package from the ``--before`` tree (PYTHONPATH);
- off: ``-n 0`` with this tree, ``--fakemachine-boot-ahead=off``;
- on: ``-n 0`` with this tree (boot-ahead is on by default);
- on -n 2: the same with pytest-xdist, two workers (each worker's share of
  the CPUs is one: boot-ahead stays off there on a 2-core machine).

Prints the medians of wall time and CPU time (user+sys of pytest and its
children, guests included) and the ratios the targets of issue 15 name:
``before / on`` (at least 1.6x) and ``on / on -n 2`` (at least 1.0x).

``--real`` adds rows of a small module of realistic root-needing tests
(mkfs + mount + write, a loop device, partitions, a network namespace,
untar, subprocesses, imports, a systemd unit), ``-n 0``: ``scope="module"``
and ``scope="function"`` with boot-ahead off and on; the target is a
function-scoped test costing at most 1.6x a module-scoped one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from before_after import measure  # beside this script, on sys.path when it runs

HERE = Path(__file__).resolve().parent.parent
TEST = """\
import pytest


@pytest.mark.fakemachine
@pytest.mark.parametrize("n", range({tests}))
def test_trivial(n: int) -> None:
    assert n >= 0
"""


REAL = """\
import io, os, subprocess, sys, tarfile, pytest

pytestmark = pytest.mark.fakemachine(images={{"d": "64M"}}, scope={scope!r})
DISK = "/dev/disk/by-fakemachine-label/d"


def sh(script):
    subprocess.run(["sh", "-ec", script], check=True, capture_output=True)


def test_mkfs_mount_write(tmp_path):
    sh(f"mkfs.ext4 -qF {{DISK}}; mount {{DISK}} {{tmp_path}}; "
       f"dd if=/dev/zero of={{tmp_path}}/f bs=1M count=20 status=none; sync; umount {{tmp_path}}")


def test_loop_device(tmp_path):
    sh(f"truncate -s 32M {{tmp_path}}/img; dev=$(losetup -f --show {{tmp_path}}/img); "
       f"mkfs.ext4 -q $dev; mount $dev /mnt; touch /mnt/x; umount /mnt; losetup -d $dev")


def test_partitions():
    sh(f"wipefs -qa {{DISK}}; echo 'start=2048, size=20M' | sfdisk -q {{DISK}}; udevadm settle; "
       f"test -e {{DISK}}-part1")


def test_network_namespace():
    sh("ip netns add fm; ip link add v0 type veth peer name v1; ip link set v1 netns fm; "
       "ip addr add 10.9.0.1/24 dev v0; ip link set v0 up; "
       "ip -n fm addr add 10.9.0.2/24 dev v1; ip -n fm link set v1 up; "
       "ping -c1 -W5 10.9.0.2 >/dev/null; ip netns del fm")


def test_untar(tmp_path):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for i in range(500):
            info = tarfile.TarInfo(f"d{{i % 10}}/f{{i}}")
            info.size = 10
            tar.addfile(info, io.BytesIO(b"0123456789"))
    data.seek(0)
    with tarfile.open(fileobj=data) as tar:
        tar.extractall(tmp_path, filter="data")


def test_subprocesses():
    for _ in range(30):
        subprocess.run(["true"], check=True)


def test_imports():
    subprocess.run([sys.executable, "-c", "import json, email.parser, http.client, unittest"],
                   check=True)


def test_systemd_unit():
    sh("systemd-run --wait --quiet --service-type=oneshot true")
"""
REAL_TESTS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="/work/ref-2834e98", help="the tree of 2834e98")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tests", type=int, default=10)
    parser.add_argument("--real", action="store_true", help="add the realistic module's rows")
    parser.add_argument("--no-trivial", action="store_true", help="only the realistic rows")
    args = parser.parse_args()
    before = Path(args.before).resolve()
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-p", "no:randomly", "test_fm.py"]  # fmt: skip
    rows = {
        "before -n 0": (before, [*pytest_argv, "-n", "0"]),
        "off -n 0": (HERE, [*pytest_argv, "-n", "0", "--fakemachine-boot-ahead=off"]),
        "on -n 0": (HERE, [*pytest_argv, "-n", "0"]),
        "on -n 2": (HERE, [*pytest_argv, "-n", "2"]),
    }
    real_argv = [*pytest_argv[:-1], "-n", "0"]
    if args.no_trivial:
        rows.clear()
    if args.real or args.no_trivial:
        rows["real module"] = (HERE, [*real_argv, "test_module.py"])
        rows["real function off"] = (HERE, [*real_argv, "test_function.py",
                                            "--fakemachine-boot-ahead=off"])  # fmt: skip
        rows["real function on"] = (HERE, [*real_argv, "test_function.py"])
    results: dict[str, list[tuple[float, float]]] = {row: [] for row in rows}
    with tempfile.TemporaryDirectory(prefix="fm-boot-ahead-") as work:
        Path(work, "test_fm.py").write_text(TEST.format(tests=args.tests))
        Path(work, "pytest.ini").write_text("[pytest]\n")
        for scope in ("module", "function"):
            Path(work, f"test_{scope}.py").write_text(REAL.format(scope=scope))
        for tree in (before, HERE):  # warm up: initramfs caches, page cache
            measure([*pytest_argv[:-1], "test_fm.py::test_trivial[0]"], tree, work)
        names = list(rows)
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                tree, argv = rows[name]
                results[name].append(measure(argv, tree, work))
                wall, cpu = results[name][-1]
                print(f"round {i + 1}: {name}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\n{args.rounds} rounds, {os.cpu_count()} CPUs, load now {load}; trivial rows: "
          f"{args.tests} tests, real rows: {REAL_TESTS} tests (whole runs)\n")  # fmt: skip
    print("| run | wall (median) | CPU (median) | per test |")
    print("|---|---|---|---|")
    medians = {}
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        medians[name] = wall
        tests = REAL_TESTS if name.startswith("real") else args.tests
        print(f"| {name} | {wall:.1f} s | {cpu:.1f} s | {wall / tests:.2f} s |")
    if "on -n 0" in medians:
        trivial_ratios(medians)
    if "real module" in medians:  # whole runs: the session's own start-up is in each test's cost
        for row in ("real function off", "real function on"):
            ratio = medians[row] / medians["real module"]
            print(f"{row} / real module, per test: {ratio:.2f}x (target: at most 1.6x)")


def trivial_ratios(medians: dict[str, float]) -> None:
    speedup = medians["before -n 0"] / medians["on -n 0"]
    print(f"\nbefore / on (-n 0): {speedup:.2f}x (target: at least 1.6x)")
    print(f"off / on (-n 0): {medians['off -n 0'] / medians['on -n 0']:.2f}x")
    xdist = medians["on -n 0"] / medians["on -n 2"]
    print(f"on -n 0 / on -n 2: {xdist:.2f}x (target: at least 1.0x)")


if __name__ == "__main__":
    main()
