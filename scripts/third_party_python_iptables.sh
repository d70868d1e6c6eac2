#!/usr/bin/env bash
# Run a real third-party test suite that needs root, python-iptables (ldx/python-iptables,
# bindings for the legacy iptables through ctypes), twice, unmodified:
#   1. through pytest-fakemachine: every test in one shared guest (--fakemachine-all with
#      fakemachine_scope=session), pytest running as whoever runs this script;
#   2. as root on the host, inside `unshare -mn --propagation private`: a network
#      namespace of its own, so its firewall rules never touch the host's.
# Usage: scripts/third_party_python_iptables.sh SOURCE
#   SOURCE: a python-iptables source tree or sdist, e.g. from
#   `pip download --no-deps --no-binary :all: python-iptables` or a git clone.
# Needs gcc and the iptables package (libxtables, libip4tc) on the host; the host run needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
source=${1:?usage: $0 PYTHON_IPTABLES_SOURCE_DIR_OR_SDIST}
work=$(mktemp -d "${TMPDIR:-/tmp}/fm-third-party.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir "$work/src"
if [ -d "$source" ]; then
    cp -a "$source/." "$work/src/"
else
    tar -xzf "$source" -C "$work/src" --strip-components=1
fi
python3 -m venv "$work/venv"
# Not editable: the guest imports what the venv holds.
"$work/venv/bin/pip" install -q "$here" "$work/src" pytest
cd "$work/src"
pytest=("$work/venv/bin/python" -m pytest -p no:cacheprovider -q -rfE tests)

echo "== in fakemachine guests (pytest as $(id -un))"
guest_status=0
"${pytest[@]}" --fakemachine-all -o fakemachine_scope=session --fakemachine-backend=uml \
    || guest_status=$?

echo "== as root on the host, in a network namespace of its own"
host_status=0
if [ "$(id -u)" -eq 0 ]; then
    unshare -mn --propagation private "${pytest[@]}" || host_status=$?
else
    sudo unshare -mn --propagation private "${pytest[@]}" || host_status=$?
fi
echo "exit status: guest $guest_status, host $host_status"
