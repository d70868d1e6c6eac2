"""What a guest imports when it loads the plugin: every module costs there
(page faults and hostfs lookups under UML), so the host-side machinery stays
out until a host code path asks for it."""

from __future__ import annotations

import json
import subprocess
import sys

HOST_ONLY = (
    "pytest_fakemachine.runs.ahead",
    "pytest_fakemachine.cli.doctor",
    "pytest_fakemachine.image.initramfs",
    "pytest_fakemachine.backend.uml.kernel",
    "pytest_fakemachine._machine",
    "pytest_fakemachine.runs.run",
    "pytest_fakemachine._session",
    "pytest_fakemachine.runs.shell",
    "pytest_fakemachine.cli.streams",
    "pytest_fakemachine._terminal",
    "pytest_fakemachine.backend.uml.process",
    "termios",
)


def test_loading_the_plugin_imports_no_host_machinery() -> None:
    code = (
        "import json, sys, pytest_fakemachine.plugin, pytest_fakemachine; "
        "pytest_fakemachine.in_fakemachine(); print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert [name for name in HOST_ONLY if name in loaded] == []
    assert "pytest_fakemachine.plugin" in loaded
