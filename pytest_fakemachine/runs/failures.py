"""When a guest cannot finish a test: why it went, and the reports pytest would
have made for the phase under way (with the guest's last words)."""

from __future__ import annotations

import signal

import pytest

from .._session import Session, console_tail
from ..backend.base import Guest
from .transport import covers, failure_reports, report_collect_error, runner_stderr

__all__ = ["fail", "not_collected", "why_gone"]


def not_collected(  # noqa: PLR0917 (what the run knows, passed as it is)
    item: pytest.Item,
    received: list[pytest.TestReport],
    collect_reports: list[pytest.CollectReport],
    reported: set[str],
    session: Session,
    guest: Guest,
) -> None:
    """The guest finished without running ``item``: report why, as pytest would
    (``reported``: the collection errors already reported in this session)."""
    failed = [r for r in collect_reports if covers(r.nodeid, item.nodeid)]
    if failed:
        report_collect_error(item, failed[0], reported)
        return
    # Reports of it came: it was collected, and the guest's session ended early.
    why = ("the guest's pytest session ended before the test finished" if received
           else "the test was not collected in the guest")  # fmt: skip
    fail(item, received, why, session, guest)


def why_gone(session: Session, guest: Guest, received: list[pytest.TestReport]) -> str:
    """Why the guest powered off (or died) before it finished the test under way."""
    if guest.ended_why is not None:
        return guest.ended_why  # a reboot, or the boot limit
    if not (session.workdir / "started").exists():
        return "the guest did not boot"
    status = session.read_text("status").strip()
    if status.isdigit() and int(status) > 128:
        try:
            name = signal.strsignal(int(status) - 128) or f"signal {int(status) - 128}"
        except ValueError:
            name = f"signal {int(status) - 128}"
        return f"the test process crashed ({name})"
    if status and not received:
        return f"the guest-side pytest exited with status {status} before running the test"
    if status:
        return f"the guest-side pytest exited with status {status} during the test"
    return "the guest powered off during the test"


def fail(
    item: pytest.Item,
    received: list[pytest.TestReport],
    why: str,
    session: Session,
    guest: Guest,
) -> None:
    tail = console_tail(guest.console())
    stderr = runner_stderr(session.read_text("stderr"))
    message = why + (f"\nguest runner stderr:\n{stderr}" if stderr else "")
    terminal = session.read_text("terminal").strip()
    if terminal and "pytest exited" in why:  # its last words, e.g. a timeout's stacks
        message += f"\nguest pytest's terminal (last lines):\n{console_tail(terminal, 150)}"
    for report in failure_reports(item, received, message, tail):
        item.ihook.pytest_runtest_logreport(report=report)
