"""Unit tests of the benchmark's own code (benchmarks/fmbench): no guest boots here."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fmbench import backends, cli, realsuite, rows, runner, thirdparty


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
        "costs", "targets", "realsuite", "kernels", "unit-costs", "stdin", "third-party",
        "backends",
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


def test_a_tests_time_spans_its_phases_and_its_worst_outcome_counts() -> None:
    entries: list[dict[str, Any]] = [
        {"event": "sessionstart"},
        {"event": "report", "nodeid": "t::a", "start": 1.0, "stop": 1.5, "outcome": "passed"},
        {"event": "report", "nodeid": "t::a", "start": 1.5, "stop": 3.0, "outcome": "failed"},
        {"event": "report", "nodeid": "t::a", "start": 3.0, "stop": 3.5, "outcome": "passed"},
        {"event": "report", "nodeid": "t::b", "start": 4.0, "stop": 4.25, "outcome": "skipped"},
    ]
    assert realsuite.tests_of(entries) == ({"t::a": 2.5, "t::b": 0.25},
                                           {"t::a": "failed", "t::b": "skipped"})  # fmt: skip


def test_backends_default_to_all_three_with_one_round_of_qemu() -> None:
    args = cli.parse_args(["backends"])
    assert (args.backend, args.runs, args.qemu_runs, args.trivial_only) == (
        ["uml", "kvm", "qemu"], 3, 1, False
    )  # fmt: skip
    args = cli.parse_args(["backends", "--backend", "uml, qemu,uml", "--runs", "5",
                           "--qemu-runs", "2", "--trivial-only"])  # fmt: skip
    assert (args.backend, args.runs, args.qemu_runs, args.trivial_only) == (
        ["uml", "qemu"], 5, 2, True
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--backend", "uml,xen"], "'xen' in 'uml,xen' is not a backend (one of uml, kvm, qemu)"),
        (["--backend", ","], "',' names no backend"),
        (["--qemu-runs", "0"], "--qemu-runs must be at least 1"),
    ],
)
def test_backends_bad_arguments_are_named(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["backends", *argv])
    assert error in capsys.readouterr().err


def _suite_run(tests: dict[str, float], round_no: int, wall: float = 10.0) -> realsuite.SuiteRun:
    run = realsuite.SuiteRun(wall, dict(tests), set(tests), dict.fromkeys(tests, "passed"))
    run.round_no = round_no
    return run


def _measured_columns() -> list[backends.Column]:
    """uml (3 rounds), kvm (unavailable), qemu (1 round), as if measured."""
    cols = backends.columns(["uml", "kvm", "qemu"], 3, 1,
                            lambda b: "kvm: no vmx/svm" if b == "kvm" else None)  # fmt: skip
    uml, _, qemu = cols
    for round_no, seconds in ((1, 3.0), (2, 1.2), (3, 1.1)):  # round 1 under load
        uml.record("run_wall", round_no, seconds)
    qemu.record("run_wall", 1, 33.0)
    qemu.rows["one_wall"].failures = ["pytest exit status 1:\ndetail"]
    uml.suite.runs = [_suite_run({"a": 2.0, "b": 1.0}, n) for n in (1, 2, 3)]
    qemu.suite.runs = [_suite_run({"a": 20.0, "b": 5.0, "c": 1.0}, 2, 300.0)]
    return cols


def test_backends_table_has_a_column_each_and_ratios_within_a_round() -> None:
    cols = _measured_columns()
    assert [(c.backend, c.runs, c.header) for c in cols] == [
        ("uml", 3, "uml (3 runs)"), ("kvm", 3, "kvm"), ("qemu", 1, "qemu (1 run, TCG)")
    ]  # fmt: skip
    host = realsuite.Variant("host", "host")
    host.runs = [_suite_run({"a": 1.0, "b": 1.0, "c": 1.0}, n) for n in (1, 2, 3)]
    notes = backends.suite_rows(cols, host)
    lines = backends.table_lines(cols, suite=True)
    assert lines[0].split() == ["row", "(medians)", "uml", "(3", "runs)", "kvm", "qemu",
                                "(1", "run,", "TCG)"]  # fmt: skip
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    table = {row[0]: row[1:] for row in cells}
    assert list(table) == [label.strip() for label in backends.ROWS.values()]
    # qemu's one run is compared with uml's run of the same round, not with uml's median.
    assert table["Machine(backend=B).run('true'), whole process: wall"] == [
        "1.20 s", "not measured here", "33.00 s (11.0x uml)"
    ]  # fmt: skip
    assert table["one marked test, whole pytest process: wall"] == ["-", "not measured here", "-"]
    # Only the tests every run passed count (uml's runs have no "c"): a and b.
    assert table["guest/host (the same tests, root on the host)"] == [
        "1.50x", "not measured here", "12.50x"
    ]  # fmt: skip
    assert table["real suite, scope=module: its tests in the guest"] == [
        "3.00 s", "not measured here", "25.00 s (8.3x uml)"
    ]  # fmt: skip
    assert notes[0].startswith("real suite: 2 of 3 tests count")
    assert notes[1] == "left out: c: not passed in uml"
    assert len(backends.table_lines(cols, suite=False)) == 2 + len(backends.TRIVIAL_ROWS)


def test_an_unavailable_backend_says_why_and_how_to_measure_it() -> None:
    cols = _measured_columns()
    args = cli.parse_args(["backends", "--runs", "5"])
    notes = backends.note_lines(cols, args)
    assert notes[:2] == [
        "kvm: not measured here: kvm: no vmx/svm",
        "  on a host where it runs: python benchmarks/bench.py backends "
        "--backend uml,kvm,qemu --runs 5 --qemu-runs 1",
    ]
    assert "qemu: one marked test, whole pytest process: wall: failed: pytest exit status 1:" in (
        notes
    )
    assert notes[-1] == "qemu: TCG emulation (no KVM): 1 round(s) only"
    assert backends.caption(cols) == (
        "Medians of interleaved rounds (runs: uml 3, qemu 1). In parentheses: the ratio to uml "
        "in the rounds both ran (median of the per-round ratios: the same load on both)."
    )


def test_a_backend_with_fewer_runs_sits_out_the_later_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "sweep", lambda grace=3.0: [])
    ran: list[tuple[str, int]] = []

    def step(name: str, runs: int) -> runner.Step:
        def run(round_no: int) -> str:
            ran.append((name, round_no))
            return "ok"

        return backends.limited(runner.Step(name, run, lambda _: None), runs, f"{name} {runs}")

    logged: list[str] = []
    runner.interleave([step("uml", 3), step("qemu", 1)], 3, logged.append)
    assert ran == [("uml", 1), ("qemu", 1), ("uml", 2), ("uml", 3)]
    assert "bench:   not this round (qemu 1)" in logged


def test_the_one_marked_test_demands_its_backend(tmp_path: Path) -> None:
    path = backends.write_one_test(tmp_path / "one", "qemu")
    tree = ast.parse(path.read_text())
    (test,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert test.name == "test_one"
    assert ast.unparse(test.decorator_list[0]) == (
        f"pytest.mark.fakemachine(backend='qemu', boot_timeout={backends.BOOT_TIMEOUT})"
    )
    assert (tmp_path / "one" / "pytest.ini").read_text() == ""
