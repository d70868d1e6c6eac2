#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for pytest-fakemachine: the guest's
# parts from the distribution; the plugin and its test tools from PyPI, into
# .venv (Debian's own python3 refuses pip installs: PEP 668).
# Run as root, or as a user with sudo. Run the tests with .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

# user-mode-linux: the guest kernel and its modules; busybox: the guest's init;
# libslirp-helper: network=True; the rest: what tests and examples run inside
# the guest (systemd, sfdisk, mkfs.ext4, losetup, modprobe, ip, udevadm).
required="user-mode-linux busybox libslirp-helper systemd fdisk e2fsprogs util-linux kmod iproute2 udev"
# Nice to have: the vfat example uses mkfs.vfat when it is there.
optional="dosfstools"
# The venv needs python3 with venv and ensurepip, which Debian splits into python3-venv.
if ! command -v python3 >/dev/null || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    required="$required python3 python3-venv"
fi

missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

apt_install() {  # the mirrors can be unreachable for a minute or two: keep trying
    attempts=$1
    shift
    for attempt in $(seq "$attempts"); do
        if $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$@"; then
            return 0
        fi
        [ "$attempt" -eq "$attempts" ] && break
        echo "setup: apt-get failed (attempt $attempt of $attempts), retrying" >&2
        sleep $((attempt * 10))
    done
    return 1
}

need=$(missing $required)
if [ -n "$need" ]; then
    apt_install 6 $need
fi
want=$(missing $optional)
if [ -n "$want" ]; then
    apt_install 1 $want || echo "setup: optional packages not installed: $want" >&2
fi
# The guest mounts the UML modules on the host's /usr/lib/modules, which a host
# with no kernel package (a container) lacks.
[ -d /usr/lib/modules ] || $sudo mkdir -p /usr/lib/modules
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done; run the tests with: .venv/bin/python -m pytest -n 2"
