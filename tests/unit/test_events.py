"""The guest runner's events on the host (runs.events): read as the guest
appends them, dispatched by name, an unknown one an error that names it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_fakemachine.guest import runner
from pytest_fakemachine.guest.protocol import EVENTS, TerminalEvent
from pytest_fakemachine.runs.events import EventReader, GuestEvents, UnknownEvent


class Listener:
    def __init__(self, busy: bool = False) -> None:
        self.calls: list[str] = []
        self.busy = busy

    def test_started(self) -> None:
        self.calls.append("started")

    def keep_tmp_path(self, name: str) -> None:
        self.calls.append(f"keep {name}")

    def interact(self, event: TerminalEvent) -> bool:
        self.calls.append(f"interact {event.get('event')}")
        return not self.busy

    def terminal_released(self) -> None:
        self.calls.append("released")


def _events(tmp_path: Path, listener: Listener, *lines: dict[str, Any]) -> GuestEvents:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return GuestEvents(cast(pytest.Config, None), EventReader(path), listener)


def test_every_event_the_runner_sends_has_a_handler() -> None:
    for name in EVENTS:
        assert callable(getattr(GuestEvents, "on_" + name.replace("-", "_"), None)), name


def test_events_are_dispatched_by_name(tmp_path: Path) -> None:
    listener = Listener()
    events = _events(
        tmp_path, listener,
        {"event": "start", "nodeid": "t::a"},
        {"event": "report", "nodeid": "t::a", "report": {"when": "setup"}},
        {"event": "finish", "nodeid": "t::a", "output": {"stdout": 3}, "tmp_path": "a0"},
        {"event": "rerun", "nodeid": "t::b"},
        {"event": "shell", "nodeid": "t::a"},
        {"event": "shell-end", "nodeid": "t::a"},
        {"event": "exit", "reason": "bye", "returncode": None},
        {"event": "done", "exitstatus": 0},
    )  # fmt: skip
    events.pump()
    assert listener.calls == ["started", "keep a0", "interact shell", "released"]
    assert events.reports == {"t::a": [{"when": "setup"}]}
    assert events.finished == {"t::a": {"stdout": 3}}
    assert events.rerun == {"t::b"}
    assert events.exit == {"event": "exit", "reason": "bye", "returncode": None}
    assert events.done
    assert events.boot_seconds is not None


def test_an_unknown_event_is_an_error_naming_it(tmp_path: Path) -> None:
    events = _events(tmp_path, Listener(), {"event": "telemetry", "x": 1})
    with pytest.raises(UnknownEvent, match="unknown event 'telemetry'"):
        events.pump()


def test_an_interaction_while_one_is_under_way_waits_its_turn(tmp_path: Path) -> None:
    listener = Listener(busy=True)
    events = _events(tmp_path, listener, {"event": "pdb"}, {"event": "done", "exitstatus": 0})
    events.pump()
    assert listener.calls == ["interact pdb"]
    assert not events.done  # kept behind the interaction, in order
    listener.busy = False
    events.pump()
    assert events.done


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "done", "exitst')
    reader = EventReader(path)
    assert reader.read() == []
    with open(path, "a") as f:
        f.write('atus": 0}\n')
    assert reader.read() == [{"event": "done", "exitstatus": 0}]


def test_the_runner_says_when_pytest_exit_stopped_its_session(pytester: pytest.Pytester) -> None:
    """The guest-side runner, run here: pytest.exit() in a test is an "exit"
    event with its reason and status, before "done"."""
    pytester.makepyfile(
        test_t="""
        import pytest

        def test_exits():
            pytest.exit("bye", returncode=3)

        def test_after():
            pass
        """
    )
    events = pytester.path / "events.jsonl"
    spec = {
        "args": ["-p", "no:cacheprovider", "-q", "test_t.py"], "plugins": [],
        "nodeids": ["test_t.py::test_exits", "test_t.py::test_after"], "options": {},
        "sys_path": [p for p in sys.path if p], "invocation_dir": str(pytester.path),
        "events": str(events), "markup": False, "one_attempt": False, "prior_attempts": {},
        "coverage": None, "terminal_log": str(pytester.path / "terminal"),
        "tmp_path_dir": str(pytester.path), "tmp_path_policy": "none",
    }  # fmt: skip
    (pytester.path / "guest.json").write_text(json.dumps(spec))
    result = pytester.run(sys.executable, runner.__file__, str(pytester.path / "guest.json"))
    assert result.ret == 3
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in sent] == ["start", "report", "exit", "done"]
    assert sent[2] == {"event": "exit", "reason": "bye", "returncode": 3}
