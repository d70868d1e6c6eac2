"""``--fakemachine-shell-on-fail``, the guest side: a root shell on a serial
line when a marked test's setup or call fails, before its teardown.

Standalone (standard library and pytest only): the guest runner loads it by
path, and only when the host asked for the shell (``spec["shell"]``, see
``_shell.shell_spec``). The shell runs on the guest's terminal
(``_guest_terminal``); the host joins the user's terminal to it between the
``shell`` and ``shell-end`` events.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest


class ShellOnFail:
    """The guest runner's plugin for the option; ``send`` emits an event."""

    def __init__(self, shell: dict[str, Any], terminal: Any, send: Callable[..., None]) -> None:
        self.shell = shell
        self.terminal = terminal  # a _guest_terminal.Terminal
        self.send = send

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
        tmp_path = getattr(node, "funcargs", {}).get("tmp_path")
        line = self.terminal.line
        self.send(event="shell", nodeid=node.nodeid)
        try:
            cwd = str(tmp_path) if tmp_path else os.getcwd()
            run_shell(self.shell["ps1"], self.terminal.spec["term"], line, cwd)
        finally:
            self.terminal.drain()  # the host gets every byte before the end event
            self.terminal.reopen()
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


def run_shell(ps1: str, term: str, line: int, cwd: str) -> None:
    """A root shell on ``line``, as the session leader with it as its terminal."""
    bash = shutil.which("bash")
    env = {**os.environ, "TERM": term, "PS1": ps1}
    subprocess.run(["setsid", "--wait", "--ctty", bash or "sh", "-i"], stdin=line, stdout=line,
                   stderr=line, cwd=cwd, env=env, check=False)  # fmt: skip
