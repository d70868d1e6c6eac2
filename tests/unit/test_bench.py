"""Unit tests of the benchmark's own code (benchmarks/fmbench): no guest boots here."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fmbench import cli, realsuite, rows, runner, thirdparty


def test_each_kernel_is_one_more_tree_after_the_reference() -> None:
    trees = realsuite.trees_for("/ref/old", [("/k/6.12", "6.12.113"), ("/k/7.2", "7.2.7")])
    assert [(t.key, t.path, t.kernel) for t in trees] == [
        ("before", "/ref/old", None),
        ("after1", None, "/k/6.12"),
        ("after2", None, "/k/7.2"),
    ]
    assert trees[2].label == "after (this tree), Linux 7.2.7"
    variants = realsuite.variants_for([(t.key, t.path, t.label) for t in trees])
    assert {"module_after1", "function_after2", "module_before"} <= set(variants)


def test_no_kernel_keeps_the_plugins_default() -> None:
    assert [(t.key, t.kernel) for t in realsuite.trees_for(None, [])] == [("after", None)]


def test_each_subcommand_parses_with_its_own_default_rounds() -> None:
    args = cli.parse_args(["realsuite", "--kernel", "/a", "--kernel", "/b", "--module-only"])
    assert (args.command, args.kernel, args.module_only, args.runs) == (
        "realsuite", ["/a", "/b"], True, 3
    )  # fmt: skip
    assert cli.parse_args(["costs"]).runs == 5
    assert cli.parse_args(["costs", "--quick"]).runs == 3
    assert cli.parse_args(["targets", "--ref", "/r", "--quick"]).runs == 1
    assert cli.parse_args(["targets", "--ref", "/r", "--quick", "--runs", "2"]).runs == 2
    assert cli.parse_args(["unit-costs"]).counts_from is None
    assert cli.parse_args(["stdin", "--startup"]).tree == []
    assert cli.parse_args(["third-party", "python-iptables", "/src"]).recipe == "python-iptables"
    assert set(cli.SUBCOMMANDS) == {
        "costs", "targets", "realsuite", "kernels", "unit-costs", "stdin", "third-party"
    }  # fmt: skip


def test_targets_needs_a_reference_and_a_round(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["targets"])
    assert "--ref" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["kernels", "--runs", "0"])
    assert "--runs must be at least 1" in capsys.readouterr().err


def test_every_recipe_is_listed() -> None:
    assert {"python-iptables", "btrfsutil"} <= set(thirdparty.recipes())


@pytest.mark.parametrize(("tests", "scope"), [(1, "function"), (30, "module")])
def test_the_trivial_module_holds_n_marked_tests(tests: int, scope: str) -> None:
    text = rows.trivial_module(tests, scope)
    tree = ast.parse(text)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert names == [f"test_trivial_{n}" for n in range(tests)]
    assert f'pytest.mark.fakemachine(scope="{scope}")' in text


def test_rounds_interleave_and_a_failed_step_does_not_stop_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "sweep", lambda grace=3.0: [])  # nothing of ours to kill here
    order: list[str] = []
    a, b = runner.Row("a", "A"), runner.Row("b", "B")

    def fail() -> float:
        order.append("b")
        raise runner.StepFailed("no number\ndetail")

    def value() -> float:
        order.append("a")
        return float(len(order))

    problems = runner.interleave(
        [runner.row_step(a, value), runner.row_step(b, fail)], 3, lambda _: None
    )
    assert order == ["a", "b"] * 3
    assert a.values == [1.0, 3.0, 5.0]
    assert a.median == 3.0
    assert (b.median, b.failures, b.attempts) == (None, ["no number\ndetail"] * 3, 3)
    assert problems == ["B: no number"] * 3


def test_what_a_step_leaves_running_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "sweep", lambda grace=3.0: ["linux.uml (pid 7)"])
    row = runner.Row("a", "A")
    step = runner.row_step(row, lambda: 1.0)
    step.left = row.notes.append
    problems = runner.interleave([step], 1, lambda _: None)
    assert row.notes == ["round 1 left running, killed: linux.uml (pid 7)"]
    assert problems == ["A: round 1 left running, killed: linux.uml (pid 7)"]
