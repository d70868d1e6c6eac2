"""The package's shape, as CONTRIBUTING.md draws it: what may import what,
where UML's words may appear, and how big a module or a function may grow."""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_fakemachine"
MODULES = sorted(PACKAGE.rglob("*.py"))
# UML's own mechanisms: its serial lines, consoles, disks, host file system and
# its run directory. Only backend/uml/ may name them (comments aside).
UML_WORDS = re.compile(r"\bssl\d*=|\bcon\d*=|\bubd|hostfs|\buml_dir\b|\bumid\b")
# QEMU's: its shares, consoles and device options, only in backend/qemu/.
QEMU_WORDS = re.compile(r"virtfs|9p2000|virtconsole|-chardev|-netdev|\bhvc\d")
# What the guest's code may import: the standard library, pytest, and coverage
# (which guest/coverage.py loads only when the host measures it).
GUEST_IMPORTS = {*sys.stdlib_module_names, "pytest", "_pytest", "coverage"}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package ``path`` imports, wherever the import stands
    (under TYPE_CHECKING and inside functions too)."""
    name = _name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = {_name(p) for p in MODULES}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names} & known
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(module)
    return {m for m in found if m in known and m != name}


def _cycle() -> list[str]:
    graph = {_name(p): _imports(p) for p in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return [*stack[stack.index(other) :], other]
            if other not in state and (found := visit(other)):
                return found
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_the_package_has_no_import_cycle() -> None:
    assert _cycle() == []


def test_the_cycle_check_sees_imports_in_functions_and_under_type_checking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pytest_fakemachine"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("def f():\n    from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import Machine\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", sorted(package.rglob("*.py")))
    assert _cycle() == ["pytest_fakemachine", "pytest_fakemachine.sub.b", "pytest_fakemachine"]


def test_the_guests_code_imports_nothing_of_the_rest() -> None:
    guest = PACKAGE / "guest"
    for path in sorted(guest.glob("*.py")):
        outside = {m for m in _imports(path) if not m.startswith("pytest_fakemachine.guest")}
        assert outside == set(), f"{path.name} imports {outside}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = {(node.module or "").partition(".")[0]}
            else:
                continue
            assert tops <= GUEST_IMPORTS, f"{path.name} imports {tops - GUEST_IMPORTS}"


def _code_without_comments(path: Path) -> str:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return " ".join(t.string for t in tokens if t.type != tokenize.COMMENT)


def test_only_the_uml_backend_names_umls_mechanisms() -> None:
    uml = PACKAGE / "backend" / "uml"
    named = {
        str(path.relative_to(PACKAGE)): sorted(set(UML_WORDS.findall(_code_without_comments(path))))
        for path in MODULES
        if uml not in path.parents
    }
    assert {path: words for path, words in named.items() if words} == {}
    # The check finds them where they are.
    assert UML_WORDS.search(_code_without_comments(uml / "boot.py"))


def test_only_the_qemu_backend_names_qemus_mechanisms() -> None:
    qemu = PACKAGE / "backend" / "qemu"
    named = {
        str(path.relative_to(PACKAGE)): sorted(
            set(QEMU_WORDS.findall(_code_without_comments(path)))
        )
        for path in MODULES
        if qemu not in path.parents
    }
    assert {path: words for path, words in named.items() if words} == {}
    assert QEMU_WORDS.search(_code_without_comments(qemu / "boot.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= 400
    long = [
        f"{node.name} ({(node.end_lineno or node.lineno) - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (node.end_lineno or node.lineno) - node.lineno + 1 > 60
    ]
    assert long == []
