"""``Machine``: a guest's configuration, and ``run()``, which boots it once."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union, final

from . import _config as c
from . import backend as backends
from ._errors import ConfigError
from ._session import Session
from .image.initramfs import initramfs
from .image.templates import LABEL_DIR
from .image.workdir import CWD_MISSING, command_body

__all__ = ["Machine", "RunResult"]

Command = Union[str, Sequence[str]]


@final
class RunResult(subprocess.CompletedProcess[str]):
    """What ``Machine.run()`` returns: a CompletedProcess plus the guest console."""

    def __init__(self, args: Any, returncode: int, stdout: str, stderr: str, console: str) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.console = console


@final
class Machine:
    """A guest configuration; every :meth:`run` boots a fresh guest from it."""

    def __init__(
        self,
        backend: str = "auto",
        *,
        memory: c.Size | None = None,
        scratch: c.Size | None = None,
        network: bool = False,
        timeout: float | None = None,
        boot_timeout: float | None = c.DEFAULT_BOOT_TIMEOUT,
        env: dict[str, str] | None = None,
        kernel: str | os.PathLike[str] | None = None,
        cpus: int | None = None,
    ) -> None:
        self.backend = backend
        self.memory = memory
        self.scratch = scratch
        self.network = network
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.env: dict[str, str] = dict(env or {})
        self.kernel = kernel
        self.cpus = cpus
        # Keep the boot-time RAID6/XOR benchmarks (skipped by default: they cost
        # most of a second, and only btrfs RAID5/6 needs their result).
        self.raid_benchmarks = False
        # Set by the plugin: where errors say the values came from, the live
        # console echo of --fakemachine-show-boot, and --fakemachine-keep.
        self.source = "Machine()"
        self._echo: Callable[[str], None] | None = None
        self._keep = False
        self.last_workdir: Path | None = None
        self._images: list[c.ImageSpec] = []
        self._volumes: list[c.Volume] = []
        self.extra_kernel_args: list[str] = []

    def __repr__(self) -> str:
        return (
            f"<Machine memory={self.memory!r} scratch={self.scratch!r} network={self.network!r}"
            f" images={[i.label for i in self._images]} volumes="
            f"{[str(v.host) for v in self._volumes]}>"
        )

    @property
    def images(self) -> tuple[c.ImageSpec, ...]:
        return tuple(self._images)

    @property
    def volumes(self) -> tuple[c.Volume, ...]:
        return tuple(self._volumes)

    def add_image(
        self, path: str | os.PathLike[str], size: c.Size | None = None, label: str | None = None
    ) -> str:
        """Attach a raw disk image; returns its guest path under by-fakemachine-label."""
        source = f"add_image() of {self.source}"
        index = len(self._images)
        label = c.check_label(f"fakedisk-{index}" if label is None else label, source)
        if any(i.label == label for i in self._images):
            raise ConfigError(f"label={label!r} from {source}: already used by another image")
        backend = backends.get(self.backend, self.source, self.kernel)
        if index >= backend.max_disks():
            raise ConfigError(
                f"image {label!r} from {source}: a {backend.name} guest has only "
                f"{backend.max_disks()} disks"
            )
        nbytes = None if size is None else c.parse_size(size, source)
        image = Path(os.path.abspath(os.fspath(path)))
        if any(i.path == image for i in self._images):
            raise ConfigError(f"image {str(image)!r} from {source}: already attached")
        for other in self._images:  # the same file by another name (a symlink, a hard link)
            if image.exists() and other.path.exists() and os.path.samefile(image, other.path):
                raise ConfigError(
                    f"image {str(image)!r} from {source}: the same file as image "
                    f"{str(other.path)!r} (label {other.label!r}), already attached"
                )
        c.prepare_image(image, nbytes, source)
        self._images.append(c.ImageSpec(image, label))
        return f"{LABEL_DIR}/{label}"

    def add_volume(
        self,
        host_dir: str | os.PathLike[str],
        guest_dir: str | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        """Mount ``host_dir`` in the guest at ``guest_dir`` (default: the same path)."""
        volume = c.check_volume(host_dir, guest_dir, read_only, f"add_volume() of {self.source}")
        self._volumes.append(volume)

    def run(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        check: bool = False,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> RunResult:
        """Boot a guest, run ``command`` as root in it, and return when it powered off."""
        source = f"run() of {self.source}"
        argv = _check_command(command, source)
        guest_cwd = c.check_guest_path("/scratch" if cwd is None else cwd, source)
        merged_env = c.check_env({**self.env, **(env or {})}, source)
        limit = c.parse_timeout(self.timeout if timeout is None else timeout, source)
        body = command_body(argv, guest_cwd, merged_env)
        with self.session() as session:
            self.last_workdir = session.workdir
            outcome = session.run(body, limit)
            if (session.workdir / CWD_MISSING).exists():
                raise ConfigError(f"cwd={cwd!r} from {source}: no such directory in the guest")
            stdout = session.read_text("stdout")
            stderr = session.read_text("stderr")
        result = RunResult(command, outcome.status, stdout, stderr, outcome.console)
        if check:
            result.check_returncode()
        return result

    def check_backend(self) -> None:
        """Raise :class:`BackendUnavailable` if no guest can boot here; boots nothing."""
        backend = backends.get(self.backend, self.source, self.kernel)
        prepared = backend.prepare(self.kernel, self.network, self.extra_kernel_args)
        initramfs(backend.layout(prepared))

    def session(self) -> Session:
        """Validate everything and prepare a work directory; the caller boots it."""
        source = self.source
        backend = backends.get(self.backend, source, self.kernel)
        memory = c.parse_memory(
            c.DEFAULT_MEMORY_MIB if self.memory is None else self.memory, source
        )
        c.check_memory_fits(memory, self.memory, source)
        scratch = None if self.scratch is None else c.parse_size(self.scratch, source, "scratch")
        if not isinstance(self.network, bool):
            raise ConfigError(f"network={self.network!r} from {source}: expected True or False")
        boot_timeout = c.parse_timeout(self.boot_timeout, source, "boot_timeout")
        disks = len(self._images) + (scratch is not None)
        if disks > backend.max_disks():
            raise ConfigError(
                f"{len(self._images)} images and a scratch disk from {source}: a {backend.name} "
                f"guest has only {backend.max_disks()} disks"
            )
        cpus = _check_cpus(self.cpus, backend.name, source)
        prepared = backend.prepare(self.kernel, self.network, self.extra_kernel_args)
        return Session(
            backend=backend,
            prepared=prepared,
            memory_mib=memory,
            scratch_bytes=scratch,
            network=self.network,
            images=tuple(self._images),
            volumes=tuple(self._volumes),
            keep=self._keep,
            echo=self._echo,
            extra_kernel_args=tuple(self.extra_kernel_args),
            raid_benchmarks=bool(self.raid_benchmarks),
            boot_timeout=boot_timeout,
            cpus=cpus,
        )


def _check_cpus(cpus: object, backend: str, source: str) -> int:
    if cpus is None:
        return 1
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ConfigError(f"cpus={cpus!r} from {source}: expected a positive whole number")
    if cpus > 1 and backend == "uml":
        raise ConfigError(f"cpus={cpus!r} from {source}: UML guests have one CPU")
    return cpus


def _check_command(command: object, source: str) -> list[str] | str:
    if isinstance(command, str):
        if "\0" in command:
            raise ConfigError(f"command {command!r} from {source}: contains a NUL byte")
        return c.check_text(command, "command", source)
    if isinstance(command, (list, tuple)) and command:
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in command]
        for arg in argv:
            if not isinstance(arg, str) or "\0" in arg:
                raise ConfigError(
                    f"command argument {arg!r} from {source}: expected a string without NUL"
                )
            c.check_text(arg, "command argument", source)
        return argv
    raise ConfigError(f"command {command!r} from {source}: expected a string or an argv list")
