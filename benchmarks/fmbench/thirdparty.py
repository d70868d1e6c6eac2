"""``bench.py third-party RECIPE SOURCE``: a real third-party suite, guest against host root.

A recipe, ``benchmarks/thirdparty/RECIPE.sh SOURCE WORK``, prepares the suite
once: a venv with its package, pytest and this plugin, the directory pytest
runs in and its arguments (the recipes say how). Then each round runs, in turn:

- host: the suite as root on the host without the plugin, inside
  ``unshare -mn --propagation private`` (its mounts and network vanish with
  it), TMPDIR in the work directory;
- ref: every test in one guest (``scope="session"``) with the plugin from
  ``--ref TREE`` (PYTHONPATH; its default kernel);
- one row per ``--kernel`` (default: the plugin's default kernel): the same
  with the venv's plugin and that kernel.

A small plugin marks every test (older trees have no ``--fakemachine-all``)
and sums the durations of every phase of every test report, on the clock of
the machine that ran the test, so the "tests" column leaves out the boot and
pytest's start-up. Prints medians, the guest/host ratio (median of the
rounds' ratios) and "against ref" (ref's ratio / this row's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import package as fm
from .runner import REPO, Started, Step, StepFailed, clean_env, interleave, median, tail

RECIPES = REPO / "benchmarks" / "thirdparty"
PLUGIN = """\
import json, os
import pytest

_total = [0.0]
_outcomes = {}


def pytest_collection_modifyitems(items):
    if os.environ.get("FMTP_MARK"):
        for item in items:
            item.add_marker(pytest.mark.fakemachine(scope="session"))


def pytest_runtest_logreport(report):
    _total[0] += report.duration
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.outcome] = _outcomes.get(report.outcome, 0) + 1


def pytest_sessionfinish(session):
    out = os.environ.get("FMTP_OUT")
    if out and os.environ.get("FMTP_HOST_PID") == str(os.getpid()):  # the host's pytest
        with open(out, "w") as f:
            json.dump({"tests": _total[0], "outcomes": _outcomes}, f)
"""
TIMEOUT = 3600.0


def recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.sh"))


def prepare(recipe: str, source: Path, work: Path, log: Callable[[str], None]) -> list[str]:
    """Run the recipe into ``work``; pytest's arguments."""
    log(f"bench: preparing {recipe} from {source} (the recipe {RECIPES / recipe}.sh)")
    env = {**clean_env(), "FMBENCH_PLUGIN": str(REPO)}
    proc = subprocess.run([str(RECIPES / f"{recipe}.sh"), str(source.resolve()), str(work)],
                          env=env, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"bench: the recipe {recipe} failed ({proc.returncode}):\n"
                         f"{tail(proc.stdout + proc.stderr, 30)}")  # fmt: skip
    return (work / "pytest-args").read_text().split("\n")[:-1]


def one_run(argv: list[str], env: dict[str, str], cwd: Path, out: Path) -> dict[str, object]:
    out.unlink(missing_ok=True)
    # The pid pytest runs as on the host (sh, then unshare, exec it): a guest's writes no summary.
    wrapper = ["sh", "-c", 'export FMTP_HOST_PID=$$; exec "$@"', "sh", *argv]
    proc = subprocess.Popen(wrapper, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise StepFailed(f"took over {TIMEOUT:g} s") from None
    if not out.exists():
        raise StepFailed(f"wrote no summary (exit {proc.returncode}):\n{tail(output, 20)}")
    data = json.loads(out.read_text())
    return {"tests": float(data["tests"]), "outcomes": data["outcomes"]}


def main(args: argparse.Namespace, log: Callable[[str], None], started: Started) -> int:
    if args.recipe not in recipes():
        raise SystemExit(f"bench: no recipe {args.recipe!r}; there are: {', '.join(recipes())}")
    kernels = args.kernel or [str(fm.default_kernel())]
    with tempfile.TemporaryDirectory(prefix="fmbench-third-party-") as tmp:
        work = Path(tmp)
        extra = prepare(args.recipe, args.source, work, log)
        (work / "tmp").mkdir()
        (work / "tmp").chmod(0o1777)
        (work / "fmtp.py").write_text(PLUGIN)
        out = work / "summary.json"
        base = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
        env = {**base, "PYTHONPATH": str(work), "FMTP_OUT": str(out)}
        marked = {**env, "FMTP_MARK": "1"}
        python = str(work / "venv" / "bin" / "python")
        pytest_argv = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "fmtp"]
        host_env = {**env, "TMPDIR": str(work / "tmp")}
        rows: dict[str, tuple[list[str], dict[str, str]]] = {
            "host root (unshare -mn)": (
                ["unshare", "-mn", "--propagation", "private", *pytest_argv, *extra], host_env),
        }  # fmt: skip
        ref_name = None
        if args.ref is not None:
            ref_name = f"guest, {args.ref.name} (its default kernel)"
            ref_env = {**marked, "PYTHONPATH": f"{args.ref.resolve()}{os.pathsep}{work}"}
            rows[ref_name] = ([*pytest_argv, *extra], ref_env)
        for kernel in kernels:
            argv = [*pytest_argv, f"{fm.KERNEL_OPTION}={kernel}", *extra]
            rows[f"guest, this tree, {kernel}"] = (argv, marked)
        results: dict[str, list[dict[str, object]]] = {name: [] for name in rows}

        def step(name: str) -> Step:
            def run(round_no: int) -> str:
                argv, run_env = rows[name]
                results[name].append(one_run(argv, run_env, work / "src", out))
                return f"{results[name][-1]['tests']:.2f} s in tests"

            return Step(name, run, lambda _: None)

        problems = interleave([step(name) for name in rows], args.runs, log)
    host = results["host root (unshare -mn)"]
    print(f"\n{args.runs} rounds, interleaved; load average {started.load[0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; suite {args.recipe} ({' '.join(extra)})\n")  # fmt: skip
    print("| run | tests (median) | outcomes (last round) | guest/host | against ref |")
    print("|---|---|---|---|---|")
    ref_ratio = None
    for name, runs in results.items():
        tests = median(float(str(r["tests"])) for r in runs)
        ratio_text = against = "-"
        if runs is not host:
            ratio = median(float(str(r["tests"])) / float(str(h["tests"]))
                           for r, h in zip(runs, host) if float(str(h["tests"])) > 0)  # fmt: skip
            ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
            if name == ref_name:
                ref_ratio = ratio
            elif ref_ratio is not None and ratio:
                against = f"{ref_ratio / ratio:.2f}x"
        outcomes = runs[-1]["outcomes"] if runs else {}
        assert isinstance(outcomes, dict)
        shown = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
        tests_text = "-" if tests is None else f"{tests:.2f} s"
        print(f"| {name} | {tests_text} | {shown} | {ratio_text} | {against} |")
    for problem in problems:
        log(f"bench: {problem}")
    return 1 if problems else 0
