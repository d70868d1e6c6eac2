#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for pytest-fakemachine: the guest's
# parts from the distribution (on Ubuntu, the UML kernel from Debian); the plugin and its test tools from PyPI, into
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
# Nice to have: the file system example skips a file system whose mkfs is missing.
optional="dosfstools btrfs-progs xfsprogs"
# The venv needs python3 with venv and ensurepip, which Debian splits into python3-venv.
if ! command -v python3 >/dev/null || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    required="$required python3 python3-venv"
fi

missing() {  # the packages not installed, on one line
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s ' "$p"
    done
}

retry() {  # the mirrors can be unreachable for a minute or two: keep trying
    attempts=$1
    shift
    for attempt in $(seq "$attempts"); do
        "$@" && return 0
        [ "$attempt" -eq "$attempts" ] && break
        echo "setup: '$*' failed (attempt $attempt of $attempts), retrying" >&2
        sleep $((attempt * 10))
    done
    return 1
}

apt_install() {
    $sudo apt-get install -y -qq --no-install-recommends "$@"
}

has_candidate() {
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

# Ubuntu packages no user-mode-linux, and 24.04 no libslirp-helper. Debian's
# builds need only libc6 (>= 2.34) and libslirp0: download them from Debian 12,
# which apt checks against Debian's archive key, through a private apt state.
from_debian() {
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
        "http://deb.debian.org/debian bookworm main" >"$tmp/sources.list"
    opts=(-qq -o "Dir::Etc::sourcelist=$tmp/sources.list" -o Dir::Etc::sourceparts=-
          -o "Dir::State::lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
          -o "APT::Sandbox::User=$(id -un)")
    if apt-get "${opts[@]}" update && (cd "$tmp" && apt-get "${opts[@]}" download "$@"); then
        apt_install "$tmp"/*.deb
        status=$?
    else
        status=1
    fi
    rm -rf "$tmp"
    return $status
}

need=$(missing $required)
want=$(missing $optional)
if [ -n "$need$want" ]; then
    retry "$([ -n "$need" ] && echo 6 || echo 1)" $sudo apt-get update -qq
fi
if [ -n "$need" ]; then
    debian=""
    for p in user-mode-linux libslirp-helper; do
        case " $need " in
        *" $p "*) has_candidate "$p" || debian="$debian $p" ;;
        esac
    done
    for p in $debian; do
        need=$(echo " $need " | sed "s/ $p / /")
    done
    [ -z "$debian" ] || need="$need $(missing debian-archive-keyring)"
    retry 6 apt_install $need
    if [ -n "$debian" ]; then
        echo "setup: not in this distribution's archive, taken from Debian 12:$debian" >&2
        retry 6 from_debian $debian
    fi
fi
if [ -n "$want" ]; then
    apt_install $want || echo "setup: optional packages not installed: $want" >&2
fi
# The guest mounts the UML modules on the host's /usr/lib/modules, which a host
# with no kernel package (a container) lacks.
[ -d /usr/lib/modules ] || $sudo mkdir -p /usr/lib/modules
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done; run the tests with: .venv/bin/python -m pytest -n 2"
