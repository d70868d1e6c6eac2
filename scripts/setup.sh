#!/usr/bin/env bash
# Set up a fresh Debian or Ubuntu machine for pytest-fakemachine: the guest's
# parts from the distribution (on Ubuntu, the UML kernel from Debian 12), then
# the plugin and its test tools from PyPI into .venv (Debian's own python3
# refuses pip installs outside a virtual environment: PEP 668).
# Run as root, or as a user with sudo. Then: .venv/bin/python -m pytest -n 2
#
#   scripts/setup.sh [--newer-kernel | --distribution-kernel | --keep-kernels]
#
# By default it also unpacks Debian 13's user-mode-linux (6.12) and testing's
# (7.2, with UML's faster seccomp mode) into
# ${XDG_DATA_HOME:-~/.local/share}/pytest-fakemachine/uml-VERSION, beside the
# distribution's, keeps those that keep every guest feature (testing's lacks
# legacy iptables today), measures the kernels here and records the fastest
# that keeps every feature in the cache directory: sessions boot it unless
# kernel= or --fakemachine-kernel says otherwise. Newer kernels need glibc >=
# 2.38: on an older host (Debian 12, Ubuntu 22.04) each gets its suite's own
# loader and libc.so.6 beside it (patchelf, installed for that).
#   --newer-kernel         keep every newer kernel, also one that lacks a feature
#   --distribution-kernel  only the distribution's: unpack none, remove those
#                          unpacked before, forget the recorded choice
#   --keep-kernels         download no kernel: those unpacked before (a CI
#                          cache) stay; measured only if no record matches them
set -euo pipefail
cd "$(dirname "$0")/.."
kernels=feature-complete  # or: all, distribution, kept
for arg in "$@"; do
    case $arg in
    --newer-kernel) kernels=all ;;
    --distribution-kernel) kernels=distribution ;;
    --keep-kernels) kernels=kept ;;
    *) echo "usage: $0 [--newer-kernel | --distribution-kernel | --keep-kernels]" >&2; exit 2 ;;
    esac
done
# sudo resets the environment: pass apt's setting through it.
sudo=(env DEBIAN_FRONTEND=noninteractive)
[ "$(id -u)" -eq 0 ] || sudo=(sudo env DEBIAN_FRONTEND=noninteractive)

# user-mode-linux: the guest kernel and its modules; busybox: the guest's init;
# libslirp-helper: network=True; the rest: what tests and examples run inside
# the guest (systemd, sfdisk, mkfs.ext4, losetup, modprobe, ip, udevadm).
required="user-mode-linux busybox libslirp-helper systemd fdisk e2fsprogs util-linux kmod iproute2 udev"
# Optional (nice to have): each test or example that needs one of these skips,
# naming the package, where it is missing. File systems for the file system
# example; storage, FUSE, sandbox, firewall and bus tools for the guest-fidelity
# tests and examples (docs/guest.md).
# Two unit tests read the initramfs back with cpio and bsdtar (libarchive-tools);
# procps: the guest-fidelity test of ps (a minimal Debian lacks it).
optional="dosfstools btrfs-progs xfsprogs cpio libarchive-tools procps lvm2 cryptsetup mdadm kpartx squashfs-tools fuse3 squashfuse bubblewrap iptables dbus"
# QEMU for the kvm and qemu backends (optional: where it is missing, only what
# needs those backends skips, naming it); its guests' kernel comes below.
case $(dpkg --print-architecture 2>/dev/null) in
arm64) optional="$optional qemu-system-arm" ;;
*) optional="$optional qemu-system-x86" ;;
esac
# The venv needs python3 with venv and ensurepip, which Debian splits into python3-venv.
if ! command -v python3 >/dev/null || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    required="$required python3 python3-venv"
fi
# Packages Ubuntu lacks (no user-mode-linux ever; no libslirp-helper in 24.04).
from_debian_ok="user-mode-linux libslirp-helper"

missing() {  # the packages not installed, on one line
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s ' "$p"
    done
}

has_candidate() {
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

retry() {  # for network steps only: the mirrors can be unreachable for a minute or two
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
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT

# Debian 12's builds (they need only libc6 >= 2.34 and libslirp0), through a
# private apt state; apt checks them against Debian's archive key before they
# are installed.
private_apt() {  # DIR ARGS...: apt-get (or $apt_cmd) with the sources and state in DIR
    local dir=$1
    shift
    "${apt_cmd:-apt-get}" -qq -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::lists=$dir/lists" -o "Dir::Cache=$dir/cache" \
        -o "APT::Sandbox::User=$(id -un)" "$@"
}

private_sources() {  # DIR KEYRING URL SUITE COMPONENTS...
    local dir=$1 keyring=$2
    shift 2
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs"
    echo "deb [signed-by=$keyring] $*" >"$dir/sources.list"
}

# Ubuntu 22.04's debian-archive-keyring (2021.1.1) predates the keys that sign
# Debian 12 today. Ubuntu 24.04's has them: take that package from Ubuntu's
# archive, checked by Ubuntu's own key, and use its keyring for this alone.
newer_debian_keyring() {
    private_sources "$tmp/ubuntu" /usr/share/keyrings/ubuntu-archive-keyring.gpg \
        http://archive.ubuntu.com/ubuntu noble main universe
    private_apt "$tmp/ubuntu" update &&
        (cd "$tmp/ubuntu/debs" && private_apt "$tmp/ubuntu" download debian-archive-keyring) &&
        dpkg-deb -x "$tmp"/ubuntu/debs/debian-archive-keyring_*.deb "$tmp/ubuntu/root"
}

# SUITE's package lists in DIR, checked against Debian's archive key: this
# machine's keyring, or where it predates the suite's keys (Ubuntu 22.04's and
# Debian 12's or 13's), Ubuntu 24.04's copy of it. Only network failures are
# retried: no retry mends a missing key.
suite_sources() {  # DIR SUITE [APT-GET OPTIONS...]
    local dir=$1 suite=$2 keyring=/usr/share/keyrings/debian-archive-keyring.gpg out attempt
    shift 2
    local newer="$tmp/ubuntu/root/usr/share/keyrings/debian-archive-keyring.gpg"
    [ -f "$newer" ] && keyring=$newer
    [ -f "$keyring" ] || apt_install debian-archive-keyring >&2
    for attempt in 1 2 3 4 5 6; do
        private_sources "$dir" "$keyring" http://deb.debian.org/debian "$suite" main
        out=$(private_apt "$dir" "$@" update 2>&1) && return 0
        if grep -q NO_PUBKEY <<<"$out"; then
            [ "$keyring" != "$newer" ] && [ -f /usr/share/keyrings/ubuntu-archive-keyring.gpg ] ||
                break
            echo "setup: this machine's debian-archive-keyring is too old for Debian" \
                "$suite's signatures; taking Ubuntu 24.04's" >&2
            [ -f "$newer" ] || retry 6 newer_debian_keyring >&2 || break
            keyring=$newer
            continue
        fi
        echo "setup: Debian $suite's package lists: failed (attempt $attempt of 6)" >&2
        [ "$attempt" -eq 6 ] || sleep $((attempt * 10))
    done
    echo "$out" >&2
    return 1
}

need=$(missing $required)  # "a b " or ""
want=$(missing $optional)
if [ -n "$need$want" ]; then
    if ! retry "$([ -n "$need" ] && echo 6 || echo 1)" "${sudo[@]}" apt-get update -qq; then
        [ -n "$need" ] && { echo "setup: apt-get update failed" >&2; exit 1; }
        echo "setup: apt-get update failed; optional packages not installed: $want" >&2
        want=""
    fi
fi
if [ -n "$need" ]; then
    debian=""
    for p in $from_debian_ok; do
        case " $need" in *" $p "*) has_candidate "$p" || debian="$debian $p" ;; esac
    done
    for p in $debian; do
        need=${need/$p /}
    done
    if [ -n "$debian" ]; then
        if [ -n "$(missing debian-archive-keyring)" ] && ! has_candidate debian-archive-keyring; then
            echo "setup:$debian and debian-archive-keyring are not in this machine's apt" \
                "sources; on Ubuntu, enable universe (add-apt-repository universe)" >&2
            exit 1
        fi
        need="$need debian-archive-keyring"  # installed or upgraded: it must know Debian 12's keys
    fi
    # Not retried: what fails here (a missing package, a conflict) fails again.
    apt_install $need
    if [ -n "$debian" ]; then
        echo "setup: not in this distribution's archive, taken from Debian 12:$debian" >&2
        tmp=$(mktemp -d)
        suite_sources "$tmp/debian" bookworm ||
            { echo "setup: Debian 12's package lists could not be read or checked" >&2; exit 1; }
        (cd "$tmp/debian/debs" && retry 6 private_apt "$tmp/debian" download $debian)
        apt_install "$tmp"/debian/debs/*.deb
    fi
fi
if [ -n "$want" ]; then
    apt_install $want || echo "setup: optional packages not installed: $want" >&2
fi
# The guest mounts the UML modules on the host's /usr/lib/modules, which a host
# with no kernel package (a container) lacks.
[ -d /usr/lib/modules ] || "${sudo[@]}" mkdir -p /usr/lib/modules
# A venv left without pip by an interrupted run is made again.
.venv/bin/python -m pip --version >/dev/null 2>&1 || python3 -m venv --clear .venv
.venv/bin/python -m pip install -q -e ".[test]"

# Newer Debian kernels, each unpacked (dpkg -x) from its suite with its modules:
# the modules sit beside it as its package lays them out (real directories: the
# guest reads them over hostfs, where a symlink to a host path leads nowhere),
# where the plugin looks first. trixie (Debian 13): 6.12, which keeps every guest
# feature; testing: 7.2, with UML's seccomp mode but no legacy iptables.
newer_suites="trixie testing"

unpack_kernel() {  # SUITE: prints the kernel's path; on a host with an older glibc, its own
    local suite=$1 dest deb version out
    [ -n "$tmp" ] || tmp=$(mktemp -d)
    # Signatures are checked; the Release file's freshness date is not: a
    # mirror that lags (or a snapshot) still serves a genuine, signed kernel.
    suite_sources "$tmp/$suite" "$suite" -o Acquire::Check-Valid-Until=false >&2 || return 1
    (cd "$tmp/$suite/debs" && retry 6 private_apt "$tmp/$suite" download user-mode-linux) >&2 ||
        return 1
    deb=$(echo "$tmp/$suite"/debs/user-mode-linux_*.deb)
    dest=${XDG_DATA_HOME:-$HOME/.local/share}/pytest-fakemachine
    mkdir -p "$dest"
    rm -rf "$dest/uml-new"
    dpkg-deb -x "$deb" "$dest/uml-new"
    # Named by its modules' version, which is its `--version`: where it lands
    # must be known before it can run (its own loader's path is written into it).
    version=$(ls "$dest/uml-new/usr/lib/uml/modules")
    case $version in
    "" | *[!0-9A-Za-z.+~_-]*)
        echo "setup: $suite's user-mode-linux has no single modules directory: '$version'" >&2
        rm -rf "$dest/uml-new"
        return 1
        ;;
    esac
    if [ -x /usr/bin/linux.uml ] && [ "$(/usr/bin/linux.uml --version 2>/dev/null)" = "$version" ]; then
        echo "setup: $suite's UML kernel ($version) is this host's own /usr/bin/linux.uml" >&2
        rm -rf "$dest/uml-new"
        return 0
    fi
    rm -rf "$dest/uml-$version"
    mv "$dest/uml-new" "$dest/uml-$version"
    if ! out=$("$dest/uml-$version/usr/bin/linux.uml" --version 2>&1); then
        # "version `GLIBC_2.38' not found": an older glibc, which its own mends.
        if ! grep -q "GLIBC_" <<<"$out" || ! own_libc "$suite" "$dest/uml-$version" >&2 ||
            ! out=$("$dest/uml-$version/usr/bin/linux.uml" --version 2>&1); then
            echo "setup: $suite's UML kernel does not run on this host: $out" >&2
            rm -rf "${dest:?}/uml-$version"
            return 1
        fi
    fi
    echo "$dest/uml-$version/usr/bin/linux.uml"
}

# The kernel is an ordinary dynamic executable: given its suite's loader and
# libc.so.6 (a private copy, not installed), it runs on an older host. Its
# loader is set in the file (patchelf) rather than run as `ld.so KERNEL`:
# UML re-executes itself through /proc/self/exe, which would then be the loader.
own_libc() {  # SUITE ROOT: ROOT/usr/lib/uml/libc/{ld-linux-x86-64.so.2,libc.so.6}
    local suite=$1 kernel=$2/usr/bin/linux.uml libdir=$2/usr/lib/uml/libc lib found
    echo "setup: $suite's UML kernel needs a newer glibc than this host's" \
        "($(ldd --version | head -n 1 | awk '{print $NF}')): giving it $suite's own loader" \
        "and libc.so.6, in $libdir"
    if ! command -v patchelf >/dev/null; then
        echo "setup: installing patchelf, to point the kernel at its own loader and libc"
        apt_install patchelf || { "${sudo[@]}" apt-get update -qq && apt_install patchelf; } ||
            return 1
    fi
    (cd "$tmp/$suite/debs" && retry 6 private_apt "$tmp/$suite" download libc6) || return 1
    rm -rf "$tmp/$suite/libc6"
    dpkg-deb -x "$(echo "$tmp/$suite"/debs/libc6_*.deb)" "$tmp/$suite/libc6"
    mkdir -p "$libdir"
    for lib in ld-linux-x86-64.so.2 $(patchelf --print-needed "$kernel"); do
        found=$(find "$tmp/$suite/libc6" -name "$lib" -type f | head -n 1)
        [ -n "$found" ] || { echo "setup: $lib is not in $suite's libc6"; return 1; }
        cp "$found" "$libdir/$lib"
    done
    patchelf --set-interpreter "$libdir/ld-linux-x86-64.so.2" --set-rpath "$libdir" "$kernel"
}

unpacked=()
if [ "$kernels" = all ] || [ "$kernels" = feature-complete ]; then
    # Made here, not in unpack_kernel: that runs in $(...), a subshell, whose
    # own $tmp the EXIT trap above never sees (a 60-70 MB directory left per suite).
    [ -n "$tmp" ] || tmp=$(mktemp -d)
    for suite in $newer_suites; do
        if kernel=$(unpack_kernel "$suite"); then
            [ -z "$kernel" ] || unpacked+=("$kernel")
        else
            echo "setup: no kernel from Debian $suite installed" >&2
        fi
    done
    [ ${#unpacked[@]} -gt 0 ] || echo "setup: no newer kernel installed; the distribution's is in place" >&2
elif [ "$kernels" = distribution ]; then
    rm -rf "${XDG_DATA_HOME:-$HOME/.local/share}"/pytest-fakemachine/uml-*
fi
# Which kernel sessions boot: measured here, recorded in the cache directory.
.venv/bin/python - "$kernels" "${unpacked[@]}" <<'PY'
import shutil
import sys
from pathlib import Path
from pytest_fakemachine._errors import FakeMachineError
from pytest_fakemachine.backend.uml.kernel import download_dir, installed_kernels, kernel_info
from pytest_fakemachine import Machine
from pytest_fakemachine.backend.uml.choice import (
    ROUNDS, cached_measure, forget, forget_choice, guest_cpu, offer, record_choice,
    recorded_choice)
mode = sys.argv[1]
for path in sys.argv[2:]:
    info = kernel_info(Path(path))
    print(f"setup: unpacked {info.path}: {info.summary()}")
    if not info.lacks(fidelity_only=True):
        continue
    root = info.path.parents[2]  # uml-VERSION/usr/bin/linux.uml
    if mode == "all" or root.parent != download_dir():
        print("setup: it lacks what some guest features need (above): to use it anyway, "
              f"--fakemachine-kernel={info.path} (or kernel=)")
    else:
        shutil.rmtree(root)
        print(f"setup: removed {root}: it lacks what some guest features need "
              "(--newer-kernel keeps it)")
installed = installed_kernels(shutil.which("linux.uml"))
kernels = []
for path in installed:
    try:
        kernels.append(kernel_info(path))
    except FakeMachineError as e:
        print(f"setup: {e}")
if mode == "distribution" or len(kernels) < 2:
    forget_choice()
    print(f"setup: sessions boot the distribution's UML kernel, {shutil.which('linux.uml')}")
    sys.exit(0)
chosen = recorded_choice(installed) if mode == "kept" else None
if chosen is None:
    print(f"setup: measuring the {len(kernels)} UML kernels here, {ROUNDS} guests each ...")
    forget()  # measured afresh, and kept: the doctor shows this measurement
    boot = lambda kernel, command: Machine("uml", kernel=kernel, timeout=120).run(command,
                                                                                  check=True)
    measured, _ = cached_measure(kernels, guest_cpu(boot))
    for m in measured:
        print(f"setup: {m.info.path}: {m.label()}: "
              + (f"{m.cpu:.2f} s of CPU per guest" if m.cpu is not None else f"failed: {m.error}"))
    best, faster = offer(measured)
    if best is None:
        forget_choice()
        print("setup: no kernel measured keeps every guest feature: sessions boot the "
              "distribution's")
        sys.exit(0)
    record_choice(best, measured, installed)
    if faster is not None:
        print(f"setup: faster still, for suites that need none of what it lacks: "
              f"{faster.info.path}")
    chosen = recorded_choice(installed)
if chosen is not None:
    print(f"setup: sessions boot {chosen.path} ({chosen.why}); kernel= or "
          "--fakemachine-kernel still choose another")
PY
# The QEMU guests' kernel: Debian's generic one (the cloud flavour has no 9p),
# downloaded and unpacked for this user with its modules, never installed (apt
# would run update-initramfs and could change the boot entry). Optional too.
qemu_kernel() {
    local arch version kver base dest sources=""
    arch=$(dpkg --print-architecture)
    version=$(apt-cache depends "linux-image-$arch" 2>/dev/null |
        awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$version" ]; then
        # Not in this machine's sources (Ubuntu names its kernels otherwise, and
        # its vmlinuz is root's alone): Debian 13's, through a private apt state.
        [ -n "$tmp" ] || tmp=$(mktemp -d)
        sources=$tmp/qemu-kernel-sources
        suite_sources "$sources" trixie -o Acquire::Check-Valid-Until=false || return 1
        version=$(apt_cmd=apt-cache private_apt "$sources" depends "linux-image-$arch" |
            awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    if [ -z "$version" ]; then
        echo "setup: no linux-image-$arch found (this machine's apt sources, Debian 13's): QEMU guests need kernel=" >&2
        return 1
    fi
    kver=${version#linux-image-}
    base=${XDG_DATA_HOME:-$HOME/.local/share}/pytest-fakemachine
    dest=$base/linux-$kver
    if [ -f "$dest/boot/vmlinuz-$kver" ] && [ -f "$dest/lib/modules/$kver/modules.dep" ]; then
        echo "setup: the QEMU guests' kernel is in place: $dest/boot/vmlinuz-$kver"
        return 0
    fi
    [ -n "$tmp" ] || tmp=$(mktemp -d)
    mkdir -p "$tmp/qemu-kernel" "$base"
    if [ -n "$sources" ]; then
        (cd "$tmp/qemu-kernel" && retry 6 private_apt "$sources" download "$version") || return 1
    else
        (cd "$tmp/qemu-kernel" && retry 6 apt-get download -qq -o "APT::Sandbox::User=$(id -un)" "$version") ||
            return 1
    fi
    rm -rf "$dest.new"
    dpkg-deb -x "$tmp/qemu-kernel/${version}"_*.deb "$dest.new"
    # A package that keeps its modules under usr/lib (Debian 13): depmod looks in lib.
    [ -d "$dest.new/lib/modules" ] || ln -s usr/lib "$dest.new/lib"
    # The package's postinst would run depmod; unpacked, it is ours to run.
    "$(command -v depmod || echo /usr/sbin/depmod)" -b "$dest.new" "$kver"
    rm -rf "$dest"
    mv "$dest.new" "$dest"
    for old in "$base"/linux-*; do  # older ones this script unpacked
        [ "$old" = "$dest" ] || rm -rf "$old"
    done
    echo "setup: the QEMU guests' kernel: $dest/boot/vmlinuz-$kver"
}
if command -v qemu-system-x86_64 >/dev/null || command -v qemu-system-aarch64 >/dev/null; then
    qemu_kernel || echo "setup: no kernel for QEMU guests: the kvm and qemu backends' tests skip" >&2
fi
echo "setup: done; run the tests with: .venv/bin/python -m pytest -n 2"
