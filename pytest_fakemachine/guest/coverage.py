"""Coverage of the guest's code, loaded by the guest runner only when the host
session measures coverage (pytest-cov or ``coverage run``).

Standalone (no package imports): the runner loads it by path. The guest
writes a parallel data file next to the host's, where pytest-cov's combine
and ``coverage combine`` look for them.
"""

from __future__ import annotations

from typing import Any

import coverage


def start(settings: dict[str, Any]) -> coverage.Coverage:
    cov = coverage.Coverage(
        data_file=settings["data_file"],
        data_suffix=True,
        config_file=settings["config_file"],
        source=settings["source"],
        source_pkgs=settings["source_pkgs"],
        include=settings["include"],
        omit=settings["omit"],
        branch=settings["branch"],
    )
    cov.start()
    return cov


def stop(cov: coverage.Coverage) -> None:
    cov.stop()
    cov.save()
