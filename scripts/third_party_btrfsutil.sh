#!/usr/bin/env bash
# Run a real third-party test suite that needs root, libbtrfsutil's Python tests
# (btrfs-progs' libbtrfsutil/python/tests: every test makes a btrfs file system in a
# sparse 4 GiB image, loop-mounts it and works on subvolumes, snapshots and qgroups through
# Debian's python3-btrfsutil), twice, unmodified:
#   1. through pytest-fakemachine: every test in one shared guest (--fakemachine-all with
#      fakemachine_scope=session), pytest running as whoever runs this script;
#   2. as root on the host, inside `unshare -mn --propagation private`: its loop mounts
#      live in a mount namespace of their own (they vanish with it, also if a test dies
#      half-way; the loop devices autoclear then), and its images in this script's temp dir.
# Usage: scripts/third_party_btrfsutil.sh SOURCE [PYTEST_ARGS...]
#   SOURCE: btrfs-progs as a git repository (a clone, or the search tool's
#   `fetch github:kdave/btrfs-progs` mirror), a source tree or a release tarball.
#   From a repository the tests are taken at the tag of the host's python3-btrfsutil
#   (v6.2 on Debian 12), so the tests match the bindings; BTRFS_PROGS_REF=REF overrides.
#   PYTEST_ARGS go to both runs (e.g. -v, or -k NAME).
# Needs python3-btrfsutil and btrfs-progs (mkfs.btrfs) on the host; the host run needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
source=${1:?usage: $0 BTRFS_PROGS_REPO_TREE_OR_TARBALL [PYTEST_ARGS...]}
shift
if ! /usr/bin/python3 -c 'import btrfsutil' 2>/dev/null || ! command -v mkfs.btrfs >/dev/null; then
    echo "$0: needs the bindings and mkfs.btrfs: apt-get install python3-btrfsutil btrfs-progs" >&2
    exit 2
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/fm-third-party.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" "$work/tmp"
# Like /tmp: the tests' unprivileged checks (seteuid nobody) walk into their mount points.
chmod 0755 "$work"
chmod 1777 "$work/tmp"

# Debian's version 6.2-1+deb12u2 is upstream's tag v6.2.
debian_version=$(dpkg-query -W -f '${Version}' python3-btrfsutil)
ref=${BTRFS_PROGS_REF:-v${debian_version%%-*}}
if [ -d "$source" ] && git -C "$source" rev-parse --git-dir >/dev/null 2>&1; then
    echo "== btrfs-progs $ref ($(git -C "$source" rev-parse "$ref^{commit}")), python3-btrfsutil $debian_version"
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
# Not editable: the guest imports what the venv holds.
"$work/venv/bin/pip" install -q "$here" pytest
cd "$work/src"
pytest=("$work/venv/bin/python" -m pytest -p no:cacheprovider -q -rfEs "$@" tests)

echo "== in fakemachine guests (pytest as $(id -un))"
guest_status=0
start=$(date +%s)
"${pytest[@]}" --fakemachine-all -o fakemachine_scope=session --fakemachine-backend=uml \
    || guest_status=$?
guest_seconds=$(($(date +%s) - start))

echo "== as root on the host, in a mount and network namespace of its own"
# The images go to this script's temp dir, not the host's /tmp (the guest's /tmp is its own).
host=(env TMPDIR="$work/tmp" unshare -mn --propagation private "${pytest[@]}")
[ "$(id -u)" -eq 0 ] || host=(sudo "${host[@]}")
host_status=0
start=$(date +%s)
"${host[@]}" || host_status=$?
host_seconds=$(($(date +%s) - start))
echo "exit status: guest $guest_status (${guest_seconds} s), host $host_status (${host_seconds} s)"
