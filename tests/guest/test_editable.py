"""Editable installs whose sources an import finder reaches (not sys.path)
import in the guest as on the host: setuptools (finder, strict, compat) and
hatchling with editables. Each is built by its real backend."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("setuptools", minversion="70.1", reason="the `test` extra installs it")
pytest.importorskip("hatchling", reason="the `test` extra installs it")
pytest.importorskip("editables", reason="the `test` extra installs it")

SETUPTOOLS = """
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"
[project]
name = "{name}"
version = "0.1"
[tool.setuptools]
packages = ["{name}"]
"""
HATCHLING = """
[build-system]
requires = ["hatchling", "editables"]
build-backend = "hatchling.build"
[project]
name = "{name}"
version = "0.1"
[tool.hatch.build]
dev-mode-exact = true
[tool.hatch.build.targets.wheel]
packages = ["{name}"]
"""
BUILD = {
    "ed_default": ("setuptools.build_meta", SETUPTOOLS, None),
    "ed_strict": ("setuptools.build_meta", SETUPTOOLS, {"editable_mode": "strict"}),
    "ed_compat": ("setuptools.build_meta", SETUPTOOLS, {"editable_mode": "compat"}),
    "ed_hatch": ("hatchling.build", HATCHLING, None),
}


def _install_editable(name: str, projects: Path, site: Path) -> None:
    """Build ``name`` editable with its backend and unpack the wheel into ``site``
    (what pip does, without touching the test environment)."""
    backend, pyproject, settings = BUILD[name]
    project = projects / name
    (project / name).mkdir(parents=True)
    (project / name / "__init__.py").write_text(f"WHERE = {name!r}\n")
    (project / "pyproject.toml").write_text(pyproject.format(name=name))
    dist = projects / f"{name}-dist"
    dist.mkdir()
    code = f"import {backend} as b; b.build_editable({str(dist)!r}, {settings!r})"
    subprocess.run([sys.executable, "-c", code], cwd=project, check=True, capture_output=True)
    (wheel,) = dist.glob("*.whl")
    zipfile.ZipFile(wheel).extractall(site)


def test_editable_installs_import_in_the_guest_as_on_the_host(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    projects = tmp_path_factory.mktemp("projects")  # outside the rootdir
    site = pytester.mkdir("site")
    for name in BUILD:
        _install_editable(name, projects, site)
    # site-packages, as the interpreter processes it at start-up (.pth files).
    pytester.makeconftest(f"import site\nsite.addsitedir({str(site)!r})\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakemachine
        def test_imports():
            import ed_default, ed_strict, ed_compat, ed_hatch
            for module in (ed_default, ed_strict, ed_compat, ed_hatch):
                assert module.WHERE == module.__name__, module.__file__
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
