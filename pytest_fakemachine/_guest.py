"""The guest-side runner: runs selected tests inside the guest and streams reports.

Started by the guest's job as ``python _guest.py SPEC.json`` with the host's
own interpreter. It imports only the standard library and pytest (never the
rest of pytest_fakemachine, whose host-side code has no business here).

Events go to ``spec["events"]`` as JSON lines, flushed one by one so the host
sees each phase as soon as it ends::

    {"event": "start", "nodeid": ...}
    {"event": "report", "nodeid": ..., "report": <pytest_report_to_serializable>}
    {"event": "collecterror", "nodeid": ..., "longrepr": ...}
    {"event": "done", "exitstatus": ...}
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
import termios
import threading
from typing import IO, Any

import pytest


class GuestReporter:
    """A pytest plugin: narrows the session to the host's items, sends events."""

    def __init__(self, spec: dict[str, Any], out: IO[str]) -> None:
        self.nodeids: list[str] = spec["nodeids"]
        self.options: dict[str, Any] = spec["options"]
        self.out = out
        self.shell: dict[str, Any] | None = spec.get("shell")
        self.shell_line: int | None = None

    def send(self, **event: Any) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config
        # The host session's option values (tbstyle, verbosity, conftest options...).
        for name, value in self.options.items():
            setattr(config.option, name, value)
        # Nobody reads the guest's terminal, and its summary hooks cost: one
        # plugin's hook imports all of hypothesis there (half a second in UML).
        # From pytest 9.2 this skips only pytest's own sections (pytest#14730).
        config.option.no_summary = True

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        by_id = {item.nodeid: item for item in items}
        selected = [by_id[nodeid] for nodeid in self.nodeids if nodeid in by_id]
        deselected = [item for item in items if item.nodeid not in set(self.nodeids)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = selected

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.send(event="collecterror", nodeid=report.nodeid, longrepr=str(report.longrepr))

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.send(event="start", nodeid=nodeid)

    def pytest_exception_interact(
        self, node: pytest.Item | pytest.Collector, report: pytest.TestReport | Any
    ) -> None:
        """--fakemachine-shell-on-fail: after the failed phase's report, before teardown."""
        if self.shell is None or not isinstance(node, pytest.Item):
            return
        if not report.failed or report.when not in ("setup", "call"):
            return
        if self.shell_line is None:
            self.shell_line = open_shell_lines(self.shell)
        tmp_path = getattr(node, "funcargs", {}).get("tmp_path")
        self.send(event="shell", nodeid=node.nodeid)
        try:
            run_shell(self.shell, self.shell_line, str(tmp_path) if tmp_path else os.getcwd())
        finally:
            self.send(event="shell-end", nodeid=node.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        config = self.config
        data = config.hook.pytest_report_to_serializable(config=config, report=report)
        self.send(event="report", nodeid=report.nodeid, report=data)


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


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path[:] = spec["sys_path"]
    os.chdir(spec["invocation_dir"])
    with open(spec["events"], "a", encoding="utf-8") as out:
        reporter = GuestReporter(spec, out)
        plugins: list[object] = [reporter]
        plugins += [importlib.import_module(module) for module in spec["plugins"]]
        status = int(pytest.main(spec["args"], plugins=plugins))
        reporter.send(event="done", exitstatus=status)
    return status


if __name__ == "__main__":
    code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Every report is out: skip interpreter finalization, which costs a
    # second or more of the guest's slow syscalls after each test run.
    os._exit(code)
