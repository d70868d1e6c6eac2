"""``python -m pytest_fakemachine doctor``: the same check as ``pytest --fakemachine-doctor``."""

from __future__ import annotations

import sys

from ._doctor import run_doctor


def main(argv: list[str]) -> int:
    if argv != ["doctor"]:
        print("usage: python -m pytest_fakemachine doctor", file=sys.stderr)
        return 2
    return run_doctor(print)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
