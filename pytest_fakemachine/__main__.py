"""``python -m pytest_fakemachine``: the ``pytest-fakemachine`` command (``run``, ``doctor``)."""

from __future__ import annotations

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
