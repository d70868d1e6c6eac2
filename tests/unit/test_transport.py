"""Unit tests of the report transport: the event reader and report round-trips."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pytest_fakemachine.guest.pack import (
    ARCHIVER_MIN_FILES,
    SPARSE_DIRECT_MIN,
    pack_regular_files,
)
from pytest_fakemachine.runs.events import EventReader
from pytest_fakemachine.runs.transport import rebuild, unpack_kept


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytester runs are no xdist workers, even when this test runs in one.

    (Plugins that look at the variable, e.g. pytest-benchmark, would warn, and
    filterwarnings=error turns the warning into an error of the inner run.)
    """
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


# --------------------------------------------------------------------------------------
# 7. report transport
# --------------------------------------------------------------------------------------

INNER_TESTS = """
import sys
import tempfile
import pytest

def test_pass(record_property):
    record_property("key", "value")
    record_property("number", 3)
    print("out-pass \u2713")
    sys.stderr.write("err-pass\\n")

def test_fail():
    print("out-fail")
    assert 1 + 1 == 3, "arith-broken"

def test_skip():
    pytest.skip("skip-reason")

@pytest.mark.xfail(reason="xfail-reason")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="xpass-reason")
def test_xpass():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("setup-broken")

def test_setup_error(broken):
    pass

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown-broken")

def test_teardown_error(bad_teardown):
    pass
"""


class _Recorder:
    """A plugin for the inner run: keeps each report and its serialization."""

    def __init__(self) -> None:
        self.reports: list[pytest.TestReport] = []
        self.serialized: list[dict[str, Any]] = []
        self.config: pytest.Config | None = None

    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        assert self.config is not None
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        assert isinstance(data, dict)
        self.reports.append(report)
        self.serialized.append(data)


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> _Recorder:
    pytester.makepyfile(test_inner=INNER_TESTS)
    recorder = _Recorder()
    reprec = pytester.inline_run("-p", "no:fakemachine", "-p", "no:cacheprovider",
                                 plugins=[recorder])  # fmt: skip
    reprec.assertoutcome(passed=3, failed=3, skipped=2)
    assert len(recorder.reports) == 7 * 3 - 1  # test_setup_error has no call phase
    return recorder


def _pairs(value: Iterable[Iterable[object]]) -> list[tuple[object, ...]]:
    """A list of pairs as pytest makes it, whatever JSON made of the pairs."""
    return [tuple(pair) for pair in value]


def _split_points(blob: bytes) -> list[int]:
    """Cut points that fall mid-line and inside a multi-byte UTF-8 character."""
    inside_char = blob.index("\u2713".encode()) + 1
    first_newline = blob.index(b"\n")
    points = {first_newline // 2, first_newline, first_newline + 1, inside_char}
    points.update(range(0, len(blob), 1013))
    return [*sorted(p for p in points if 0 < p < len(blob)), len(blob)]


def test_event_reader_chunks_and_rebuild(
    recorded: _Recorder, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    events = [
        {"event": "report", "nodeid": data["nodeid"], "report": data}
        for data in recorded.serialized
    ]
    lines = [json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events]
    lines.insert(3, b"\n")  # an empty line is ignored
    blob = b"".join(lines)
    assert "\u2713".encode() in blob

    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.read() == []  # no file yet
    got: list[dict[str, Any]] = []
    start = 0
    saw_partial = False
    for end in _split_points(blob):
        with open(path, "ab") as f:
            f.write(blob[start:end])
        new = reader.read()
        got.extend(new)
        complete = [line for line in blob[:end].split(b"\n")[:-1] if line.strip()]
        assert len(got) == len(complete), f"after {end} bytes"
        saw_partial = saw_partial or not blob[:end].endswith(b"\n")
        start = end
    assert saw_partial
    assert reader.read() == []
    assert got == json.loads(json.dumps(events))

    # rebuild() once per event, as the host does: pytest's deserializer consumes its input.
    reports = [rebuild(pytestconfig, event["report"]) for event in got]
    for original, report in zip(recorded.reports, reports):
        assert isinstance(report, pytest.TestReport)
        assert report.nodeid == original.nodeid
        assert report.when == original.when
        assert report.outcome == original.outcome
        # JSON turns tuples into lists: compare values here, types in the xfail tests below.
        assert tuple(report.location) == original.location
        assert report.longreprtext == original.longreprtext
        assert _pairs(report.sections) == original.sections
        assert _pairs(report.user_properties) == original.user_properties
        assert report.duration == original.duration
        assert report.keywords == original.keywords
        assert getattr(report, "wasxfail", None) == getattr(original, "wasxfail", None)
        assert pytestconfig.hook.pytest_report_teststatus(
            report=report, config=pytestconfig
        ) == pytestconfig.hook.pytest_report_teststatus(report=original, config=pytestconfig)

    rebuilt = {(r.nodeid.split("::")[-1], r.when): r for r in reports}
    passed = rebuilt["test_pass", "call"]
    assert passed.passed
    assert _pairs(passed.user_properties) == [("key", "value"), ("number", 3)]
    assert ("Captured stdout call", "out-pass \u2713\n") in _pairs(passed.sections)
    assert ("Captured stderr call", "err-pass\n") in _pairs(passed.sections)
    assert passed.duration > 0

    failed = rebuilt["test_fail", "call"]
    assert failed.failed
    assert "arith-broken" in failed.longreprtext
    assert "assert 1 + 1 == 3" in failed.longreprtext
    assert ("Captured stdout call", "out-fail\n") in _pairs(failed.sections)

    skipped = rebuilt["test_skip", "call"]
    assert skipped.skipped
    assert isinstance(skipped.longrepr, tuple)  # what the terminal's skip summary asserts
    assert skipped.longrepr[2] == "Skipped: skip-reason"

    xfailed = rebuilt["test_xfail", "call"]
    assert xfailed.skipped
    assert xfailed.wasxfail == "xfail-reason"
    xpassed = rebuilt["test_xpass", "call"]
    assert xpassed.passed
    assert xpassed.wasxfail == "xpass-reason"

    setup_error = rebuilt["test_setup_error", "setup"]
    assert setup_error.failed
    assert "setup-broken" in setup_error.longreprtext
    assert ("test_setup_error", "call") not in rebuilt

    teardown_error = rebuilt["test_teardown_error", "teardown"]
    assert teardown_error.failed
    assert "teardown-broken" in teardown_error.longreprtext
    assert rebuilt["test_teardown_error", "call"].passed


def test_event_reader_waits_for_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    path.write_bytes(b'{"event": "start", "nodeid": "a"}\n{"event": "do')
    assert reader.read() == [{"event": "start", "nodeid": "a"}]
    assert reader.read() == []
    with open(path, "ab") as f:
        f.write(b'ne", "exitstatus": 0}')
    assert reader.read() == []  # still no newline
    with open(path, "ab") as f:
        f.write(b"\n")
    assert reader.read() == [{"event": "done", "exitstatus": 0}]
    assert reader.read() == []


def test_rebuild_refuses_collect_reports(pytestconfig: pytest.Config) -> None:
    report = pytest.CollectReport("test_x.py", "passed", None, [])
    data = pytestconfig.hook.pytest_report_to_serializable(config=pytestconfig, report=report)
    with pytest.raises(TypeError, match="CollectReport"):
        rebuild(pytestconfig, data)


def test_rebuild_constructed_report(pytestconfig: pytest.Config) -> None:
    original = pytest.TestReport(
        "test_x.py::test_y", ("test_x.py", 3, "test_y"), {"test_y": 1}, "failed",
        "Traceback: boom", "call", sections=[("Captured stdout call", "hi\n")], duration=1.25,
        user_properties=[("k", "v")],
    )  # fmt: skip
    data = pytestconfig.hook.pytest_report_to_serializable(config=pytestconfig, report=original)
    report = rebuild(pytestconfig, json.loads(json.dumps(data)))
    assert report.failed
    assert report.longreprtext == "Traceback: boom"
    assert _pairs(report.sections) == [("Captured stdout call", "hi\n")]
    assert report.duration == 1.25
    assert _pairs(report.user_properties) == [("k", "v")]
    assert tuple(report.location) == ("test_x.py", 3, "test_y")


def test_rebuild_keeps_tuples(pytestconfig: pytest.Config) -> None:
    original = pytest.TestReport(
        "test_x.py::test_y", ("test_x.py", 3, "test_y"), {}, "skipped",
        ("test_x.py", 4, "Skipped: why"), "call", sections=[("Captured stdout call", "hi\n")],
        user_properties=[("k", "v")],
    )  # fmt: skip
    data = pytestconfig.hook.pytest_report_to_serializable(config=pytestconfig, report=original)
    report = rebuild(pytestconfig, json.loads(json.dumps(data)))
    assert report.longrepr == ("test_x.py", 4, "Skipped: why")
    assert isinstance(report.longrepr, tuple)
    assert report.location == ("test_x.py", 3, "test_y")
    assert report.sections == [("Captured stdout call", "hi\n")]
    assert report.user_properties == [("k", "v")]


ROUND_TRIP_CONFTEST = """
import json
import pytest
from pytest_fakemachine.runs.transport import rebuild

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # What a marked test's reports go through: guest serialization, JSON, rebuild().
    report = yield
    config = item.config
    data = config.hook.pytest_report_to_serializable(config=config, report=report)
    return rebuild(config, json.loads(json.dumps(data)))
"""


def test_rebuilt_skip_in_short_summary(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ROUND_TRIP_CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        def test_skip():
            pytest.skip("skip-reason")
        """
    )
    result = pytester.runpytest("-p", "no:fakemachine", "-p", "no:cacheprovider", "-rs")
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_*.py:*: skip-reason"])
    result.assert_outcomes(skipped=1)
    assert result.ret == 0


@pytest.mark.parametrize("files", [30, ARCHIVER_MIN_FILES + 10], ids=["tarfile", "gnu-tar"])
def test_a_kept_tmp_path_crosses_as_one_archive_and_sparse_files(
    tmp_path: Path, files: int
) -> None:
    """Packed in the guest, unpacked on the host: the same tree of regular files,
    modes and contents; a big sparse file goes directly and keeps its holes.
    Few files go through tarfile, many through GNU tar."""
    source = tmp_path / "test_x0"
    (source / "sub" / "deeper").mkdir(parents=True)
    for n in range(files):
        (source / "sub" / f"f{n}.txt").write_text(f"file {n}")
    (source / "-dash").write_text("not an option")
    (source / "sub" / "deeper" / "script").write_text("#!/bin/sh\n")
    (source / "sub" / "deeper" / "script").chmod(0o750)
    os.mkfifo(source / "fifo")
    (source / "link").symlink_to("/etc/hostname")
    image = source / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 * SPARSE_DIRECT_MIN)
        f.seek(SPARSE_DIRECT_MIN)
        f.write(b"data" * 1024)
    work = tmp_path / "work"
    work.mkdir()
    pack_regular_files(str(source), str(work), "test_x0")
    assert sorted(p.name for p in work.iterdir()) == ["test_x0", "test_x0.tar"]
    assert [p.name for p in (work / "test_x0").iterdir()] == ["disk.img"]  # not archived
    with tarfile.open(work / "test_x0.tar") as archive:  # GNU tar was given "./NAME"s
        by_gnu_tar = all(n.startswith(".") for n in archive.getnames())
        assert by_gnu_tar == (files >= ARCHIVER_MIN_FILES)
    unpack_kept(work, "test_x0")
    kept = work / "test_x0"
    assert sorted(p.name for p in work.iterdir()) == ["test_x0"]  # the archive is gone
    assert sorted(p.name for p in kept.iterdir()) == ["-dash", "disk.img", "sub"]
    assert [(kept / "sub" / f"f{n}.txt").read_text() for n in range(files)] == [
        f"file {n}" for n in range(files)
    ]
    assert (kept / "sub" / "deeper" / "script").stat().st_mode & 0o777 == 0o750
    assert kept.joinpath("disk.img").read_bytes() == image.read_bytes()
    assert kept.joinpath("disk.img").stat().st_blocks * 512 < 4 * SPARSE_DIRECT_MIN


def test_unpacking_ignores_members_outside_the_target(tmp_path: Path) -> None:
    archive = tmp_path / "t0.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("../escaped", "/abs", "ok"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    unpack_kept(tmp_path, "t0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t0"]
    assert [p.name for p in (tmp_path / "t0").iterdir()] == ["ok"]
