#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for pytest-fakemachine: the guest's
# parts from the distribution, the plugin and its test tools from PyPI.
# Run as root, or as a user with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# user-mode-linux: the guest kernel and its modules; busybox: the guest's init;
# libslirp-helper: network=True; fdisk, e2fsprogs, util-linux, kmod, iproute2:
# what the tests and examples run inside the guest.
packages="user-mode-linux busybox libslirp-helper fdisk e2fsprogs dosfstools util-linux kmod iproute2 udev"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends $missing
fi
python3 -m pip install -q -e ".[test]"
