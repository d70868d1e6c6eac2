"""Whether this process runs inside a pytest-fakemachine guest (standard library only)."""

from __future__ import annotations

__all__ = ["in_fakemachine"]


def in_fakemachine() -> bool:
    """True inside a pytest-fakemachine guest, False on the host."""
    try:
        with open("/proc/cmdline") as f:
            return "fakemachine.work=" in f.read()
    except OSError:
        return False
