"""The ``fakemachine`` marker on the host: which tests it marks, and the machine it asks for.

:func:`marked_test` resolves a test's markers (closest wins) into a
:class:`MarkedTest`: the machine's keywords, the scope and the key that groups
the tests sharing one guest. :func:`apply_marker` sets those keywords on a
:class:`Machine`. This is reading and checking the user's input, with a
ConfigError naming the marker; running the grouped tests in a guest is
:mod:`._runs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .._config import Image, check_env
from .._errors import ConfigError
from .._machine import Machine
from .._settings import SCOPES, Settings, passenv_env

__all__ = ["MARKER_KEYWORDS", "MarkedTest", "apply_marker", "marked_test"]

MARKER_KEYWORDS = ("images", "volumes", "memory", "scratch", "network", "env", "passenv",
                   "timeout", "boot_timeout", "scope", "backend", "cpus")  # fmt: skip


@dataclass(frozen=True)
class MarkedTest:
    """A marked test's resolved marker: the machine recipe, scope and group key."""

    kwargs: dict[str, Any]
    scope: str
    key: str
    source: str
    # The module and the machine: the guest this test would share under module scope.
    module_key: str = ""


def marked_test(item: pytest.Item, settings: Settings) -> MarkedTest | None:
    """The merged ``fakemachine`` markers of ``item`` (closest wins), or None.

    With ``--fakemachine-all``, a test without a marker counts as marked with
    the default keywords, unless it drives guests itself (the fixture).
    """
    markers = list(item.iter_markers("fakemachine"))
    source = f"@pytest.mark.fakemachine on {item.nodeid}"
    if not markers:
        if not settings.all_tests or "fakemachine" in getattr(item, "fixturenames", ()):
            return None
        source = f"--fakemachine-all on {item.nodeid}"
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
    scope = kwargs.pop("scope", settings.scope)
    if scope not in SCOPES:
        raise ConfigError(f"scope={scope!r} from {source}: expected one of {', '.join(SCOPES)}")
    if "images" not in kwargs and settings.images:  # a marker's images replace the defaults'
        kwargs["images"] = dict(settings.images)
    recipe = json.dumps(kwargs, sort_keys=True, default=_describe)
    module_key = f"module {item.path}\0{recipe}"
    if scope == "function":
        key = item.nodeid
    elif scope == "module":
        key = module_key
    else:
        key = f"session\0{recipe}"
    return MarkedTest(kwargs, scope, key, source, module_key)


def _describe(value: object) -> object:
    if isinstance(value, Image):
        return ["Image", os.path.abspath(value.path), value.size]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def apply_marker(machine: Machine, marked: MarkedTest, image_dir: Path) -> None:
    """Set the marker's keywords on ``machine``, which carries the options' defaults
    (and fakemachine_defaults'; its images are in ``marked.kwargs`` already)."""
    kw, source = marked.kwargs, marked.source
    for name in ("memory", "timeout", "boot_timeout", "backend", "cpus"):  # None: the default
        if kw.get(name) is not None:
            setattr(machine, name, kw[name])
    for name in ("scratch", "network"):  # absent: fakemachine_defaults' (on ``machine``)
        if name in kw:
            setattr(machine, name, kw[name])
    passenv = kw.get("passenv") or ()
    if isinstance(passenv, str):
        passenv = passenv.split()
    if not isinstance(passenv, (list, tuple)) or not all(isinstance(p, str) for p in passenv):
        raise ConfigError(f"passenv={passenv!r} from {source}: expected names or globs")
    machine.env.update(passenv_env(passenv))
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
