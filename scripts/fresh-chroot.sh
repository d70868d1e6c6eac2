#!/usr/bin/env bash
# The new-user walk, repeatable: a fresh chroot of a release (debootstrap), an
# ordinary user with sudo, a clone of this repository's committed HEAD, and
# the README's commands run in it as that user, each printed with its exit
# code, time and summary line. The test suite runs --runs times (flaky tests
# are bugs). Run as root on a Debian host; the chroot's mounts live in a
# private mount namespace, and the chroot is removed afterwards (--keep keeps it).
#
#   scripts/fresh-chroot.sh [--runs N] [--keep] [--logs DIR] RELEASE...
#
# RELEASE: a Debian suite (bookworm, trixie, ...) or an Ubuntu one (jammy,
# noble, ...). Logs of every command go to --logs (default: a new directory
# under /var/tmp, printed at the end).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=3
keep=""
logs=""
ubuntu_suites=" jammy noble oracular plucky questing "

usage() { echo "usage: $0 [--runs N] [--keep] [--logs DIR] RELEASE..." >&2; exit 2; }

# --- inside the private mount namespace: mount, walk, clean up processes ---------
if [ "${1:-}" = "--inner" ]; then
    root=$2 release=$3 runs=$4 logs=$5
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o size=8g,mode=1777 tmpfs "$root/dev/shm"  # guest memory
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    in_chroot() { chroot "$root" runuser -l dev -c "cd ~/pytest-fakemachine && $1"; }
    # The README's commands, as a new user would copy them (comments dropped).
    mapfile -t commands < <(grep -E '^(\./scripts/setup\.sh|\.venv/bin/python -m pytest)' \
        "$root/home/dev/pytest-fakemachine/README.md" | sed 's/[[:space:]]*#.*//')
    status=0
    for command in "${commands[@]}"; do
        times=1
        case $command in *" -n "*) times=$runs ;; esac  # the suite
        for n in $(seq "$times"); do
            log="$logs/$release-$(tr -c 'a-zA-Z0-9\n' _ <<<"$command")-$n.log"
            start=$(date +%s)
            rc=0
            in_chroot "$command" </dev/null >"$log" 2>&1 || rc=$?
            seconds=$(($(date +%s) - start))
            summary=$(grep -E '[0-9]+ (passed|failed|errors?)\b|no tests ran' "$log" | tail -n 1 || true)
            [ -n "$summary" ] || summary=$(tail -n 1 "$log")
            printf '%-9s | %-40s | exit %3d | %4d s | %s\n' "$release" "$command" "$rc" \
                "$seconds" "$(sed 's/=//g; s/^ *//; s/ *$//' <<<"$summary")"
            [ "$rc" -eq 0 ] || status=1
        done
    done
    # Nothing of the walk may outlive it (a leaked guest would hold the mounts).
    for proc in /proc/[0-9]*; do
        [ "$(readlink "$proc/root" 2>/dev/null)" = "$root" ] && kill -9 "${proc#/proc/}" 2>/dev/null
    done
    exit "$status"
fi

while [ $# -gt 0 ]; do
    case $1 in
    --runs) runs=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --logs) logs=$2; shift 2 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || usage
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (debootstrap, chroot, mounts)" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
[ -n "$logs" ] || logs=$(mktemp -d /var/tmp/fresh-chroot-logs.XXXXXX)
mkdir -p "$logs"
cache=/var/cache/fresh-chroot  # downloaded packages, reused by the next walk
mkdir -p "$cache"

bootstrap() {  # RELEASE ROOT
    local release=$1 root=$2
    local args=(--variant=minbase --include=sudo,git,ca-certificates --cache-dir="$cache")
    if [[ $ubuntu_suites == *" $release "* ]]; then
        # Debian packages no Ubuntu keyring: without one, the release files
        # cannot be verified, and this throwaway chroot says so.
        local keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg
        if [ -f "$keyring" ]; then args+=(--keyring="$keyring"); else
            echo "fresh-chroot: no $keyring here: $release's release files are not verified" >&2
            args+=(--no-check-gpg)
        fi
        debootstrap "${args[@]}" --components=main,universe "$release" "$root" \
            http://archive.ubuntu.com/ubuntu /usr/share/debootstrap/scripts/gutsy
    else
        debootstrap "${args[@]}" "$release" "$root" http://deb.debian.org/debian
    fi
}

status=0
for release in "$@"; do
    root=$(mktemp -d "/var/tmp/fresh-chroot-$release.XXXXXX")
    chmod 755 "$root"  # it becomes the user's /: mktemp made it 0700
    start=$(date +%s)
    if ! bootstrap "$release" "$root" >"$logs/$release-debootstrap.log" 2>&1; then
        echo "$release: debootstrap failed; see $logs/$release-debootstrap.log" >&2
        status=1
        rm -rf --one-file-system "$root"
        continue
    fi
    echo "$release | debootstrap | $(($(date +%s) - start)) s"
    # The host's own certificate authorities (a TLS-inspecting proxy's, say):
    # any machine on this network has them, or it reaches no package index.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null
    fi
    echo "127.0.1.1 $(hostname)" >>"$root/etc/hosts"  # as the installer writes it; sudo asks
    chroot "$root" useradd --create-home --shell /bin/bash dev
    echo "dev ALL=(ALL) NOPASSWD: ALL" >"$root/etc/sudoers.d/dev"
    git clone --quiet "$repo" "$root/home/dev/pytest-fakemachine"
    chroot "$root" chown -R dev:dev /home/dev
    unshare --mount --propagation private "$0" --inner "$root" "$release" "$runs" "$logs" ||
        status=1
    # The mounts were the namespace's alone: nothing is mounted under $root here.
    if [ -n "$keep" ]; then echo "$release: kept $root"; else rm -rf --one-file-system "$root"; fi
done
echo "logs: $logs"
exit "$status"
