#!/usr/bin/env bash
# Recipe of `bench.py third-party python-iptables SOURCE`: python-iptables
# (ldx/python-iptables, ctypes bindings of libiptc; 85 tests that build and
# commit firewall tables), unmodified.
#   SOURCE: a source tree or an sdist (`pip download --no-deps --no-binary :all:
#   python-iptables`, or a git clone).
# Needs gcc and the iptables package (libxtables, libip4tc) on the host.
# Contract (every recipe): called as RECIPE SOURCE WORK with FMBENCH_PLUGIN=the
# plugin's source tree; leaves WORK/venv (the suite's package, pytest and the
# plugin, not editable: the guest imports what the venv holds), WORK/src (the
# directory pytest runs in) and WORK/pytest-args (its arguments, one a line).
set -euo pipefail
source=${1:?usage: $0 SOURCE WORK}
work=${2:?usage: $0 SOURCE WORK}
mkdir -p "$work/src"
if [ -d "$source" ]; then
    cp -a "$source/." "$work/src/"
else
    tar -xzf "$source" -C "$work/src" --strip-components=1
fi
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "${FMBENCH_PLUGIN:?}" "$work/src" pytest
printf '%s\n' -rfE tests >"$work/pytest-args"
