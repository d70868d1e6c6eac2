"""Unit tests of the real-suite benchmark's kernel choice (benchmarks/fmbench)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fmbench import main, realsuite


def test_each_kernel_is_one_more_tree_after_the_reference() -> None:
    trees = realsuite.trees_for("/ref/2834e98", [("/k/6.12", "6.12.113"), ("/k/7.2", "7.2.7")])
    assert [(t.key, t.path, t.kernel) for t in trees] == [
        ("before", "/ref/2834e98", None),
        ("after1", None, "/k/6.12"),
        ("after2", None, "/k/7.2"),
    ]
    assert trees[2].label == "after (this tree), Linux 7.2.7"
    variants = realsuite.variants_for([(t.key, t.path, t.label) for t in trees])
    assert {"module_after1", "function_after2", "module_before"} <= set(variants)


def test_no_kernel_keeps_the_plugins_default() -> None:
    assert [(t.key, t.kernel) for t in realsuite.trees_for(None, [])] == [("after", None)]


def test_kernel_and_module_only_go_with_realsuite(capsys: pytest.CaptureFixture[str]) -> None:
    args = main.parse_args(["--realsuite", "--kernel", "/a", "--kernel", "/b", "--module-only"])
    assert args.kernel == ["/a", "/b"]
    assert args.module_only
    with pytest.raises(SystemExit):
        main.parse_args(["--kernel", "/a"])
    assert "--kernel and --module-only go with --realsuite" in capsys.readouterr().err
