"""What a guest imports when it loads the plugin: every module costs there
(page faults and lookups over the shared /usr under UML), so the host-side
machinery stays out until a host code path asks for it."""

from __future__ import annotations

import json
import subprocess
import sys

# Before the package took its folders, a guest loaded nine modules of it (the
# package, plugin, hooks, _settings, _config, _errors, _inguest, _dispatch,
# _transport); the host's hooks now live in runs/, which a guest never loads.
GUEST_LOADS = {
    "pytest_fakemachine",
    "pytest_fakemachine.plugin",
    "pytest_fakemachine.hooks",
    "pytest_fakemachine._settings",
    "pytest_fakemachine._config",
    "pytest_fakemachine._errors",
    "pytest_fakemachine._inguest",
}


def test_loading_the_plugin_imports_no_host_machinery() -> None:
    code = (
        "import json, sys, pytest_fakemachine.plugin, pytest_fakemachine; "
        "pytest_fakemachine.in_fakemachine(); print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    ours = {name for name in loaded if name.startswith("pytest_fakemachine")}
    assert ours == GUEST_LOADS
    assert "termios" not in loaded  # the terminal relay's
