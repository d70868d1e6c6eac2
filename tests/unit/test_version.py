"""The version: pyproject.toml's alone, readable at run time, shown by the
command line and the doctor. No guest boots here."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_fakemachine
from pytest_fakemachine import Machine
from pytest_fakemachine.backend.base import Check
from pytest_fakemachine.cli import doctor

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def _pyproject_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', PYPROJECT.read_text(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_the_version_is_pyprojects_as_installed() -> None:
    version = _pyproject_version()
    assert pytest_fakemachine.__version__ == version
    assert importlib.metadata.version("pytest-fakemachine") == version
    # Nowhere else in the package: one place to change at a release.
    package = Path(pytest_fakemachine.__file__).parent
    for path in package.rglob("*.py"):
        assert f'"{version}"' not in path.read_text(), path


def test_the_command_line_shows_the_version() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_fakemachine", "--version"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"pytest-fakemachine {_pyproject_version()}\n")


def test_the_doctor_says_which_version_it_checks_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_checks", lambda machine, say: [])
    monkeypatch.setattr(doctor, "_test_boot", lambda machine: Check("test boot", None))
    said: list[str] = []
    assert doctor.run_doctor(said.append, Machine()) == 0
    assert said[0] == f"pytest-fakemachine {_pyproject_version()}"
