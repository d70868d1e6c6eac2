#!/usr/bin/env python3
"""Side-by-side benchmark of pytest-fakemachine, a bare UML boot and Debian's fakemachine CLI.

The benchmark itself is the package ``fmbench`` beside this file (runner, rows,
breakdown, report, main); ``python benchmarks/bench.py --help`` says how to run it.
"""

from __future__ import annotations

import sys

from fmbench.main import main
from fmbench.runner import sweep

if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        sweep(grace=0)  # on any exit (Ctrl-C, SIGTERM...): nothing we started survives us
