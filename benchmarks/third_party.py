"""A real third-party suite, guest against host root, per kernel and against a reference tree.

    python benchmarks/third_party.py --python VENV/bin/python --suite SRC [--tests tests]
        [--ref /work/ref-2834e98] [--kernel K]... [--rounds 3]

VENV is a virtual environment holding the suite's package, pytest and this
plugin (``pip install /path/to/pytest-fakemachine SRC pytest``, as
scripts/third_party_python_iptables.sh makes one). Each round runs, in turn:

- host: the suite as root on the host without the plugin, inside
  ``unshare -mn --propagation private`` (its mounts and network vanish with it);
- ref: every test in one guest (``scope="session"``) with the plugin from
  ``--ref`` (PYTHONPATH; its default kernel);
- one row per ``--kernel`` (default: linux.uml on PATH): the same with the
  venv's plugin and ``--fakemachine-kernel``.

A small plugin marks every test (older trees have no ``--fakemachine-all``)
and sums the durations of every phase of every test report: on the clock of
the machine that ran the test (a guest's reports carry its own durations), so
the "tests" column leaves out the boot and pytest's start-up. Prints medians,
the guest/host ratio (median of the rounds' ratios) and "against ref" (ref's
ratio / this row's). Bytecode caches are written as on a user's machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmbench.runner import clean_env  # beside this script, on sys.path when it runs

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
    if out and not os.path.isdir("/run/fakemachine"):  # the host's, not a guest's
        with open(out, "w") as f:
            json.dump({"tests": _total[0], "outcomes": _outcomes}, f)
"""


def one_run(argv: list[str], env: dict[str, str], cwd: Path, out: Path) -> dict[str, object]:
    out.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if not out.exists():
        sys.exit(f"{argv} wrote no summary (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                 f"{proc.stderr[-2000:]}")  # fmt: skip
    data = json.loads(out.read_text())
    return {"wall": wall, "tests": float(data["tests"]), "outcomes": data["outcomes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the venv's python")
    parser.add_argument("--suite", required=True, type=Path, help="the suite's source tree")
    parser.add_argument("--tests", default="tests", help="the test path inside --suite")
    parser.add_argument("--ref", type=Path, help="a reference tree (e.g. 2834e98's)")
    parser.add_argument("--kernel", action="append", default=[], help="repeatable")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kernels = args.kernel or [shutil.which("linux.uml") or "linux.uml"]
    base = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    pytest_argv = [args.python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "fmtp"]
    load = [os.getloadavg()[0]]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fmtp-") as tmp:
        work = Path(tmp)
        (work / "fmtp.py").write_text(PLUGIN)
        out = work / "summary.json"
        env = {**base, "PYTHONPATH": str(work), "FMTP_OUT": str(out)}
        marked = {**env, "FMTP_MARK": "1"}
        rows: dict[str, tuple[list[str], dict[str, str]]] = {
            "host root (unshare -mn)": (
                ["unshare", "-mn", "--propagation", "private", *pytest_argv, args.tests], env),
        }  # fmt: skip
        if args.ref is not None:
            ref_env = {**marked, "PYTHONPATH": f"{args.ref.resolve()}{os.pathsep}{work}"}
            rows[f"guest, {args.ref.name} (default kernel)"] = ([*pytest_argv, args.tests], ref_env)
        for kernel in kernels:
            argv = [*pytest_argv, f"--fakemachine-kernel={kernel}", args.tests]
            rows[f"guest, this tree, {kernel}"] = (argv, marked)
        results: dict[str, list[dict[str, object]]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, (argv, run_env) in rows.items():
                results[name].append(one_run(argv, run_env, args.suite, out))
                print(".", end="", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(file=sys.stderr)
    host = results["host root (unshare -mn)"]
    ref_name = next((n for n in rows if n.startswith("guest, ") and "this tree" not in n), None)
    print(f"{args.rounds} rounds, interleaved; load average {load[0]:.2f} -> {load[1]:.2f}; "
          f"{time.monotonic() - started:.0f} s; suite {args.suite} ({args.tests})\n")  # fmt: skip
    print("| run | tests (median) | whole run (median) | outcomes (last round) | guest/host "
          "| against ref |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    ref_ratio = None
    for name, runs in results.items():
        tests = statistics.median(float(r["tests"]) for r in runs)
        wall = statistics.median(float(r["wall"]) for r in runs)
        ratio_text = against = "-"
        if runs is not host:
            ratio = statistics.median(
                float(r["tests"]) / float(h["tests"]) for r, h in zip(runs, host)
            )
            ratio_text = f"{ratio:.2f}x"
            if name == ref_name:
                ref_ratio = ratio
            elif ref_ratio is not None:
                against = f"{ref_ratio / ratio:.2f}x"
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(runs[-1]["outcomes"].items()))
        print(f"| {name} | {tests:.2f} s | {wall:.2f} s | {outcomes} | {ratio_text} | {against} |")


if __name__ == "__main__":
    main()
