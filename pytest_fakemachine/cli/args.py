"""The command line of ``pytest-fakemachine``, parsed: Debian fakemachine's
flags (with their meanings) and ours, into :class:`Options`. No guest here;
:mod:`pytest_fakemachine._cli` runs them.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import _config as c
from .._errors import ConfigError

__all__ = ["PROG", "Options", "UsageError", "package_version", "parse", "parser"]

PROG = "pytest-fakemachine"  # also the distribution's name


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, the one place it is)."""
    return importlib.metadata.version(PROG)


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


@dataclass
class _Disk:
    path: str
    size: str | None
    label: str | None = None


@dataclass
class _Mount:
    host: str
    guest: str | None
    read_only: bool = False


@dataclass
class Options:
    """The parsed command line."""

    backend: str = "auto"
    volumes: list[_Mount] = field(default_factory=list)
    images: list[_Disk] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    memory: str | None = None
    scratch: str | None = None
    cpus: int | None = None
    show_boot: bool = False
    quiet: bool = False
    network: bool = False
    timeout: float | None = None
    boot_timeout: float | None = None
    kernel: str | None = None
    command: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


_T = TypeVar("_T")


def _argtype(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse type whose ConfigError message is the error (argparse would
    replace a ValueError's text with 'invalid value')."""

    @functools.wraps(parse)
    def wrapper(value: str) -> _T:
        try:
            return parse(value)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return wrapper


@_argtype
def _volume(value: str) -> _Mount:
    parts = value.split(":")
    if len(parts) > 2 or not parts[0]:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST or HOST:GUEST")
    return _Mount(parts[0], parts[1] if len(parts) == 2 else None)


@_argtype
def _image(value: str) -> _Disk:
    parts = value.split(":")
    if len(parts) > 2 or not parts[0]:
        raise argparse.ArgumentTypeError(f"{value!r}: expected PATH or PATH:SIZE")
    size = parts[1] if len(parts) == 2 else None
    if size is not None:
        c.parse_size(size, f"-i {value}")  # the error names the value
    return _Disk(parts[0], size)


@_argtype
def _environ(value: str) -> tuple[str, str]:
    name, sep, text = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{value!r}: expected VAR:VALUE")
    c.check_env({name: text}, f"-e {value}")
    return name, text


@_argtype
def _seconds(value: str) -> float:
    seconds = c.parse_timeout(value, "the command line")
    assert seconds is not None
    return seconds


@_argtype
def _cpus(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of CPUs")
    return int(value)


class _After(argparse.Action):
    """``--read-only``/``--label NAME``: a property of the volume/image before it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        kind = "volumes" if self.dest == "read_only" else "images"
        items = getattr(namespace, kind)
        if not items:
            flag = "-v/--volume" if kind == "volumes" else "-i/--image"
            raise UsageError(f"{option_string} must follow the {flag} it is for")
        if self.dest == "read_only":
            items[-1].read_only = True
        else:
            c.check_label(values, f"{option_string} {values}")
            items[-1].label = values


# The flags, as (names, add_argument's keywords): Debian fakemachine's, then ours.
_FLAGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("-b", "--backend"), {"choices": ("auto", "uml", "kvm", "qemu"), "default": "auto",
                           "help": "uml (User-Mode-Linux), kvm (QEMU with KVM), qemu (QEMU "
                                   "without KVM); auto (default): kvm where KVM really runs a "
                                   "guest, else uml, else qemu"}),
    (("-v", "--volume"), {"dest": "volumes", "metavar": "HOST[:GUEST]", "type": _volume,
                          "action": "append", "default": [],
                          "help": "mount a host directory (repeatable)"}),
    (("--read-only",), {"dest": "read_only", "nargs": 0, "action": _After,
                        "help": "the volume before this flag is mounted read-only"}),
    (("-i", "--image"), {"dest": "images", "metavar": "PATH[:SIZE]", "type": _image,
                         "action": "append", "default": [],
                         "help": "attach a disk image, created or grown sparsely to SIZE "
                                 "(repeatable); in the guest: "
                                 "/dev/disk/by-fakemachine-label/LABEL"}),
    (("--label",), {"dest": "label", "metavar": "NAME", "action": _After,
                    "help": "label of the image before this flag (default fakedisk-N)"}),
    (("-e", "--environ-var"), {"dest": "env", "metavar": "VAR:VALUE", "type": _environ,
                               "action": "append", "default": [],
                               "help": "an environment variable of the command (repeatable)"}),
    (("-m", "--memory"), {"metavar": "SIZE",
                          "help": "guest memory: a bare number is MiB (default 2048)"}),
    (("-s", "--scratchsize"), {"dest": "scratch", "metavar": "SIZE",
                               "help": "an ext4 disk of SIZE at /scratch (default: tmpfs)"}),
    (("-c", "--cpus"), {"type": _cpus, "metavar": "N",
                        "help": "guest CPUs (kvm, qemu); UML guests have one, with a warning"}),
    (("--show-boot",), {"action": "store_true", "help": "copy the guest console to stderr"}),
    (("-q", "--quiet"), {"action": "store_true", "help": "no warnings of ours"}),
    (("--network",), {"action": "store_true", "help": "an ethernet link through libslirp-helper"}),
    (("--timeout",), {"type": _seconds, "metavar": "SECONDS",
                      "help": "kill the guest after SECONDS"}),
    (("--boot-timeout",), {"type": _seconds, "metavar": "SECONDS", "default": 120.0,
                           "help": "give up when the command has not started after SECONDS "
                                   "(default 120)"}),
    (("--kernel",), {"metavar": "PATH",
                     "help": "UML kernel to boot (default: linux.uml on PATH)"}),
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        usage=f"{PROG} [run] [options] [-- command [args...]]\n       {PROG} doctor",
        description="Run a command (or a root shell) in a throw-away User-Mode-Linux guest "
        "booted from this host's /usr, as Debian's fakemachine does. Sizes are binary "
        "(64M = 64 MiB).",
        epilog="One word after -- is a shell command line; several are an argv, each word "
        "unchanged. With no command: an interactive root shell when stdin is a terminal, "
        "else the shell reads its commands from stdin. Exit status: the command's; 2 for a "
        "usage error, 124 when --timeout elapsed, 125 when the guest could not run it.",
    )
    for names, keywords in _FLAGS:
        p.add_argument(*names, **keywords)
    p.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    p.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def parse(argv: Sequence[str]) -> Options:
    """Parse the arguments after the verb; :class:`UsageError` when they are bad."""
    argv = list(argv)
    after: list[str] | None = None
    if "--" in argv:
        at = argv.index("--")
        argv, after = argv[:at], argv[at + 1 :]
    try:
        ns = parser().parse_args(argv)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if after is not None and ns.words:
        raise UsageError(f"command words before and after '--': {ns.words!r}")
    opts = Options(
        backend=ns.backend, volumes=ns.volumes, images=ns.images, env=dict(ns.env),
        memory=ns.memory, scratch=ns.scratch, cpus=ns.cpus, show_boot=ns.show_boot,
        quiet=ns.quiet, network=ns.network, timeout=ns.timeout, boot_timeout=ns.boot_timeout,
        kernel=ns.kernel, command=list(ns.words if after is None else after),
    )  # fmt: skip
    return opts
