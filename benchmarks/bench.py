#!/usr/bin/env python3
"""The benchmarks of pytest-fakemachine: ``python benchmarks/bench.py --help``.

The benchmark itself is the package ``fmbench`` beside this file; its only
door into the package's internals is ``fmbench/package.py``.
"""

from __future__ import annotations

import sys

from fmbench.cli import main
from fmbench.runner import sweep

if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        sweep(grace=0)  # on any exit (Ctrl-C, SIGTERM...): nothing we started survives us
