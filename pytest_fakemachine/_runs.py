"""Marked tests on the host: machines from markers, groups, and guest runs.

A :class:`GuestRun` boots one guest for a list of tests (one test for
``scope="function"``, every remaining test of a group otherwise), starts the
guest-side runner on them, and hands each test's reports to the host as they
arrive. A guest that dies or hangs fails the test under way; the tests after
it get a fresh guest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from . import _guest
from ._config import Image, check_env, check_guest_path
from ._errors import ConfigError
from ._machine import Machine
from ._session import BootOutcome, Session, command_body, console_tail
from ._shell import ShellWiring
from ._templates import GUEST_WORK
from ._transport import EventReader, failure_reports, rebuild
from ._uml import GuestProcess

__all__ = ["GuestRun", "MarkedTest", "apply_marker", "marked_test"]

MARKER_KEYWORDS = ("images", "volumes", "memory", "scratch", "network", "env", "timeout", "scope")
SCOPES = ("function", "module", "session")
# Plugins that act on the host session only; the guest must not load them.
HOST_ONLY_PLUGINS = frozenset({"xdist", "xdist.looponfail", "pytest_cov", "cacheprovider",
                               "html", "pytest_html", "stepwise"})  # fmt: skip
# Host option values the guest must not take over (selection, output files, debugging).
HOST_ONLY_OPTIONS = frozenset({
    "file_or_dir", "keyword", "markexpr", "deselect", "ignore", "ignore_glob", "xmlpath",
    "basetemp", "usepdb", "usepdb_cls", "trace", "maxfail", "exitfirst", "stepwise",
    "stepwise_skip", "lf", "failedfirst", "newfirst", "cacheclear", "last_failed_no_failures",
    "numprocesses", "maxprocesses", "dist", "tx", "rsyncdir", "rsyncignore", "looponfail",
    "plugins", "capture", "override_ini", "inifilename", "rootdir", "confcutdir", "noconftest",
    "importmode", "assertmode", "collectonly", "help", "version", "showfixtures",
    "show_fixtures_per_test", "markers", "durations", "durations_min", "reportchars",
    "pastebin", "color", "pythonwarnings", "debug", "traceconfig", "setuponly", "setupshow",
    "setupplan", "junitprefix", "log_file", "report_log", "cov_source", "cov_report",
})  # fmt: skip
_GRACE_SECONDS = 30.0  # how long a finished guest may take to power off


@dataclass(frozen=True)
class MarkedTest:
    """A marked test's resolved marker: the machine recipe, scope and group key."""

    kwargs: dict[str, Any]
    scope: str
    key: str
    source: str


def marked_test(item: pytest.Item) -> MarkedTest | None:
    """The merged ``fakemachine`` markers of ``item`` (closest wins), or None."""
    markers = list(item.iter_markers("fakemachine"))
    if not markers:
        return None
    source = f"@pytest.mark.fakemachine on {item.nodeid}"
    kwargs: dict[str, Any] = {}
    for marker in reversed(markers):  # farthest first, so the closest wins
        if marker.args:
            raise ConfigError(f"{source}: takes keywords only, got {marker.args!r}")
        kwargs.update(marker.kwargs)
    unknown = sorted(set(kwargs) - set(MARKER_KEYWORDS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown keyword {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(MARKER_KEYWORDS)})"
        )
    scope = kwargs.pop("scope", "function")
    if scope not in SCOPES:
        raise ConfigError(f"scope={scope!r} from {source}: expected one of {', '.join(SCOPES)}")
    recipe = json.dumps(kwargs, sort_keys=True, default=_describe)
    if scope == "function":
        key = item.nodeid
    elif scope == "module":
        key = f"module {item.path}\0{recipe}"
    else:
        key = f"session\0{recipe}"
    return MarkedTest(kwargs, scope, key, source)


def _describe(value: object) -> object:
    if isinstance(value, Image):
        return ["Image", os.path.abspath(value.path), value.size]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def apply_marker(machine: Machine, marked: MarkedTest, image_dir: Path) -> None:
    """Set the marker's keywords on ``machine``, which carries the options' defaults."""
    kw, source = marked.kwargs, marked.source
    for name in ("memory", "timeout"):  # None keeps the option's default
        if kw.get(name) is not None:
            setattr(machine, name, kw[name])
    machine.scratch = kw.get("scratch")
    machine.network = kw.get("network", False)
    env = kw.get("env") or {}
    if not isinstance(env, dict):
        raise ConfigError(f"env={env!r} from {source}: expected a dict")
    machine.env.update(check_env(env, source))
    images = kw.get("images") or {}
    if not isinstance(images, dict):
        raise ConfigError(f"images={images!r} from {source}: expected {{label: size or Image}}")
    for label, spec in images.items():
        if isinstance(spec, Image):
            machine.add_image(spec.path, spec.size, label=label)
        else:
            if spec is None:
                raise ConfigError(f"images[{label!r}]=None from {source}: give a size or Image")
            machine.add_image(image_dir / f"{len(machine.images)}.img", spec, label=label)
    volumes = kw.get("volumes") or []
    if not isinstance(volumes, (list, tuple)):
        raise ConfigError(f"volumes={volumes!r} from {source}: expected a list")
    for volume in volumes:
        if isinstance(volume, (tuple, list)) and len(volume) == 2:
            machine.add_volume(volume[0], volume[1])
        else:
            machine.add_volume(volume)


def python_mounts(config: pytest.Config) -> list[tuple[str, bool]]:
    """Host directories the guest needs to import the same code: (path, writable).

    The interpreter's prefixes and sys.path entries outside /usr read-only;
    the rootdir and the invocation directory writable. Nested paths collapse
    into the outermost one.
    """
    writable = {str(config.rootpath), str(config.invocation_params.dir)}
    wanted = {p: True for p in writable}
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(_guest.__file__)))
    for path in (package_parent, sys.prefix, sys.base_prefix, sys.exec_prefix,
                 os.path.dirname(os.path.realpath(sys.executable)), *sys.path):  # fmt: skip
        if path and os.path.isabs(path) and os.path.exists(path):
            real = os.path.realpath(path)
            if os.path.isfile(real):  # a zip or egg on sys.path
                real = os.path.dirname(real)
            wanted.setdefault(real, False)
    result: list[tuple[str, bool]] = []
    for path in sorted(wanted, key=len):
        if path == "/usr" or path.startswith("/usr/"):
            continue
        outer = next((p for p, _ in result if path.startswith(p.rstrip("/") + "/")), None)
        if outer is None:
            result.append((path, wanted[path]))
    return result


def guest_spec(config: pytest.Config, items: list[pytest.Item], events: str) -> dict[str, Any]:
    """What the guest-side runner needs: its pytest args, options, node ids."""
    args = ["-p", "no:cacheprovider", "-p", "no:stepwise",
            f"--rootdir={config.rootpath}", f"--capture={config.option.capture}",
            "-o", "addopts=", "-q"]  # fmt: skip
    if config.inipath is not None:
        args.append(f"--config-file={config.inipath}")
    if config.option.confcutdir:
        args.append(f"--confcutdir={config.option.confcutdir}")
    if config.option.noconftest:
        args.append("--noconftest")
    args.append(f"--import-mode={config.option.importmode}")
    args.append(f"--assert={config.option.assertmode}")
    for override in config.option.override_ini or ():
        args += ["-o", override]
    for warning in config.known_args_namespace.pythonwarnings or ():
        args += ["-W", warning]
    manager = config.pluginmanager
    # The host's plugins (from entry points or -p) go to the guest as module
    # names it imports and registers itself: `-p NAME` would make pytest scan
    # every installed distribution's metadata, over hostfs, once per plugin.
    modules: dict[str, str] = {}
    wanted = [manager.get_name(plugin) for plugin, _ in manager.list_plugin_distinfo()]
    wanted += [n for n in config.option.plugins or () if not n.startswith("no:")]
    for name in wanted:
        plugin = manager.get_plugin(name) if name else None
        if name and name not in HOST_ONLY_PLUGINS and isinstance(plugin, ModuleType):
            modules[name] = plugin.__name__
    for name in config.option.plugins or ():
        if name.startswith("no:") and name[3:] not in HOST_ONLY_PLUGINS:
            args += ["-p", name]
    paths = list(dict.fromkeys(str(item.path) for item in items))
    options = {
        name: value
        for name, value in vars(config.option).items()
        if name not in HOST_ONLY_OPTIONS and not name.startswith("fakemachine") and _json_ok(value)
    }
    return {
        "args": args + paths,
        "plugins": list(dict.fromkeys(modules.values())),
        "nodeids": [item.nodeid for item in items],
        "options": options,
        "sys_path": [p for p in sys.path if p],
        "invocation_dir": str(config.invocation_params.dir),
        "events": events,
    }


def _json_ok(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(eq=False)
class GuestRun:
    """One guest running ``items`` in order, their reports delivered one test at a time."""

    config: pytest.Config
    items: list[pytest.Item]
    machine: Machine
    image_dir: Path
    on_outcome: Callable[[BootOutcome], None]
    timeout: float | None
    session: Session | None = None
    guest: GuestProcess | None = None
    reader: EventReader | None = None
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    collect_errors: list[str] = field(default_factory=list)
    done: bool = False
    dead: str = ""  # why the guest stopped early, once it did
    deadline: float | None = None
    launched_at: float = 0.0
    boot_seconds: float | None = None  # launch to the first test's start, once known
    shell: ShellWiring | None = None  # --fakemachine-shell-on-fail
    shell_over: bool = False

    def start(self) -> None:
        for path, writable in python_mounts(self.config):
            check_guest_path(path, "the Python environment of the pytest session")
            self.machine.add_volume(path, read_only=not writable)
        if self.shell is not None:
            self.machine.extra_kernel_args += self.shell.kernel_args()
        self.session = self.machine.session()
        if self.shell is not None:
            self.session.pass_fds += self.shell.pass_fds
        self.session.cleanup.append(self.image_dir)
        self.session.__enter__()
        work = self.session.workdir
        spec = guest_spec(self.config, self.items, f"{GUEST_WORK}/events.jsonl")
        if self.shell is not None:
            spec["shell"] = self.shell.spec()
        (work / "guest.json").write_text(json.dumps(spec))
        env = {**self.machine.env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
        argv = [sys.executable, _guest.__file__, f"{GUEST_WORK}/guest.json"]
        body = command_body(argv, str(self.config.invocation_params.dir), env)
        self.reader = EventReader(work / "events.jsonl")
        self.launched_at = time.monotonic()
        self.guest = self.session.launch(body)
        if self.shell is not None:
            self.shell.launched()
        self._arm()

    def _arm(self) -> None:
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def _pump(self) -> None:
        assert self.reader is not None
        for event in self.reader.read():
            kind = event.get("event")
            if kind == "start":
                self._arm()  # the time limit counts per test
                if self.boot_seconds is None:
                    self.boot_seconds = time.monotonic() - self.launched_at
            elif kind == "report":
                self.events.setdefault(event["nodeid"], []).append(event["report"])
            elif kind == "collecterror":
                self.collect_errors.append(event.get("longrepr", ""))
            elif kind == "done":
                self.done = True
            elif kind == "shell" and self.shell is not None:
                self.shell_over = False
                self.shell.interact(event.get("nodeid", ""), self._shell_ended)
                self._arm()  # the time in the shell is not the test's
            elif kind == "shell-end":
                self.shell_over = True

    def _shell_ended(self) -> bool:
        self._pump()
        return self.shell_over or self.guest is None or self.guest.exited()

    def deliver(self, item: pytest.Item) -> None:
        """Log ``item``'s reports as they come; fail it if the guest cannot finish it."""
        assert self.guest is not None
        received: list[pytest.TestReport] = []
        while True:
            self._pump()
            for data in self.events.pop(item.nodeid, []):
                report = rebuild(self.config, data)
                if item is self.items[0]:  # the test that paid for the boot
                    report.fakemachine_boot = self.boot_seconds  # type: ignore[attr-defined]
                    if report.when == "setup" and self.boot_seconds is not None:
                        # Setting up this test took the boot: --durations and
                        # junitxml show what the test cost, not just its fixtures.
                        report.duration += self.boot_seconds
                item.ihook.pytest_runtest_logreport(report=report)
                received.append(report)
                if report.when == "teardown":
                    return
            if self.dead:
                self._fail(item, received, self.dead)
                return
            if self.done:
                errors = "\n".join(self.collect_errors)
                self._fail(item, received, "the test was not collected in the guest"
                           + (f":\n{errors}" if errors else ""))  # fmt: skip
                return
            if self.guest.exited():
                self._pump()
                if item.nodeid in self.events:
                    continue
                self.dead = self._why_gone(received)
                continue
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.guest.kill()
                self.dead = f"the guest timed out after {self.timeout:g} s and was killed"
                continue
            self.guest.wait(0.02)

    def _why_gone(self, received: list[pytest.TestReport]) -> str:
        assert self.session is not None
        work = self.session.workdir
        if not (work / "started").exists():
            return "the guest did not boot"
        status = self.session.read_text("status").strip()
        if status and not received:
            return f"the guest-side pytest exited with status {status} before running the test"
        return "the guest powered off during the test"

    def _fail(self, item: pytest.Item, received: list[pytest.TestReport], why: str) -> None:
        console = self.guest.console() if self.guest is not None else ""
        tail = console_tail(console)
        stderr = self.session.read_text("stderr").strip() if self.session else ""
        message = why + (f"\nguest runner stderr:\n{stderr[-2000:]}" if stderr else "")
        for report in failure_reports(item, received, message, tail):
            item.ihook.pytest_runtest_logreport(report=report)

    def close(self, *, graceful: bool = True) -> None:
        """Wait briefly for a normal power-off (if ``graceful``), then kill and clean up."""
        try:
            if self.guest is not None:
                if graceful and not self.dead:  # the job unmounts, syncs, powers off
                    self.guest.wait(_GRACE_SECONDS)
                self.guest.kill()
                if self.session is not None:
                    try:
                        outcome = self.session.outcome(self.guest, True, None)
                    except Exception:
                        outcome = BootOutcome(-1, self.guest.console(), 0.0)
                    self.on_outcome(outcome)
        finally:
            if self.session is not None:
                self.session.__exit__()
            if self.shell is not None:
                self.shell.close()
            shutil.rmtree(self.image_dir, ignore_errors=True)

    def remaining(self, delivered: Iterable[str]) -> list[pytest.Item]:
        done = set(delivered)
        return [item for item in self.items if item.nodeid not in done]


def new_image_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fakemachine-images-"))
