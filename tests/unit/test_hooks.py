"""The hooks as docs/usage.md shows them: a conftest that implements them
loads in a run without the plugin too. No guest boots here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pytest_fakemachine import hooks

USAGE = Path(__file__).parents[2] / "docs" / "usage.md"


def _documented_conftest() -> str:
    """The Python block of docs/usage.md's Hooks section, as a user copies it."""
    section = USAGE.read_text().split("\n## Hooks\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "docs/usage.md's Hooks section shows no Python block"
    return match.group(1)


def test_the_documented_hooks_are_optional_ones() -> None:
    tree = ast.parse(_documented_conftest())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert sorted(f.name for f in functions) == sorted(
        name for name in vars(hooks) if name.startswith("pytest_fakemachine_")
    )
    for function in functions:
        assert [ast.unparse(d) for d in function.decorator_list] == [
            "pytest.hookimpl(optionalhook=True)"
        ], function.name
    assert "@pytest.hookimpl(optionalhook=True)" in (hooks.__doc__ or "")


@pytest.mark.parametrize("plugin", [["-p", "no:fakemachine"], []], ids=["without", "with"])
def test_a_conftest_as_documented_loads_without_the_plugin(
    pytester: pytest.Pytester, plugin: list[str]
) -> None:
    pytester.makeconftest(_documented_conftest())
    pytester.makepyfile("def test_on_the_host():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *plugin)
    result.assert_outcomes(passed=1)
    assert "unknown hook" not in result.stderr.str()
