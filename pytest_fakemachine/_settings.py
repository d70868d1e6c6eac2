"""Command-line and ini settings, declared and resolved in one place.

Each option shares its help text with its ini value; a command-line value
wins over the ini file. Resolved settings are stored in ``config.stash``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from ._config import DEFAULT_BOOT_TIMEOUT, DEFAULT_MEMORY_MIB, parse_memory, parse_timeout
from ._errors import ConfigError

__all__ = ["SCOPES", "Settings", "addoption", "passenv_env", "settings_key"]

SCOPES = ("function", "module", "session")

BACKEND_HELP = (
    "auto (default): use UML where it runs, else skip what needs a guest with the reason; "
    "uml: demand UML and error where it cannot run"
)
MEMORY_HELP = f"default guest memory, e.g. 1G or 512M (default {DEFAULT_MEMORY_MIB}M)"
TIMEOUT_HELP = "default seconds a guest may run before it is killed (default: no limit)"
KERNEL_HELP = "the UML kernel binary to boot (default: linux.uml on PATH)"
BOOT_TIMEOUT_HELP = (
    "default seconds a guest may take to reach its command (for marked tests: its test "
    "runner) before it is killed and the boot fails (default: 120)"
)
ALL_HELP = (
    "run every collected test without a fakemachine marker as if it had one with the "
    "default keywords (tests that use the fakemachine fixture stay on the host)"
)
SCOPE_HELP = "scope of marked tests that give none: function (default), module or session"
BOOT_AHEAD_HELP = (
    "on (default): while a function-scoped marked test runs, boot the guests of the tests "
    "after it on idle CPUs, up to their test; off: boot each guest at its test's turn"
)
PASSENV_HELP = (
    "host environment variables (names or globs, whitespace- or line-separated) passed "
    "into every guest the plugin starts; default none"
)


@dataclass(frozen=True)
class Settings:
    backend: str
    memory: int  # MiB
    timeout: float | None
    boot_timeout: float | None
    kernel: str | None
    show_boot: bool
    keep: bool
    all_tests: bool = False
    scope: str = "function"
    passenv: tuple[str, ...] = ()
    boot_ahead: bool = True


settings_key = pytest.StashKey[Settings]()
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fakemachine", "run tests in User-Mode-Linux guests (fakemachine)")
    group.addoption("--fakemachine-backend", choices=("auto", "uml"), default=None,
                    help=BACKEND_HELP)  # fmt: skip
    group.addoption("--fakemachine-memory", metavar="SIZE", default=None, help=MEMORY_HELP)
    group.addoption("--fakemachine-timeout", metavar="SECONDS", default=None, help=TIMEOUT_HELP)
    group.addoption("--fakemachine-kernel", metavar="PATH", default=None, help=KERNEL_HELP)
    group.addoption("--fakemachine-boot-timeout", metavar="SECONDS", default=None,
                    help=BOOT_TIMEOUT_HELP)  # fmt: skip
    group.addoption("--fakemachine-show-boot", action="store_true", default=False,
                    help="stream each guest's console to the terminal as it boots")  # fmt: skip
    group.addoption("--fakemachine-keep", action="store_true", default=False,
                    help="keep each guest's work directory (console log, generated files) "
                         "and print where")  # fmt: skip
    group.addoption("--fakemachine-shell-on-fail", action="store_true", default=False,
                    help="when a marked test fails, open a root shell in its guest on the "
                         "terminal before its teardown (not with xdist)")  # fmt: skip
    group.addoption("--fakemachine-doctor", action="store_true", default=False,
                    help="check that this host can boot a guest, print how to fix what is "
                         "missing, and exit")  # fmt: skip
    group.addoption("--fakemachine-all", action="store_true", default=None, help=ALL_HELP)
    group.addoption("--fakemachine-boot-ahead", choices=("on", "off"), default=None,
                    help=BOOT_AHEAD_HELP)  # fmt: skip
    parser.addini("fakemachine_boot_ahead", BOOT_AHEAD_HELP, type="bool", default=True)
    parser.addini("fakemachine_all", ALL_HELP, type="bool", default=False)
    parser.addini("fakemachine_scope", SCOPE_HELP, default=None)
    parser.addini("fakemachine_passenv", PASSENV_HELP, default=None)
    parser.addini("fakemachine_backend", BACKEND_HELP, default="auto")
    parser.addini("fakemachine_memory", MEMORY_HELP, default=None)
    parser.addini("fakemachine_timeout", TIMEOUT_HELP, default=None)
    parser.addini("fakemachine_kernel", KERNEL_HELP, default=None)
    parser.addini("fakemachine_boot_timeout", BOOT_TIMEOUT_HELP, default=None)


def _pick(config: pytest.Config, name: str) -> tuple[Any, str]:
    """The value of setting ``name`` and where it came from (for error messages)."""
    value = config.getoption(f"fakemachine_{name}")
    if value is not None:
        return value, f"--fakemachine-{name.replace('_', '-')}"
    ini = config.getini(f"fakemachine_{name}")
    if ini not in (None, ""):
        return ini, f"ini option fakemachine_{name} in {config.inipath or 'the ini file'}"
    return None, "default"


def resolve(config: pytest.Config) -> Settings:
    backend, source = _pick(config, "backend")
    backend = backend or "auto"
    if backend not in ("auto", "uml"):
        raise ConfigError(f"backend={backend!r} from {source}: expected auto or uml")
    memory, source = _pick(config, "memory")
    memory_mib = DEFAULT_MEMORY_MIB if memory is None else parse_memory(memory, source)
    timeout, source = _pick(config, "timeout")
    timeout = parse_timeout(timeout, source)
    boot_timeout, boot_source = _pick(config, "boot_timeout")
    kernel: Optional[str]
    kernel, _ = _pick(config, "kernel")
    scope = config.getini("fakemachine_scope") or "function"
    if scope not in SCOPES:
        where = f"ini option fakemachine_scope in {config.inipath or 'the ini file'}"
        raise ConfigError(f"scope={scope!r} from {where}: expected one of {', '.join(SCOPES)}")
    all_tests = config.getoption("fakemachine_all") or config.getini("fakemachine_all")
    boot_ahead = config.getoption("fakemachine_boot_ahead")
    if boot_ahead is None:
        boot_ahead = "on" if config.getini("fakemachine_boot_ahead") else "off"
    return Settings(
        backend=backend,
        memory=memory_mib,
        timeout=timeout,
        boot_timeout=(
            DEFAULT_BOOT_TIMEOUT
            if boot_timeout is None
            else parse_timeout(boot_timeout, boot_source, "boot_timeout")
        ),
        kernel=kernel,
        show_boot=bool(config.getoption("fakemachine_show_boot")),
        keep=bool(config.getoption("fakemachine_keep")),
        all_tests=bool(all_tests),
        scope=scope,
        passenv=tuple((config.getini("fakemachine_passenv") or "").split()),
        boot_ahead=boot_ahead == "on",
    )


def passenv_env(patterns: Iterable[str]) -> dict[str, str]:
    """The host's variables whose names match ``patterns`` (globs, tox's passenv)."""
    return {
        name: value
        for name, value in os.environ.items()
        if _ENV_NAME.fullmatch(name) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
