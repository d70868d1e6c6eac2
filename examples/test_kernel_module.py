"""Load kernel modules, use what they provide, and unload them again.

Loading a module needs root and changes the running kernel: not something a
test should do to the machine it runs on. The guest's kernel is the UML
kernel, with its modules at /lib/modules, and it is gone after the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fakemachine import Machine

# The marker way: the test body runs in the guest and uses binfmt_misc, a
# module that teaches the kernel to exec a new kind of file.
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def loaded_modules() -> set[str]:
    return {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}


@pytest.fixture
def binfmt_misc() -> Iterator[Path]:
    """binfmt_misc loaded and mounted; unmounted and unloaded afterwards."""
    assert "binfmt_misc" not in loaded_modules()
    subprocess.run(["modprobe", "binfmt_misc"], check=True)
    subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    yield BINFMT
    subprocess.run(["umount", str(BINFMT)], check=True)
    subprocess.run(["modprobe", "-r", "binfmt_misc"], check=True)
    assert "binfmt_misc" not in loaded_modules()


@pytest.mark.fakemachine
def test_binfmt_misc_runs_a_new_file_format(binfmt_misc: Path, tmp_path: Path) -> None:
    assert "binfmt_misc" in loaded_modules()
    interpreter = tmp_path / "fmdemo-interpreter"
    interpreter.write_text('#!/bin/sh\necho "interpreted $(basename "$1"): $(cat "$1")"\n')
    interpreter.chmod(0o755)
    program = tmp_path / "hello.fmdemo"
    program.write_text("no shebang, just data\n")
    program.chmod(0o755)

    # Without a handler the kernel does not know how to run the file.
    with pytest.raises(OSError, match="Exec format error"):
        subprocess.run([str(program)], check=False)

    # :name:type:offset:magic:mask:interpreter:flags, E = match by file extension.
    (binfmt_misc / "register").write_text(f":fmdemo:E::fmdemo::{interpreter}:")
    assert (binfmt_misc / "fmdemo").read_text().splitlines()[0] == "enabled"
    out = subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout
    assert out == "interpreted hello.fmdemo: no shebang, just data\n"

    # Writing -1 removes the handler again.
    (binfmt_misc / "fmdemo").write_text("-1")
    assert not os.path.exists(binfmt_misc / "fmdemo")


# The fixture way: the test runs on the host and sends this script to a guest,
# where it runs as root: load dummy, make an interface of its type, unload it.
# (The test comes after the marked one on purpose: in pytest-fakemachine 0.1.0 a
# host-run test followed by marked tests up to the end of its module breaks the
# setup of the next module's first host-run test.)
DUMMY_ROUND_TRIP = r"""
set -eu
state() { if grep -q '^dummy ' /proc/modules; then echo loaded; else echo absent; fi; }
echo "before=$(state)"
modprobe dummy
echo "after_load=$(state)"
echo "lsmod=$(lsmod | awk '$1 == "dummy" {print $1}')"
ip link add fm-dummy0 type dummy
echo "kind=$(ip -details -json link show fm-dummy0 | grep -o '"info_kind":"[^"]*"' | cut -d'"' -f4)"
# Unloading a network driver takes its interfaces with it.
modprobe -r dummy
echo "after_unload=$(state)"
echo "interface=$(ip link show fm-dummy0 >/dev/null 2>&1 && echo present || echo gone)"
"""


def test_modprobe_use_and_unload_dummy(fakemachine: Machine) -> None:
    result = fakemachine.run(DUMMY_ROUND_TRIP, check=True)
    state = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert state == {
        "before": "absent",
        "after_load": "loaded",
        "lsmod": "dummy",
        "kind": "dummy",
        "after_unload": "absent",
        "interface": "gone",
    }
