#!/usr/bin/env bash
# Recipe of `bench.py third-party btrfsutil SOURCE`: libbtrfsutil's Python tests
# (btrfs-progs' libbtrfsutil/python/tests: every test makes a btrfs file system in a
# sparse image, loop-mounts it and works on subvolumes, snapshots and qgroups through
# Debian's python3-btrfsutil), unmodified.
#   SOURCE: btrfs-progs as a git repository, a source tree or a release tarball. From
#   a repository the tests are taken at the tag of the host's python3-btrfsutil (v6.2
#   on Debian 12), so they match the bindings; BTRFS_PROGS_REF=REF overrides.
# Needs python3-btrfsutil and btrfs-progs (mkfs.btrfs) on the host.
# Contract: see python-iptables.sh.
set -euo pipefail
source=${1:?usage: $0 SOURCE WORK}
work=${2:?usage: $0 SOURCE WORK}
if ! /usr/bin/python3 -c 'import btrfsutil' 2>/dev/null || ! command -v mkfs.btrfs >/dev/null; then
    echo "$0: needs the bindings and mkfs.btrfs: apt-get install python3-btrfsutil btrfs-progs" >&2
    exit 2
fi
mkdir -p "$work/src"
# Like /tmp: the tests' unprivileged checks (seteuid nobody) walk into their mount points.
chmod 0755 "$work"
debian_version=$(dpkg-query -W -f '${Version}' python3-btrfsutil)
ref=${BTRFS_PROGS_REF:-v${debian_version%%-*}}
if [ -d "$source" ] && git -C "$source" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$source" archive "$ref:libbtrfsutil/python" tests | tar -x -C "$work/src"
elif [ -d "$source/libbtrfsutil/python/tests" ]; then
    cp -a "$source/libbtrfsutil/python/tests" "$work/src/"
else
    mkdir "$work/tarball"
    tar -xf "$source" -C "$work/tarball" --strip-components=1
    cp -a "$work/tarball/libbtrfsutil/python/tests" "$work/src/"
fi
# The bindings are Debian's, built for the system Python: a venv that sees them.
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/pip" install -q "${FMBENCH_PLUGIN:?}" pytest
printf '%s\n' -rfEs tests >"$work/pytest-args"
