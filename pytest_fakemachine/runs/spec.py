"""What the guest-side runner is told: its pytest arguments, plugins and
options, the host directories it needs mounted, and how to measure coverage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from types import ModuleType

import pytest

from ..guest import runner as _guest
from ..guest.protocol import CoverageSpec, Spec
from ..image.templates import GUEST_WORK

__all__ = ["coverage_settings", "guest_spec", "import_finder_paths", "python_mounts"]

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


def coverage_settings() -> CoverageSpec | None:
    """How the host session measures coverage (pytest-cov or ``coverage run``),
    for the guest to measure its code the same way; None if it does not."""
    module = sys.modules.get("coverage")  # never imported here for this
    current = getattr(getattr(module, "Coverage", None), "current", None)
    cov = current() if current is not None else None
    if cov is None:
        return None
    config = cov.config
    return {
        "data_file": os.path.abspath(config.data_file),
        "config_file": config.config_file or True,
        "source": config.source,
        "source_pkgs": config.source_pkgs or None,
        "include": config.run_include or None,
        "omit": config.run_omit or None,
        "branch": config.branch,
    }


def python_mounts(
    config: pytest.Config, also_writable: Iterable[str] = ()
) -> list[tuple[str, bool]]:
    """Host directories the guest needs to import the same code: (path, writable).

    The interpreter's prefixes and sys.path entries outside /usr read-only;
    the rootdir and the invocation directory writable. Nested paths collapse
    into the outermost one.
    """
    writable = {str(config.rootpath), str(config.invocation_params.dir), *also_writable}
    wanted = {p: True for p in writable}
    # The directory the package is in: pytest_fakemachine/guest/runner.py, three levels up.
    package_parent = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(_guest.__file__)))
    )
    for path in (package_parent, sys.prefix, sys.base_prefix, sys.exec_prefix,
                 os.path.dirname(os.path.realpath(sys.executable)), *sys.path,
                 *import_finder_paths()):  # fmt: skip
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


def import_finder_paths() -> list[str]:
    """Sources that editable installs reach through an import finder, not sys.path.

    setuptools' PEP 660 finders (a module-level ``MAPPING`` of package ->
    directory, ``NAMESPACES``), editables' ``RedirectingFinder`` (hatchling:
    ``_redirections``, module -> file), and setuptools' strict mode (a tree of
    links on sys.path to the sources).
    """
    paths: list[str] = []
    for finder in sys.meta_path:
        module = sys.modules.get(getattr(finder, "__module__", "") or "")
        mapping = getattr(module, "MAPPING", None)
        if isinstance(mapping, dict):
            paths += [str(p) for p in mapping.values()]
        namespaces = getattr(module, "NAMESPACES", None)
        if isinstance(namespaces, dict):
            paths += [str(p) for dirs in namespaces.values() for p in dirs]
        redirections = getattr(finder, "_redirections", None)
        if isinstance(redirections, dict):
            paths += [str(p) for p in redirections.values()]
    for entry in sys.path:
        if os.path.basename(entry).startswith("__editable__") and os.path.isdir(entry):
            for root, _, files in os.walk(entry):
                links = (os.path.join(root, f) for f in files)
                paths += [os.path.realpath(p) for p in links if os.path.islink(p)]
    # A package's directory, or the directory of a module's file.
    return [p if os.path.isdir(p) else os.path.dirname(p) for p in paths if os.path.isabs(p)]


def guest_spec(
    config: pytest.Config,
    items: list[pytest.Item],
    *,
    coverage: CoverageSpec | None = None,
    interactive: bool = False,
    one_attempt: bool = False,
    prior_attempts: dict[str, int] | None = None,
) -> Spec:
    """What the guest-side runner needs: its pytest args, options, node ids, and
    where its files go in the work directory. ``interactive``: the user's
    terminal reaches the guest's debugger (--pdb and --trace go there)."""
    args = _pytest_args(config)
    plugins = _plugin_modules(config, args)
    paths = list(dict.fromkeys(str(item.path) for item in items))
    options = {
        name: value
        for name, value in vars(config.option).items()
        if name not in HOST_ONLY_OPTIONS and not name.startswith("fakemachine") and _json_ok(value)
    }
    if interactive:
        option = config.option
        debug = (("--pdb", option.usepdb), ("--trace", option.trace))
        args[:0] = [flag for flag, wanted in debug if wanted]
    spec: Spec = {
        "args": args + paths,
        "plugins": plugins,
        "nodeids": [item.nodeid for item in items],
        "options": options,
        "sys_path": [p for p in sys.path if p],
        "invocation_dir": str(config.invocation_params.dir),
        "events": f"{GUEST_WORK}/events.jsonl",
        "markup": config.get_terminal_writer().hasmarkup,
        "one_attempt": one_attempt,
        "prior_attempts": prior_attempts or {},
        "coverage": coverage,
        "terminal_log": f"{GUEST_WORK}/terminal",
        "tmp_path_dir": f"{GUEST_WORK}/tmp_path",
        "tmp_path_policy": config.getini("tmp_path_retention_policy"),
    }
    if interactive:
        spec["debugger"] = True
    return spec


def _pytest_args(config: pytest.Config) -> list[str]:
    """The guest pytest's arguments that repeat the host session's."""
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
    return args


def _plugin_modules(config: pytest.Config, args: list[str]) -> list[str]:
    """The modules of the host's plugins, for the guest to register; their
    ``-p no:NAME`` go into ``args``."""
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
    return list(dict.fromkeys(modules.values()))


def _json_ok(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
