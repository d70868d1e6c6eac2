"""Command-line and ini settings, declared and resolved in one place.

Each option shares its help text with its ini value; a command-line value
wins over the ini file. Resolved settings are stored in ``config.stash``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pytest

from ._config import DEFAULT_MEMORY_MIB, parse_memory, parse_timeout
from ._errors import ConfigError

__all__ = ["Settings", "addoption", "settings_key"]

BACKEND_HELP = (
    "auto (default): use UML where it runs, else skip what needs a guest with the reason; "
    "uml: demand UML and error where it cannot run"
)
MEMORY_HELP = f"default guest memory, e.g. 1G or 512M (default {DEFAULT_MEMORY_MIB}M)"
TIMEOUT_HELP = "default seconds a guest may run before it is killed (default: no limit)"
KERNEL_HELP = "the UML kernel binary to boot (default: linux.uml on PATH)"


@dataclass(frozen=True)
class Settings:
    backend: str
    memory: int  # MiB
    timeout: float | None
    kernel: str | None
    show_boot: bool
    keep: bool


settings_key = pytest.StashKey[Settings]()


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fakemachine", "run tests in User-Mode-Linux guests (fakemachine)")
    group.addoption("--fakemachine-backend", choices=("auto", "uml"), default=None,
                    help=BACKEND_HELP)  # fmt: skip
    group.addoption("--fakemachine-memory", metavar="SIZE", default=None, help=MEMORY_HELP)
    group.addoption("--fakemachine-timeout", metavar="SECONDS", default=None, help=TIMEOUT_HELP)
    group.addoption("--fakemachine-kernel", metavar="PATH", default=None, help=KERNEL_HELP)
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
    parser.addini("fakemachine_backend", BACKEND_HELP, default="auto")
    parser.addini("fakemachine_memory", MEMORY_HELP, default=None)
    parser.addini("fakemachine_timeout", TIMEOUT_HELP, default=None)
    parser.addini("fakemachine_kernel", KERNEL_HELP, default=None)


def _pick(config: pytest.Config, name: str) -> tuple[Any, str]:
    """The value of setting ``name`` and where it came from (for error messages)."""
    value = config.getoption(f"fakemachine_{name}")
    if value is not None:
        return value, f"--fakemachine-{name}"
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
    kernel: Optional[str]
    kernel, _ = _pick(config, "kernel")
    return Settings(
        backend=backend,
        memory=memory_mib,
        timeout=parse_timeout(timeout, source),
        kernel=kernel,
        show_boot=bool(config.getoption("fakemachine_show_boot")),
        keep=bool(config.getoption("fakemachine_keep")),
    )
