"""The command: ``python benchmarks/bench.py SUBCOMMAND ...``; ``--help`` of each says more."""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import fmbench
from pytest_fakemachine import FakeMachineError, Machine

from . import backends, costs, kernels, realsuite, stdin, targets, thirdparty, unitcosts
from . import package as fm
from .report import MARK_END, MARK_START
from .rows import RUN_TIMEOUT
from .runner import Started, set_child_subreaper

Main = Callable[[argparse.Namespace, Callable[[str], None], Started], int]
SUBCOMMANDS: dict[str, tuple[Main, str | None]] = {
    "costs": (costs.main, costs.__doc__),
    "targets": (targets.main, targets.__doc__),
    "realsuite": (realsuite.main, realsuite.__doc__),
    "kernels": (kernels.main, kernels.__doc__),
    "unit-costs": (unitcosts.main, unitcosts.__doc__),
    "stdin": (stdin.main, stdin.__doc__),
    "third-party": (thirdparty.main, thirdparty.__doc__),
    "backends": (backends.main, backends.__doc__),
}


def _runs(parser: argparse.ArgumentParser, default: int, what: str = "rounds") -> None:
    parser.add_argument("--runs", type=int, default=None,
                        help=f"interleaved {what} (default {default})")  # fmt: skip
    parser.set_defaults(default_runs=default)


def _kernels(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--kernel", metavar="PATH", action="append", default=[],
                        help=f"a UML kernel (linux.uml); repeat it to compare kernels in one "
                        f"interleaved run (default: {default})")  # fmt: skip


def _markdown(parser: argparse.ArgumentParser, marks: str, where: str) -> None:
    parser.add_argument("--markdown", metavar="PATH", type=Path,
                        help=f"also write the results between {marks} in PATH "
                        f"(appended if missing; {where} has them)")  # fmt: skip


def _ref(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--ref", metavar="TREE", required=required,
                        help="a checkout of pytest-fakemachine to compare with: its package is "
                        "copied and run from PYTHONPATH, with its default kernel")  # fmt: skip


def _costs(p: argparse.ArgumentParser) -> None:
    _runs(p, 5)
    p.add_argument("--quick", action="store_true",
                   help="3 rounds, and 4 instead of 10 tests in the -n 0 / -n 2 rows")  # fmt: skip
    _markdown(p, f"{MARK_START} and {MARK_END}", "docs/performance.md")


def _targets(p: argparse.ArgumentParser) -> None:
    _ref(p, required=True)
    _kernels(p, "the plugin's default")
    p.add_argument("--function-every-kernel", action="store_true",
                   help="the real suite with scope=function with every --kernel, not only "
                   "the first (one more long run per kernel and round)")  # fmt: skip
    _runs(p, 3)
    p.add_argument("--quick", action="store_true", help="1 round")
    _markdown(p, f"{targets.MARK_START} and {targets.MARK_END}", "benchmarks/README.md")


def _realsuite(p: argparse.ArgumentParser) -> None:
    _ref(p, required=False)
    _kernels(p, "the plugin's default")
    p.add_argument("--module-only", action="store_true",
                   help="leave out the scope=function runs (the longest)")  # fmt: skip
    _runs(p, 3)
    _markdown(p, f"{realsuite.MARK_START} and {realsuite.MARK_END}", "benchmarks/README.md")


def _kernels_only(p: argparse.ArgumentParser) -> None:
    _kernels(p, "the plugin's default")
    _runs(p, 5)


def _unit_costs(p: argparse.ArgumentParser) -> None:
    _kernels(p, "the plugin's default")
    _runs(p, 3)
    p.add_argument("--counts-from", metavar="DIR", type=Path,
                   help="a pytest suite to count the system calls and lookups of, e.g. "
                   "benchmarks/realsuite (strace, on the host as root)")  # fmt: skip
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the Python that runs --counts-from's suite (default: this one)",
    )


def _stdin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", metavar="TREE", action="append", default=[],
                   help="a checkout to run from (PYTHONPATH); repeat it to compare "
                   "(default: the installed package)")  # fmt: skip
    p.add_argument("--mb", type=int, default=20, help="MiB of random stdin (default 20)")
    p.add_argument("--startup", action="store_true",
                   help="time the shell's start to its first prompt and `-- true` instead "
                   "(needs pexpect)")  # fmt: skip
    _runs(p, 5)


def _third_party(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help=f"the suite: {', '.join(thirdparty.recipes())} "
                   "(benchmarks/thirdparty/RECIPE.sh)")  # fmt: skip
    p.add_argument("source", type=Path, help="the suite's source (what its recipe takes)")
    p.add_argument(
        "--ref",
        metavar="TREE",
        type=Path,
        help="also run the guests with the plugin from TREE (PYTHONPATH)",
    )
    _kernels(p, "the plugin's default")
    _runs(p, 3)


def _backends(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", type=backends.parse_backends, default=list(backends.BACKENDS),
                   help="the backends to put side by side, comma-separated "
                   f"(default {','.join(backends.BACKENDS)})")  # fmt: skip
    _runs(p, 3, "rounds (uml, kvm)")
    p.add_argument("--qemu-runs", type=int, default=1,
                   help="rounds of qemu: TCG emulation, 25-40 s a boot (default 1)")  # fmt: skip
    p.add_argument("--trivial-only", action="store_true",
                   help="leave out the real-suite rows (the longest)")  # fmt: skip
    _markdown(p, f"{backends.MARK_START} and {backends.MARK_END}", "benchmarks/README.md")


OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "costs": _costs,
    "targets": _targets,
    "realsuite": _realsuite,
    "kernels": _kernels_only,
    "unit-costs": _unit_costs,
    "stdin": _stdin,
    "third-party": _third_party,
    "backends": _backends,
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bench.py", description=fmbench.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    subs = top.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, add_options in OPTIONS.items():
        doc = SUBCOMMANDS[name][1] or ""
        summary = doc.splitlines()[0].partition(": ")[2]
        raw = argparse.RawDescriptionHelpFormatter
        add_options(subs.add_parser(name, help=summary, description=doc, formatter_class=raw))
    return top


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    top = parser()
    args = top.parse_args(argv)
    if args.runs is None:
        quick = getattr(args, "quick", False)
        args.runs = {"costs": 3, "targets": 1}[args.command] if quick else args.default_runs
    if args.runs < 1:
        top.error("--runs must be at least 1")
    if getattr(args, "qemu_runs", 1) < 1:
        top.error("--qemu-runs must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 every measurement ran (targets missed or not), 1 one failed
    or left something running, 2 this host cannot boot a guest."""
    args = parse_args(argv)
    started = Started.now()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not set_child_subreaper():
        log("bench: cannot become child subreaper; leftovers may escape")
    if not any(e.name == fm.ENTRY_POINT for e in importlib.metadata.entry_points(group="pytest11")):
        log("bench: pytest-fakemachine is not installed (pip install -e .)")
        return 2
    if args.command != "third-party":
        try:
            log("bench: warming up (initramfs cache, page cache) with one Machine().run('true')")
            Machine().run("true", check=True, timeout=RUN_TIMEOUT)
        except (FakeMachineError, subprocess.CalledProcessError) as e:
            log(f"bench: this host cannot boot a guest: {e}")
            return 2
    return SUBCOMMANDS[args.command][0](args, log, started)
