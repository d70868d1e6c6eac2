"""Side-by-side benchmark of pytest-fakemachine, a bare UML boot and Debian's fakemachine CLI.

Run from the repository root (the package must be installed, e.g. ``pip install -e .``)::

    python benchmarks/bench.py                      # 5 runs of everything
    python benchmarks/bench.py --quick              # 3 runs, fewer tests per pytest run
    python benchmarks/bench.py --markdown docs/performance.md
    python benchmarks/bench.py --targets --ref CHECKOUT_OF_2834e98 [--kernel K]...
                                                    # issue #15's targets, judged

Every measurement is taken ``--runs`` times, interleaved round by round (one of
each per round) so that a change in the machine's load hits every row alike.
The table shows medians, min and max, ratios and the project's targets.
``--markdown PATH`` replaces the text between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` in PATH with the table and the time breakdown.

The script leaves nothing behind: it works in one temporary directory, makes
itself the child subreaper so every orphaned descendant (guests included) is
re-parented to it, and kills and reaps whatever it started that outlives a
measurement. Processes it did not start are never touched. Exit status: 0 when
every measurement ran (targets missed or not), 1 when one failed or something
had to be cleaned up after it, 2 when the host cannot boot a guest at all.
"""

from __future__ import annotations

import sys

from .runner import REPO

if str(REPO) not in sys.path:  # `python benchmarks/bench.py` puts only benchmarks/ on sys.path
    sys.path.insert(0, str(REPO))
