"""``pytest-fakemachine``: Debian fakemachine's command line on our guests.

``pytest-fakemachine [run] [options] [-- command [args...]]`` runs a command
as root in a guest, with its exit status, its stdout and stderr apart and
live, and stdin passed through; with no command, a root shell. ``doctor`` is
the other verb. The guest's streams are serial lines wired to host pipes
(see ``image.templates.CLI_*``); the copying is ``cli.streams``' and
``_terminal``'s, the parsing ``cli.args``'.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .. import _config as c
from .. import backend as backends
from .._errors import ConfigError, FakeMachineError, GuestTimeout
from .._machine import Machine
from .._session import Session
from .._terminal import TerminalRelay, start_thread, window_size
from ..backend.base import STDERR_LINE, STDIN_LINE, TERMINAL_LINE, WINCH_LINE, Guest
from ..backend.lines import Wiring
from ..image import templates as t
from ..image.workdir import command_body
from .args import PROG, Options, UsageError, parse, parser
from .doctor import run_doctor
from .streams import copy_out, spool_stdin

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_GUEST_FAILED = 125  # the guest could not run the command (as docker run)
GUEST_CWD = "/scratch"  # as fakemachine's service (WorkingDirectory=-/scratch)
# fakemachine's guests set IN_FAKE_MACHINE=yes; debos and scripts test for it.
COMPAT_ENV = {"IN_FAKE_MACHINE": "yes"}
STDIN_SPOOL = "stdin.d"  # in the work directory: piped stdin's chunks
INTERACTIVE_PS1 = r"root@fakemachine:\w# "


class _Signalled(Exception):
    """SIGTERM or SIGHUP arrived: clean up as for Ctrl-C, then exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def build_machine(opts: Options) -> Machine:
    """A :class:`Machine` from the options; :class:`ConfigError` names a bad value."""
    # boot_timeout=None: the boot limit is --boot-timeout's alone (see run); the
    # session's default 120 s would cut a longer one short.
    machine = Machine(opts.backend, network=opts.network, timeout=opts.timeout,
                      kernel=opts.kernel, env={**COMPAT_ENV, **opts.env},
                      boot_timeout=None)  # fmt: skip
    machine.source = PROG
    # Checked here, so a bad value names the flag it came from.
    if opts.memory is not None:
        machine.memory = c.parse_memory(opts.memory, f"{PROG} -m/--memory")
    if opts.scratch is not None:
        machine.scratch = c.parse_size(opts.scratch, f"{PROG} -s/--scratchsize", "scratch")
    for volume in opts.volumes:
        machine.add_volume(volume.host, volume.guest, read_only=volume.read_only)
    for image in opts.images:
        machine.add_image(image.path, image.size, image.label)
    if opts.show_boot:
        machine._echo = _write_stderr  # as the plugin sets it for --fakemachine-show-boot
    if opts.cpus is not None and opts.cpus != 1:
        if backends.get(opts.backend, PROG, opts.kernel).name == "uml":  # fakemachine's -c works
            opts.warnings.append(f"-c {opts.cpus}: UML guests have one CPU")
        else:
            machine.cpus = opts.cpus
    return machine


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _stdin_passes() -> bool:
    """Whether stdin is a stream to pass to the command (open, not a terminal,
    not /dev/null)."""
    try:
        st = os.fstat(0)
    except OSError:
        return False
    if os.isatty(0):
        return False
    null = os.stat(os.devnull)
    return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev)


def _shell() -> str:
    return "bash" if shutil.which("bash", path="/usr/bin:/bin") else "sh"


def run(opts: Options) -> int:
    """Boot a guest for ``opts`` and return the command's exit status."""
    machine = build_machine(opts)
    for warning in opts.warnings:
        if not opts.quiet:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
    interactive = not opts.command and os.isatty(0)
    passes_stdin = not interactive and _stdin_passes()
    if interactive:
        argv: list[str] | str = ["setsid", "--wait", "--ctty", _shell(), "-i"]
        env = {"TERM": os.environ.get("TERM", "vt220"), "PS1": INTERACTIVE_PS1}
    elif not opts.command:
        argv, env = ["sh"], {}
    else:
        argv, env = (opts.command[0] if len(opts.command) == 1 else opts.command), {}
    wiring = Wiring()
    try:
        with machine.session() as session:
            # The boot's limit is the flag's (unset: none), named in its message.
            session.boot_timeout, session.boot_timeout_name = opts.boot_timeout, "--boot-timeout"
            if interactive:
                return _run_interactive(machine, session, wiring, argv, env)
            return _run_streams(machine, session, wiring, argv, passes_stdin)
    finally:
        wiring.close()


def _body(machine: Machine, prelude: str, argv: list[str] | str, env: dict[str, str]) -> str:
    source = PROG
    if isinstance(argv, str) and "\0" in argv:
        raise ConfigError(f"command {argv!r} from {source}: contains a NUL byte")
    merged = c.check_env({**machine.env, **env}, source)
    return prelude + "\n" + command_body(argv, GUEST_CWD, merged)


def _run_streams(
    machine: Machine, session: Session, w: Wiring, argv: list[str] | str, passes_stdin: bool
) -> int:
    layout = session.layout
    # Both ways: a line back tells the guest that our stdout was closed (CLI_STREAMS).
    out_w, out_r = w.both_ways(TERMINAL_LINE)
    err_r = w.out_of_guest(STDERR_LINE)
    prelude = t.CLI_STREAMS.format(stdout=layout.line_device(TERMINAL_LINE),
                                   stderr=layout.line_device(STDERR_LINE))  # fmt: skip
    in_w = w.into_guest(STDIN_LINE) if passes_stdin else -1
    if passes_stdin:
        prelude += "\n" + t.CLI_STDIN.format(line=layout.line_device(STDIN_LINE),
                                            work=t.GUEST_WORK,
                                            spool=f"{t.GUEST_WORK}/{STDIN_SPOOL}")  # fmt: skip
    session.lines += w.lines
    copiers: list[threading.Thread] = []

    def launched(guest: Guest) -> None:
        w.launched()
        copiers.append(start_thread(lambda: copy_out(out_r, 1, lambda: _tell(out_w)),
                                    "fakemachine-stdout"))  # fmt: skip
        copiers.append(start_thread(lambda: copy_out(err_r, 2), "fakemachine-stderr"))
        if passes_stdin:
            ready = session.workdir / "stdin-ready"
            spool = session.workdir / STDIN_SPOOL
            spool.mkdir()
            start_thread(lambda: spool_stdin(0, spool, in_w, ready.exists, guest.exited),
                         "fakemachine-stdin")  # fmt: skip

    try:
        return session.run(_body(machine, prelude, argv, {}), machine.timeout,
                           launched=launched).status  # fmt: skip
    finally:
        for copier in copiers:  # the guest is dead: its ends are closed, the copies end
            copier.join(timeout=10)


def _tell(line: int) -> None:
    """One line to the guest on ``line``; a guest already gone needs none."""
    with contextlib.suppress(OSError):
        os.write(line, b"\n")


def _run_interactive(
    machine: Machine, session: Session, w: Wiring, argv: list[str] | str, env: dict[str, str]
) -> int:
    layout = session.layout
    to_guest_w, from_guest_r = w.both_ways(TERMINAL_LINE)
    winch_w = w.into_guest(WINCH_LINE)
    os.set_blocking(winch_w, False)  # written from a signal handler
    session.lines += w.lines
    rows, cols = window_size(1 if os.isatty(1) else 0)
    prelude = t.CLI_TERMINAL.format(line=layout.line_device(TERMINAL_LINE),
                                    winch=layout.line_device(WINCH_LINE), rows=rows,
                                    cols=cols)  # fmt: skip
    body = _body(machine, prelude, argv, env)

    def resize(rows: int, cols: int) -> None:
        # A full pipe (the guest is not reading) drops this size; the next one will do.
        with contextlib.suppress(OSError):
            os.write(winch_w, b"%d %d\n" % (rows, cols))

    with contextlib.ExitStack() as relay:

        def launched(guest: Guest) -> None:
            w.launched()
            relay.enter_context(TerminalRelay(0, 1, to_guest_w, from_guest_r, resize))

        return session.run(body, machine.timeout, launched=launched).status


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Signalled(signum)


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 (one exit status per outcome)
    """The console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["doctor"]:
        if len(args) > 1:
            print(f"usage: {PROG} doctor", file=sys.stderr)
            return EXIT_USAGE
        return run_doctor(print)
    if args[:1] == ["run"]:
        args = args[1:]
    try:
        opts = parse(args)
    except UsageError as e:
        parser().print_usage(sys.stderr)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return run(opts)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except GuestTimeout as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except FakeMachineError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_GUEST_FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Signalled as e:
        return 128 + e.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main_exit() -> None:
    """The console script's entry point."""
    sys.exit(main())
