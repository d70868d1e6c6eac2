"""Host side of the report transport: read the guest's events, rebuild reports.

Reports cross the guest boundary only as pytest's own serialization
(``pytest_report_to_serializable`` in the guest, ``pytest_report_from_serializable``
here). When the guest cannot deliver a test's reports, :func:`failure_reports`
makes the ones pytest would have made, failing the phase that was under way.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import stat
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from _pytest.runner import CallInfo

if TYPE_CHECKING:
    import tarfile

__all__ = [
    "covers",
    "failure_reports",
    "rebuild",
    "rebuild_collect",
    "record_warning",
    "report_collect_error",
    "runner_stderr",
    "skip_reports",
    "unpack_kept",
]

CONSOLE_SECTION = "fakemachine console"
_STDERR_TAIL = 2000


def rebuild(config: pytest.Config, data: dict[str, Any]) -> pytest.TestReport:
    if isinstance(data.get("longrepr"), list):
        # A skip's (path, lineno, reason) tuple: JSON made it a list, pytest wants a tuple.
        data = {**data, "longrepr": tuple(data["longrepr"])}
    report = config.hook.pytest_report_from_serializable(config=config, data=data)
    if not isinstance(report, pytest.TestReport):
        raise TypeError(f"the guest sent a {type(report).__name__}, not a TestReport")
    # JSON has no tuples: restore the ones pytest and plugins compare and hash.
    report.location = tuple(report.location)  # type: ignore[assignment]
    report.sections = [tuple(s) for s in report.sections]  # type: ignore[misc]
    report.user_properties = [tuple(p) for p in report.user_properties]  # type: ignore[misc]
    context = data.get("_subtest.context")
    if isinstance(context, dict) and hasattr(report, "context"):
        # A subtest's kwargs cross as their reprs, and pytest's deserialization
        # repr()s them again (i='2' for i=2; xdist shows it too): keep them once.
        object.__setattr__(report.context, "kwargs", dict(context.get("kwargs") or {}))
    return report


def _warning_category(module: str, qualname: str) -> type[Warning]:
    """The guest's warning class, or a stand-in of the same name where the host lacks it."""
    try:
        found: object = sys.modules.get(module) or importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # any failure to find it means: stand in for it
        found = None
    if isinstance(found, type) and issubclass(found, Warning):
        return found
    return type(qualname.rpartition(".")[2], (UserWarning,), {"__module__": module})


def record_warning(config: pytest.Config, data: dict[str, Any]) -> None:
    """Record a warning a test raised in the guest, as pytest records a local one."""
    category = _warning_category(*data["category"])
    message = warnings.WarningMessage(
        message=category(data["message"]),
        category=category,
        filename=data["filename"],
        lineno=data["lineno"],
    )
    config.hook.pytest_warning_recorded.call_historic(
        kwargs={
            "warning_message": message,
            "when": "runtest",
            "nodeid": data["nodeid"],
            "location": None,
        }
    )


def rebuild_collect(config: pytest.Config, data: dict[str, Any]) -> pytest.CollectReport:
    report = config.hook.pytest_report_from_serializable(config=config, data=data)
    if not isinstance(report, pytest.CollectReport):
        raise TypeError(f"the guest sent a {type(report).__name__}, not a CollectReport")
    return report


def covers(collector: str, nodeid: str) -> bool:
    """Whether the collector ``collector`` (a node id) contains the test ``nodeid``."""
    return collector in ("", ".") or nodeid.startswith((collector + "::", collector + "/"))


def report_collect_error(
    item: pytest.Item, report: pytest.CollectReport, reported: set[str]
) -> None:
    """Log the guest's collection error once (as pytest logs a local one) and
    fail ``item`` with a pointer to it."""
    if report.nodeid not in reported:
        reported.add(report.nodeid)
        item.ihook.pytest_collectreport(report=report)
    where = report.nodeid or "the session"
    message = f"not run: collecting {where} failed in the guest (ERROR collecting {where})"
    for failed in failure_reports(item, [], message):
        item.ihook.pytest_runtest_logreport(report=failed)


def runner_stderr(stderr: str) -> str:
    """What of the guest runner's stderr explains its end: a crash's whole
    faulthandler dump (it names the crashing code), else the tail."""
    stderr = stderr.strip()
    crash = stderr.rfind("Fatal Python error")
    if crash >= 0:
        return stderr[crash:]
    if len(stderr) > _STDERR_TAIL:
        return "..." + stderr[-_STDERR_TAIL:]
    return stderr


def _fail(message: str) -> Callable[[], NoReturn]:
    def fail() -> NoReturn:
        pytest.fail(message, pytrace=False)

    return fail


def failure_reports(
    item: pytest.Item, received: list[pytest.TestReport], message: str, console: str = ""
) -> list[pytest.TestReport]:
    """The reports still owed for ``item``: the phase under way fails with ``message``.

    Without a setup report the test never started (an error in setup); with a
    passed setup the call fails; a teardown report always closes the test.
    """
    done = {r.when for r in received}
    if "teardown" in done:
        return []
    reports = []
    if "setup" not in done:
        when = "setup"
    elif "call" not in done and all(r.passed for r in received):
        when = "call"
    else:
        when = "teardown"
    # Made directly, not through pytest_runtest_makereport: plugins' makereport
    # hooks expect the state their own setup phase left on the item (e.g.
    # pytest-rerunfailures' _rerun_condition_excinfos), and none ran here.
    call = CallInfo.from_call(_fail(message), when=when)  # type: ignore[arg-type]
    failed = pytest.TestReport.from_item_and_call(item, call)
    if console:
        failed.sections.append((CONSOLE_SECTION, console))
    reports.append(failed)
    if when != "teardown":
        ok = CallInfo.from_call(lambda: None, when="teardown")
        reports.append(pytest.TestReport.from_item_and_call(item, ok))
    return reports


def skip_reports(item: pytest.Item, reason: str) -> list[pytest.TestReport]:
    """The reports of a test skipped on the host before any guest booted."""

    def skip() -> NoReturn:
        pytest.skip(reason)

    setup = CallInfo.from_call(skip, when="setup")
    teardown = CallInfo.from_call(lambda: None, when="teardown")
    skipped = pytest.TestReport.from_item_and_call(item, setup)
    # At the test's own location (as a skip marker's), not at the line above.
    path, line = item.reportinfo()[:2]
    skipped.longrepr = (os.fspath(path), (line or 0) + 1, f"Skipped: {reason}")
    return [skipped, pytest.TestReport.from_item_and_call(item, teardown)]


# Opens a directory, never through a symlink (ELOOP) nor a file (ENOTDIR).
_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def unpack_kept(directory: Path, name: str) -> None:
    """Unpack ``name.tar``, a test's tmp_path as the guest packed it
    (``guest.pack.pack_regular_files``), into ``directory/name``, then remove it.

    Only directories and regular files with relative names inside the target
    come out; anything else in the archive is ignored. The guest can write in
    ``directory`` while this runs: nothing is created, written or changed
    through a symlink (each directory is opened from its parent's descriptor
    without following one; a member whose place a link holds is left out),
    and modes lose their setuid, setgid, sticky and group/other write bits,
    as tarfile's ``data`` filter has them.
    """
    if not name or "/" in name or name in (".", ".."):  # the guest's word for it
        return
    archive = directory / f"{name}.tar"
    try:  # not through a link, and no blocking on a fifo planted in its place
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    import tarfile  # noqa: PLC0415 (here: the plugin loads in every guest, which needs none)

    try:
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return
            with tarfile.open(fileobj=f, mode="r:") as tar:
                _Unpacker(directory, name).unpack(tar)
    except (OSError, tarfile.TarError):
        pass  # what came out so far is kept; a truncated archive is the guest's dying
    finally:
        archive.unlink(missing_ok=True)


def _data_mode(mode: int, directory: bool) -> int:
    """``mode`` as tarfile's ``data`` filter leaves it (a directory: always the owner's)."""
    mode &= 0o755
    if directory:
        return mode | 0o700
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


class _Unpacker:
    """Directories and regular files put below one directory, opened by descriptor."""

    def __init__(self, directory: Path, name: str) -> None:
        parent = os.open(directory, _DIR_NOFOLLOW)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
            self.root = os.open(name, _DIR_NOFOLLOW, dir_fd=parent)
        finally:
            os.close(parent)
        self.dirs: list[tuple[tuple[str, ...], int, int]] = []  # set last: (parts, mode, mtime)
        self.last: tuple[tuple[str, ...], int] | None = None  # the last file's directory

    def unpack(self, tar: tarfile.TarFile) -> None:
        try:
            for member in tar:
                parts = Path(member.name).parts
                if Path(member.name).is_absolute() or ".." in parts:
                    continue
                with contextlib.suppress(OSError):  # ELOOP, ENOTDIR: a link in the way
                    if member.isdir():
                        os.close(self._open_dir(parts))
                        self.dirs.append((parts, member.mode, int(member.mtime)))
                    elif member.isreg() and parts:
                        self._write(tar, member, parts)
            for parts, mode, mtime in reversed(self.dirs):  # after their contents
                with contextlib.suppress(OSError):
                    fd = self._open_dir(parts)
                    try:
                        os.chmod(fd, _data_mode(mode, directory=True))
                        os.utime(fd, (mtime, mtime))
                    finally:
                        os.close(fd)
        finally:
            self._close_last()
            os.close(self.root)

    def _close_last(self) -> None:
        if self.last is not None:
            os.close(self.last[1])
            self.last = None

    def _open_dir(self, parts: tuple[str, ...]) -> int:
        """A new descriptor of the directory ``parts`` below the root, made if missing."""
        fd = os.dup(self.root)
        for part in parts:
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, _DIR_NOFOLLOW, dir_fd=fd)
            finally:
                os.close(fd)
            fd = child
        return fd

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        source = tar.extractfile(member)
        if source is None:
            return
        if self.last is None or self.last[0] != parts[:-1]:
            self._close_last()
            self.last = (parts[:-1], self._open_dir(parts[:-1]))
        fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=self.last[1])
        with source, open(fd, "wb") as out:
            shutil.copyfileobj(source, out)
            os.chmod(fd, _data_mode(member.mode, directory=False))
            os.utime(fd, (member.mtime, member.mtime))
