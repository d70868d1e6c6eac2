"""What the guest's system is made of: its /etc, its directory tree, device nodes, udev rules.

The guest's ``/etc`` is a copy of the host's, taken into the cached initramfs
(so it lives on the guest's tmpfs root: writable there, never written back):
users, groups, ``ld.so.cache``, ``nsswitch.conf``, ``pam.d``, ``login.defs``...
are the host's, so ``su``, ``useradd`` and ``ctypes.util.find_library`` behave
as on the host. Secrets never leave the host, also when pytest runs as root:
:func:`denied` names what is never copied, and nothing that is not
world-readable is. What the guest needs instead (shadow files with every
account locked, its own fstab, hosts, hostname) is generated here.

Measured on a Debian 12 host: the host's /etc is ~1,300 entries, 3 MiB; copying
it into the initramfs costs ~10 ms of host time per cache check (lstat of each
entry) and ~40 ms of guest boot (unpacking), and replaces four mounts of host
/etc subdirectories that cost about as much.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
import subprocess
from collections.abc import Iterator

from . import templates as t
from .units import bus_units

__all__ = [
    "BOOT_SOCKETS",
    "FHS_DIRS",
    "FHS_LINKS",
    "HOST_ETC",
    "MASKED_UNITS",
    "SOCKETS_LEFT_OUT",
    "SOCKETS_WANTS",
    "STATIC_NODES",
    "SYSINIT_LEFT_OUT",
    "SYSINIT_WANTS",
    "UNIT_DROPINS",
    "boot_tmpfs_mounts",
    "denied",
    "etc_entries",
    "generated_etc",
    "guest_alternatives",
    "procps_needs_core_id",
    "udev_rules_to_mask",
]

HOST_ETC = "/etc"
# Relative to /etc. Never copied, whatever their mode: password hashes and
# their backups (``*-``: passwd-, shadow-...), host keys, sudo rules, keytabs,
# TLS private keys. The files generated for the guest replace the host's too.
_DENIED = (
    "shadow", "gshadow", "*-", "ssh/ssh_host_*", "sudoers", "sudoers.d", "sudoers.d/*",
    "*.keytab", "ssl/private", "ssl/private/*", "security/opasswd", ".pwd.lock",
)  # fmt: skip
# Generated for the guest (see generated_etc) or linked to the run's files.
_REPLACED = (
    "passwd", "group", "fstab", "hostname", "hosts", "machine-id", "resolv.conf", "mtab",
    "shadow", "gshadow",
    "systemd/system/" + t.UNIT_NAME, "systemd/system/mount.d", "systemd/system/mount.d/*",
    "udev/rules.d/99-fakemachine.rules",
    # The host's enablement (its lvm2-monitor, dm-event.socket...): units
    # loaded through these would load ~100 more at every boot (see BOOT_SOCKETS).
    "systemd/system/sysinit.target.wants", "systemd/system/sysinit.target.wants/*",
    "systemd/system/sockets.target.wants", "systemd/system/sockets.target.wants/*",
)  # fmt: skip

# A booted Debian's tree (FHS); the initramfs makes what the host's /usr lacks.
FHS_DIRS = (
    "home", "srv", "opt", "media", "mnt", "run/lock", "var/lib", "var/log", "var/cache",
    "var/spool", "var/mail", "var/local", "var/opt", "var/backups",
)  # fmt: skip
FHS_LINKS = (("var/run", "../run"), ("var/lock", "../run/lock"))

# Static device nodes (as `kmod static-nodes` + systemd-tmpfiles make them at
# boot): opening one loads its module, so `losetup -f`, FUSE and tun work
# without a modprobe. (name, major, minor, mode, group). Made by one busybox
# cpio in the guest's init (~25 ms; systemd-tmpfiles would take 130 ms).
STATIC_NODES = (
    ("fuse", 10, 229, 0o666, 0),
    ("loop-control", 10, 237, 0o660, 6),
    ("net/tun", 10, 200, 0o666, 0),
    ("mapper/control", 10, 236, 0o600, 0),
    ("btrfs-control", 10, 234, 0o660, 6),
    ("cuse", 10, 203, 0o600, 0),
    ("uinput", 10, 223, 0o600, 0),
    ("uhid", 10, 239, 0o600, 0),
    ("vhost-net", 10, 238, 0o600, 0),
    ("ppp", 108, 0, 0o660, 0),
)

# Host udev rules the guest masks: hardware it has not (input, sound, video,
# seats, network naming, firmware). The rest stay active, so device-mapper,
# LVM, md, loop and the /dev/disk/by-* links work as on the host. Loading all
# ~45 rules costs udevd ~0.25 s; these are more than half of it.
_UDEV_MASKED = (
    "50-firmware.rules", "60-autosuspend.rules", "60-cdrom_id.rules", "60-drm.rules",
    "60-evdev.rules", "60-fido-id.rules", "60-infiniband.rules", "60-input-id.rules",
    "60-persistent-alsa.rules", "60-persistent-input.rules", "60-persistent-storage-tape.rules",
    "60-persistent-v4l.rules", "60-sensor.rules", "60-serial.rules", "70-camera.rules",
    "70-joystick.rules", "70-memory.rules", "70-mouse.rules", "70-power-switch.rules",
    "70-touchpad.rules", "70-uaccess.rules", "71-seat.rules", "73-seat-late.rules",
    "73-special-net-names.rules", "75-net-description.rules", "75-probe_mtd.rules",
    "78-sound-card.rules", "80-net-setup-link.rules", "81-net-dhcp.rules", "85-hwclock.rules",
)  # fmt: skip

# Debian's UML kernels have no nf_tables for ip/ip6/inet: in the guest the
# iptables alternatives point at the legacy backend (the host's stay as they are).
_LEGACY_ALTERNATIVES = tuple(
    (f"{tool}{suffix}", f"/usr/sbin/{tool}-legacy{suffix}")
    for tool in ("iptables", "ip6tables")
    for suffix in ("", "-save", "-restore")
)


# Sockets listening from boot, as on a booted system: the system bus,
# journald (/dev/log) and udevd start on first use. Loading them loads every
# unit they name, and so on: ~140 units over hostfs at every boot at first.
# The host's enablement left out and MASKED_UNITS keep that to ~40.
BOOT_SOCKETS = (
    "dbus.socket", "systemd-journald.socket", "systemd-journald-dev-log.socket",
    "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
)  # fmt: skip
# sysinit.target's wants that the guest leaves out: a unit with default
# dependencies (a test's own, `systemd-run`'s) pulls in sysinit.target on its
# first start, which with all of them took 3.8 s. Each is masked as a
# dependency only (a /dev/null link in /etc/systemd/system/sysinit.target.wants,
# systemd >= 233), not as a unit: `systemctl start` of any of them still works.
# Left out: what the initramfs has done (device nodes, users, /etc, the tree),
# what a throw-away guest needs not (coldplug, random seed, utmp, firstboot...),
# journald and udevd (socket-activated: they start when used), and kernel file
# systems Debian's UML kernel lacks (hugetlbfs, debugfs, tracefs) or has as
# modules whose load costs ~0.2 s each (configfs, fusectl).
SYSINIT_LEFT_OUT = (
    "systemd-udev-trigger.service", "systemd-udevd.service", "systemd-journald.service",
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
    "kmod-static-nodes.service", "systemd-sysusers.service", "systemd-firstboot.service",
    "systemd-machine-id-commit.service", "systemd-repart.service",
    "systemd-pcrphase-sysinit.service", "systemd-pcrphase.service",
    "systemd-random-seed.service", "systemd-journal-flush.service",
    "systemd-update-utmp.service", "systemd-binfmt.service", "systemd-modules-load.service",
    "systemd-sysctl.service", "systemd-ask-password-console.path",
    "proc-sys-fs-binfmt_misc.automount", "dev-hugepages.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-kernel-config.mount", "sys-fs-fuse-connections.mount",
    # systemd 257 (Debian 13) adds these; through them (basic.target, timers,
    # local-fs.target, TPM units...) its guest loaded ~115 units at boot.
    "ldconfig.service", "systemd-hibernate-clear.service",
    "systemd-journal-catalog-update.service", "systemd-pcrmachine.service",
    "systemd-tmpfiles-setup-dev-early.service", "systemd-tpm2-setup-early.service",
    "systemd-tpm2-setup.service",
)  # fmt: skip
SYSINIT_WANTS = "etc/systemd/system/sysinit.target.wants"
# The same for sockets.target (loaded by the boot sockets' Before=): systemd
# 257's varlink sockets, each After= local-fs.target, tpm2.target...
SOCKETS_LEFT_OUT = (
    "systemd-creds.socket", "systemd-hostnamed.socket", "systemd-pcrextend.socket",
    "systemd-pcrlock.socket", "systemd-sysext.socket",
)  # fmt: skip
SOCKETS_WANTS = "etc/systemd/system/sockets.target.wants"
# Mount units of tmpfs that a booted Debian 13 has from boot (systemd's
# local-fs.target wants them there; Debian 12 ships tmp.mount unused).
BOOT_TMPFS_UNITS = ("tmp.mount", "run-lock.mount")
_UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")

# Masked units, which a guest never runs and whose dependencies chain to
# nearly every unit of the host: the initrd's switch-root (early units such as
# sysusers conflict with it, and it wants emergency mode and initrd.target,
# which requires basic.target, timers...), syslog.socket (for a syslog daemon;
# journald names it; it conflicts with emergency.service), and remounting the
# root, a tmpfs here. With them, the boot sockets loaded ~125 units over hostfs
# at every boot (0.2-0.5 s); without, ~35.
MASKED_UNITS = (
    "initrd.target", "initrd-switch-root.target", "initrd-switch-root.service",
    "initrd-cleanup.service", "initrd-parse-etc.service", "initrd-udevadm-cleanup-db.service",
    "syslog.socket", "systemd-remount-fs.service",
    # systemd 257's journald names it (Before=); it requires final.target, umount.target.
    "systemd-soft-reboot.service",
    # The tmpfs that Debian 13 mounts on /tmp and /run/lock at boot: the run's
    # fstab mounts them (boot_tmpfs_mounts). Started later, by the first unit
    # with default dependencies (systemd-run's: sysinit.target, local-fs.target)
    # or with PrivateTmp= (RequiresMountsFor=/tmp), they mounted an empty tmpfs
    # over what the test had made there, its tmp_path included.
    *BOOT_TMPFS_UNITS,
)  # fmt: skip
_NO_DEFAULT_DEPENDENCIES = "# Generated by pytest-fakemachine.\n[Unit]\nDefaultDependencies=no\n"
# The bus starts in ~0.5 s on first use, without pulling in sysinit.target: the
# guest's own copies of its units (image.units, which also drop the explicit
# dependencies some distributions add), and these for a host whose are elsewhere.
UNIT_DROPINS = {
    "dbus.socket.d/fakemachine.conf": _NO_DEFAULT_DEPENDENCIES,
    "dbus.service.d/fakemachine.conf": _NO_DEFAULT_DEPENDENCIES,
}


@functools.lru_cache(maxsize=1)
def procps_needs_core_id() -> bool:
    """Whether the host's ps fails on UML's /proc/cpuinfo, which has no "core id".

    procps 4.0.0-4.0.2 (Debian 12's) then fail with "Unable to get system boot
    time"; later versions tolerate it, and 3.x never looked. The guest then
    gets a copy with that line bound over /proc/cpuinfo, at a price: a new
    proc cannot be mounted in a user namespace (`unshare -r --mount-proc`,
    rootless podman, bwrap --unshare-user) while a file of /proc is covered.
    """
    try:
        out = subprocess.run(
            ["ps", "--version"], capture_output=True, text=True, check=False,
            stdin=subprocess.DEVNULL,
        ).stdout  # fmt: skip
    except OSError:
        return False
    found = re.search(r"procps-ng (\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        return False
    version = tuple(int(n) for n in found.groups())
    return (4, 0, 0) <= version < (4, 0, 3)


# One expression: /etc is walked at every boot (the cache key), 1,300 entries.
# The units masked in the guest replace the host's own (e.g. a tmp.mount in /etc).
_MASKED = tuple(f"systemd/system/{name}" for name in MASKED_UNITS)
_DENIED_RE = re.compile("|".join(fnmatch.translate(p) for p in _DENIED + _REPLACED + _MASKED))


def denied(relpath: str) -> bool:
    """Whether ``relpath`` (under /etc) must never reach the guest."""
    return _DENIED_RE.match(relpath) is not None


def etc_entries(root: str = HOST_ETC) -> Iterator[tuple[str, os.stat_result]]:
    """The host paths under ``root`` the guest gets, with their lstat, sorted.

    Regular files and symlinks only; never a denied path, nor a file or
    directory that others may not read (a directory also needs x). Walked
    with scandir and plain string paths: it runs at every boot (the cache key).
    """
    yield from _walk(root, "")


def _walk(directory: str, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        rel = prefix + entry.name
        if denied(rel):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if mode & 0o005 == 0o005:
                yield from _walk(entry.path, rel + "/")
        elif stat.S_ISLNK(mode) or (stat.S_ISREG(mode) and mode & 0o004):
            yield entry.path, st


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _shadow(passwd: str) -> str:
    # "!*": locked, no password (root too): su/runuser from root need none.
    names = [line.split(":", 1)[0] for line in passwd.splitlines() if ":" in line]
    return "".join(f"{name}:!*:::::::\n" for name in names)


def _gshadow(group: str) -> str:
    lines = []
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) >= 4:
            lines.append(f"{fields[0]}:!::{fields[3]}\n")
    return "".join(lines)


def generated_etc(usr_line: str, root: str = HOST_ETC) -> dict[str, tuple[bytes, int]]:
    """The guest's /etc files made here: archive path -> (content, mode). ``usr_line``:
    the fstab line that mounts the host's /usr (the backend's way)."""
    passwd = _read(os.path.join(root, "passwd")) or t.PASSWD
    group = _read(os.path.join(root, "group")) or t.GROUP
    return {
        "etc/passwd": (passwd.encode(), 0o644),
        "etc/group": (group.encode(), 0o644),
        "etc/shadow": (_shadow(passwd).encode(), 0o600),
        "etc/gshadow": (_gshadow(group).encode(), 0o600),
        "etc/hosts": (t.HOSTS.encode(), 0o644),
        "etc/hostname": (t.HOSTNAME.encode(), 0o644),
        "etc/machine-id": (b"", 0o644),
        "etc/fstab": (t.FSTAB.format(usr=usr_line).encode(), 0o644),
        "etc/resolv.conf": (b"", 0o644),
        **{f"etc/systemd/system/{name}": (text.encode(), 0o644)
           for name, text in {**UNIT_DROPINS, **bus_units()}.items()},
    }  # fmt: skip


def guest_alternatives(usr_sbin: str = "/usr/sbin") -> list[tuple[str, str]]:
    """Links of the guest's /etc/alternatives that differ from the host's."""
    return [
        (f"etc/alternatives/{name}", target)
        for name, target in _LEGACY_ALTERNATIVES
        if os.path.exists(os.path.join(usr_sbin, os.path.basename(target)))
    ]


@functools.lru_cache(maxsize=1)
def boot_tmpfs_mounts(root: str = "/") -> tuple[tuple[str, str], ...]:
    """The tmpfs mounts the host's systemd makes at boot (of BOOT_TMPFS_UNITS):
    (mount point, options), from each unit that local-fs.target wants and that
    is not masked, as its [Mount] section says."""
    mounts = []
    dirs = [os.path.join(root, d.lstrip("/")) for d in _UNIT_DIRS]
    for name in BOOT_TMPFS_UNITS:
        unit = next((os.path.join(d, name) for d in dirs
                     if os.path.lexists(os.path.join(d, name))), None)  # fmt: skip
        # The first directory that has the link decides: /etc's /dev/null masks /usr's.
        links = [os.path.join(d, "local-fs.target.wants", name) for d in dirs]
        link = next((path for path in links if os.path.lexists(path)), None)
        wanted = link is not None and os.path.realpath(link) != "/dev/null"
        if unit is None or os.path.realpath(unit) == "/dev/null" or not wanted:
            continue
        fields = _mount_section(_read(unit))
        where, options = fields.get("Where", ""), fields.get("Options", "")
        if (
            fields.get("Type") == "tmpfs"
            and where.startswith("/")
            and not any(c.isspace() for c in where + options)
        ):
            mounts.append((where, options.replace("%%", "%")))
    return tuple(mounts)


def _mount_section(text: str) -> dict[str, str]:
    """Key=value lines of a unit file's [Mount] section (the last value of a key wins)."""
    fields: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Mount" and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
    return fields


def udev_rules_to_mask(names: tuple[str, ...]) -> list[str]:
    """Which of the host's udev rule files the guest masks."""
    return [n for n in names if n in _UDEV_MASKED]
