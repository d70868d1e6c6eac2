"""``--fakemachine-shell-on-fail``, the guest side: a root shell on a serial
line when a marked test's setup or call fails, before its teardown.

Standalone (standard library and pytest only): the guest runner loads it by
path, and only when the host asked for the shell (``spec["shell"]``, see
``_shell.ShellWiring.spec``). The host joins the user's terminal to the line
between the ``shell`` and ``shell-end`` events.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from typing import Any

import pytest


class ShellOnFail:
    """The guest runner's plugin for the option; ``send`` emits an event."""

    def __init__(self, shell: dict[str, Any], send: Callable[..., None]) -> None:
        self.shell = shell
        self.send = send
        self.line: int | None = None

    def pytest_exception_interact(
        self, node: pytest.Item | pytest.Collector, report: pytest.TestReport | Any
    ) -> None:
        """After the failed phase's report, before teardown."""
        if not isinstance(node, pytest.Item):
            return
        if not report.failed or report.when not in ("setup", "call"):
            return
        if will_rerun(node, report):  # the shell is for the failure that stays
            return
        if self.line is None:
            self.line = open_shell_lines(self.shell)
        tmp_path = getattr(node, "funcargs", {}).get("tmp_path")
        self.send(event="shell", nodeid=node.nodeid)
        try:
            run_shell(self.shell, self.line, str(tmp_path) if tmp_path else os.getcwd())
        finally:
            self.send(event="shell-end", nodeid=node.nodeid)


def will_rerun(item: pytest.Item, report: pytest.TestReport) -> bool:
    """Whether pytest-rerunfailures will run ``item`` again after this failed
    phase: only the last attempt's failure is final.

    Asked before teardown, as the shell opens, with the rules the plugin
    applies after it (its attempt count, --only-rerun/--rerun-except, the
    marker's condition, --max-suite-reruns). Private names of the plugin are
    read defensively: when one is missing, the attempt counts as the last.
    """
    rerunfailures: Any = sys.modules.get("pytest_rerunfailures")
    attempt = getattr(item, "execution_count", None)
    if rerunfailures is None or attempt is None:  # not under the plugin: one attempt
        return False
    try:
        reruns = rerunfailures.get_reruns_count(item)
        if reruns is None or attempt > reruns:
            return False
        if getattr(item, "_terminal_errors", {}).get(report.when):  # an error not rerun
            return False
        if not _rerun_condition(rerunfailures, item):
            return False
        limit = item.config.option.max_suite_reruns
        db: Any = getattr(item.config, "failures_db", None)
        return not (limit is not None and db is not None and db.get_suite_reruns() >= limit)
    except (AttributeError, TypeError):
        return False


def _rerun_condition(rerunfailures: Any, item: pytest.Item) -> bool:
    failures = getattr(rerunfailures, "_get_reruns_condition_failures", None)
    if failures is None:  # pytest-rerunfailures before 16 takes the item alone
        return bool(rerunfailures.get_reruns_condition(item))
    return bool(rerunfailures.get_reruns_condition(item, failures(item)))


def open_shell_lines(shell: dict[str, Any]) -> int:
    """Open the shell's terminal line for the whole run (a tty forgets its
    window size on its last close) and apply the host's sizes as they come."""
    line = os.open(shell["line"], os.O_RDWR | os.O_NOCTTY)
    winch = os.open(shell["winch"], os.O_RDONLY | os.O_NOCTTY)

    def follow_sizes() -> None:
        with os.fdopen(winch, "rb", buffering=0) as sizes:
            for entry in sizes:
                rows, cols = (int(n) for n in entry.split())
                fcntl.ioctl(line, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    threading.Thread(target=follow_sizes, daemon=True).start()
    return line


def run_shell(shell: dict[str, Any], line: int, cwd: str) -> None:
    """A root shell on ``line``, as the session leader with it as its terminal."""
    bash = shutil.which("bash")
    env = {**os.environ, "TERM": shell["term"], "PS1": shell["ps1"]}
    subprocess.run(["setsid", "--wait", "--ctty", bash or "sh", "-i"], stdin=line, stdout=line,
                   stderr=line, cwd=cwd, env=env, check=False)  # fmt: skip
