"""Benchmarks of pytest-fakemachine: one command, one subcommand per measurement.

Run from the repository root, with the package installed (``pip install -e .``)::

    python benchmarks/bench.py costs [--quick] [--markdown docs/performance.md]
    python benchmarks/bench.py targets --ref TREE [--kernel K]... [--runs N]
    python benchmarks/bench.py realsuite [--ref TREE] [--kernel K]... [--module-only]
    python benchmarks/bench.py kernels [--kernel K]... [--runs N]
    python benchmarks/bench.py unit-costs [--kernel K]... [--counts-from benchmarks/realsuite]
    python benchmarks/bench.py stdin [--tree TREE]... [--mb 20] [--startup]
    python benchmarks/bench.py third-party RECIPE SOURCE [--ref TREE] [--kernel K]...
    python benchmarks/bench.py backends [--backend uml,kvm,qemu] [--runs N] [--qemu-runs N]

Every subcommand takes its measurements ``--runs`` times, interleaved round by
round (one of each per round), so a change in the machine's load hits every
row alike, and prints medians; ratios within one run are what to compare,
never numbers from different runs. Progress goes to stderr, results to
stdout. benchmarks/README.md says what each one measures and how.

The benchmark leaves nothing behind: it works in temporary directories,
makes itself the child subreaper so every orphaned descendant (guests
included) is re-parented to it, and kills and reaps whatever it started that
outlives a measurement. Processes it did not start are never touched. Exit
status: 0 when every measurement ran (targets missed or not), 1 when one
failed or something had to be cleaned up after it, 2 when the host cannot
boot a guest at all.
"""

from __future__ import annotations

import sys

from .runner import REPO

# `python benchmarks/bench.py` puts only benchmarks/ on sys.path: the package
# comes from where it is installed (or PYTHONPATH), else from this checkout.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
