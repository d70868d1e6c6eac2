"""Command-line and ini settings, declared and resolved in one place.

Each option shares its help text with its ini value; a command-line value
wins over the ini file. Resolved settings are stored in ``config.stash``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from ._config import (
    DEFAULT_BOOT_TIMEOUT,
    DEFAULT_MEMORY_MIB,
    check_label,
    parse_memory,
    parse_size,
    parse_timeout,
)
from ._errors import ConfigError

__all__ = [
    "DEFAULT_KEYWORDS",
    "SCOPES",
    "Settings",
    "addoption",
    "parse_defaults",
    "passenv_env",
    "settings_key",
]

SCOPES = ("function", "module", "session")
BACKENDS = ("auto", "uml", "kvm", "qemu")
# The keywords fakemachine_defaults takes: the marker's scalar ones, and the
# machine's backend and cpus.
DEFAULT_KEYWORDS = ("scope", "memory", "scratch", "network", "timeout", "boot_timeout",
                    "images", "backend", "cpus")  # fmt: skip
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}

BACKEND_HELP = (
    "auto (default): kvm where KVM really runs a guest, else uml, else qemu, else skip what "
    "needs a guest with the reason; uml (User-Mode-Linux), kvm (QEMU with KVM), qemu (QEMU "
    "without KVM): demand that backend, and error where it cannot run"
)
MEMORY_HELP = f"default guest memory, e.g. 1G or 512M (default {DEFAULT_MEMORY_MIB}M)"
TIMEOUT_HELP = "default seconds a guest may run before it is killed (default: no limit)"
KERNEL_HELP = (
    "the kernel to boot: for uml a linux.uml binary (default: the measured choice, else "
    "linux.uml on PATH), for kvm/qemu a kernel image (default: the host's, else the one "
    "scripts/setup.sh unpacked)"
)
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
DEFAULTS_HELP = (
    "default keywords of marked tests, of tests under --fakemachine-all and of the "
    "fakemachine fixture's machine: whitespace- or line-separated keyword=value pairs, e.g. "
    "'scope=module scratch=64M network=true memory=1G timeout=600 images=data:64M,log:16M'; "
    f"keywords: {', '.join(DEFAULT_KEYWORDS)}; a marker's own keywords win, and these win "
    "over the dedicated options (--fakemachine-memory...) of the same source"
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
    # From fakemachine_defaults only: the marker's scratch, network and images.
    scratch: int | None = None  # bytes
    network: bool = False
    images: tuple[tuple[str, int], ...] = ()  # (label, bytes)
    cpus: int = 1


settings_key = pytest.StashKey[Settings]()
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "fakemachine", "run tests in throw-away guests: UML or QEMU (fakemachine)"
    )
    group.addoption("--fakemachine-backend", choices=BACKENDS, default=None,
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
    group.addoption("--fakemachine-defaults", metavar="PAIRS", action="append", default=None,
                    help=DEFAULTS_HELP + " (repeatable: a later keyword wins)")  # fmt: skip
    parser.addini("fakemachine_defaults", DEFAULTS_HELP, default=None)
    parser.addini("fakemachine_boot_ahead", BOOT_AHEAD_HELP, type="bool", default=True)
    parser.addini("fakemachine_all", ALL_HELP, type="bool", default=False)
    parser.addini("fakemachine_scope", SCOPE_HELP, default=None)
    parser.addini("fakemachine_passenv", PASSENV_HELP, default=None)
    parser.addini("fakemachine_backend", BACKEND_HELP, default="auto")
    parser.addini("fakemachine_memory", MEMORY_HELP, default=None)
    parser.addini("fakemachine_timeout", TIMEOUT_HELP, default=None)
    parser.addini("fakemachine_kernel", KERNEL_HELP, default=None)
    parser.addini("fakemachine_boot_timeout", BOOT_TIMEOUT_HELP, default=None)


def parse_defaults(text: str, source: str) -> dict[str, Any]:
    """``fakemachine_defaults``' ``keyword=value`` pairs, checked, a later one winning.

    Values come out as the marker takes them: memory in MiB, sizes in bytes,
    seconds as floats, images as ``(label, bytes)`` pairs; ``none`` unsets
    ``scratch`` and ``timeout`` (to undo the ini's from the command line).
    """
    values: dict[str, Any] = {}
    for word in text.split():
        keyword, sep, value = word.partition("=")
        if not sep or not keyword:
            raise ConfigError(f"{source}: {word!r} is not keyword=value")
        if keyword not in DEFAULT_KEYWORDS:
            raise ConfigError(
                f"{source}: unknown keyword {keyword!r} in {word!r} "
                f"(known: {', '.join(DEFAULT_KEYWORDS)})"
            )
        values[keyword] = _default_value(keyword, value, source)
    return values


def _default_value(keyword: str, value: str, source: str) -> Any:
    if value.lower() == "none" and keyword in ("scratch", "timeout"):
        return None
    parse: dict[str, Callable[[str, str], Any]] = {
        "memory": parse_memory,
        "scratch": lambda v, s: parse_size(v, s, "scratch"),
        "timeout": lambda v, s: parse_timeout(v, s, "timeout"),
        "boot_timeout": lambda v, s: parse_timeout(v, s, "boot_timeout"),
        "network": _parse_bool,
        "scope": _check_scope,
        "backend": _check_backend,
        "cpus": _parse_cpus,
        "images": _parse_images,
    }
    return parse[keyword](value, source)


def _parse_bool(value: str, source: str) -> bool:
    if value.lower() not in _BOOLEANS:
        raise ConfigError(f"network={value!r} from {source}: expected true/false/yes/no/1/0")
    return _BOOLEANS[value.lower()]


def _parse_cpus(value: str, source: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ConfigError(f"cpus={value!r} from {source}: expected a positive number")
    return int(value)


def _parse_images(value: str, source: str) -> tuple[tuple[str, int], ...]:
    images: dict[str, int] = {}
    for spec in value.split(","):
        label, sep, size = spec.partition(":")
        if not sep:
            raise ConfigError(f"images={value!r} from {source}: {spec!r} is not LABEL:SIZE")
        check_label(label, source)
        if label in images:
            raise ConfigError(f"images={value!r} from {source}: label {label!r} given twice")
        images[label] = parse_size(size, source, f"images[{label!r}]")
    return tuple(images.items())


def _check_scope(scope: object, source: str) -> str:
    if scope not in SCOPES:
        raise ConfigError(f"scope={scope!r} from {source}: expected one of {', '.join(SCOPES)}")
    return str(scope)


def _check_backend(backend: object, source: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(
            f"backend={backend!r} from {source}: expected one of {', '.join(BACKENDS)}"
        )
    return str(backend)


def _ini_source(config: pytest.Config, name: str) -> str:
    return f"ini option fakemachine_{name} in {config.inipath or 'the ini file'}"


def _defaults(config: pytest.Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command line's and the ini's fakemachine_defaults, parsed."""
    given = config.getoption("fakemachine_defaults", None) or []
    cli = parse_defaults(" ".join(given), "--fakemachine-defaults")
    ini = parse_defaults(
        config.getini("fakemachine_defaults") or "", _ini_source(config, "defaults")
    )
    return cli, ini


def _pick(
    config: pytest.Config, name: str, cli: dict[str, Any], ini: dict[str, Any]
) -> tuple[Any, str]:
    """The value of setting ``name`` and where it came from (for error messages):
    the command line over the ini, and within each fakemachine_defaults over
    the dedicated option."""
    if name in cli:
        return cli[name], "--fakemachine-defaults"
    value = config.getoption(f"fakemachine_{name}", None)
    if value is not None:
        return value, f"--fakemachine-{name.replace('_', '-')}"
    if name in ini:
        return ini[name], _ini_source(config, "defaults")
    value = config.getini(f"fakemachine_{name}")
    if value not in (None, ""):
        return value, _ini_source(config, name)
    return None, "default"


def resolve(config: pytest.Config) -> Settings:
    cli, ini = _defaults(config)
    backend, source = _pick(config, "backend", cli, ini)
    backend = _check_backend(backend or "auto", source)
    memory, source = _pick(config, "memory", cli, ini)
    memory_mib = DEFAULT_MEMORY_MIB if memory is None else parse_memory(memory, source)
    timeout, source = _pick(config, "timeout", cli, ini)
    timeout = parse_timeout(timeout, source)
    boot_timeout, boot_source = _pick(config, "boot_timeout", cli, ini)
    kernel: Optional[str]
    kernel, _ = _pick(config, "kernel", {}, {})
    scope, source = _pick(config, "scope", cli, ini)
    scope = _check_scope(scope or "function", source)
    merged = {**ini, **cli}  # the keywords without a dedicated option
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
        scratch=merged.get("scratch"),
        network=bool(merged.get("network", False)),
        images=merged.get("images", ()),
        cpus=merged.get("cpus", 1),
    )


def passenv_env(patterns: Iterable[str]) -> dict[str, str]:
    """The host's variables whose names match ``patterns`` (globs, tox's passenv)."""
    return {
        name: value
        for name, value in os.environ.items()
        if _ENV_NAME.fullmatch(name) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
