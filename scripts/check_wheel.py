"""What ``tox -e build`` checks of the built distributions: the wheel and the
sdist hold every subpackage and py.typed, and the wheel, installed into a
fresh venv, runs a marked test and ``pytest-fakemachine -- true``.

Usage: python scripts/check_wheel.py DIST_DIR
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pytest_fakemachine"

MARKED_TEST = """\
import pytest

import pytest_fakemachine


@pytest.mark.fakemachine
def test_in_a_guest():
    assert pytest_fakemachine.in_fakemachine()
    assert pytest_fakemachine.__file__.startswith({site!r})
"""


def expected_files() -> set[str]:
    """The package's modules and py.typed, relative to the source tree's root."""
    files = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / PACKAGE).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    return files | {f"{PACKAGE}/py.typed"}


def check_contents(dist: Path) -> None:
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.exit(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
    expected = expected_files()
    with zipfile.ZipFile(wheels[0]) as wheel:
        in_wheel = set(wheel.namelist())
    with tarfile.open(sdists[0]) as sdist:  # members are NAME-VERSION/...
        in_sdist = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for kind, names in (("wheel", in_wheel), ("sdist", in_sdist)):
        missing = sorted(expected - names)
        if missing:
            sys.exit(f"the {kind} lacks {len(missing)} files of the package: {missing}")
        print(f"ok      the {kind} holds the package's {len(expected)} files, py.typed included")


def run(
    argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    print("$", " ".join(argv), flush=True)
    return subprocess.run(argv, text=True, check=True, cwd=cwd, env=env, capture_output=capture)


def check_installed(dist: Path, work: Path) -> None:
    """Install the wheel into a fresh venv in ``work`` (outside the source tree,
    whose conftest.py and ini would put the tree on sys.path) and use it."""
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", str(next(dist.glob("*.whl")))])
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
               capture=True).stdout.strip()  # fmt: skip
    suite = work / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")  # the rootdir: nothing above it counts
    (suite / "test_wheel.py").write_text(MARKED_TEST.format(site=site))
    # The source tree's configuration and package stay out: cwd is the suite,
    # and no variable of this tox run points back at the tree.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TOX", "VIRTUAL"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run([python, "-m", "pytest", "-p", "no:cacheprovider", "-v", "test_wheel.py"],
        cwd=suite, env=env)  # fmt: skip
    version = run([str(venv / "bin" / "pytest-fakemachine"), "--version"], cwd=suite, env=env,
                  capture=True).stdout.strip()  # fmt: skip
    print(version)
    run([str(venv / "bin" / "pytest-fakemachine"), "--", "true"], cwd=suite, env=env)
    print(f"ok      the wheel ({version}) runs a marked test and the command in a fresh venv")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    dist = Path(sys.argv[1])
    check_contents(dist)
    work = Path(tempfile.mkdtemp(prefix="fakemachine-wheel-"))
    try:
        check_installed(dist, work)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
