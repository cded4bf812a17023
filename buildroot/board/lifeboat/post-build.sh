#!/usr/bin/env bash
# Buildroot post-build script: finishes the target tree the way image/build
# finishes its root file system, for what the overlay (image/rootfs/)
# cannot do. Called with the target directory as its first argument.
set -euo pipefail
target=${1:?usage: post-build.sh TARGET_DIR}

fail() { echo "post-build.sh: $*" >&2; exit 1; }

# What the lifeboat package installs, and what the scripts source.
for f in usr/bin/lifeboat usr/share/lifeboat/lifeboat-agent etc/lifeboat-release \
         etc/init.d/rcS usr/lib/lifeboat/common.sh; do
    [ -e "$target/$f" ] || fail "$f is missing from the target"
done
grep -q '^VERSION=' "$target/etc/lifeboat-release" || fail "etc/lifeboat-release has no VERSION="

# The kernel starts /init of the initramfs: busybox init, reading
# /etc/inittab from the overlay (image/build makes the same link).
ln -sf /bin/busybox "$target/init"

# Only the overlay's rcS and rcK run at boot: the S?? scripts that
# Buildroot's packages install (syslogd, klogd, network, openntpd, seed
# files...) would never be started, so leave none to mislead anyone.
rm -f "$target"/etc/init.d/S[0-9][0-9]*
rm -rf "$target/etc/network"

# The module list without its comments and blank lines, as image/build
# writes it (this kernel has the drivers built in, so rcS's modprobe of
# each name finds nothing to do).
modules=$target/etc/lifeboat/modules
if [ -f "$modules" ]; then
    { grep -v '^#' "$modules" || true; } | sed '/^$/d' > "$modules.new"
    mv "$modules.new" "$modules"
fi

# e2fsprogs' tools under the names mkfs/fsck look for, as image/build
# links them.
for fs in ext2 ext3 ext4; do
    [ -e "$target/sbin/fsck.$fs" ] || ln -sf e2fsck "$target/sbin/fsck.$fs"
    [ -e "$target/sbin/mkfs.$fs" ] || ln -sf mke2fs "$target/sbin/mkfs.$fs"
done

# Mount point of the data area, and the state directories of ntpd: the
# ones rcS makes for Debian's build and /var/db, where this openntpd
# (configured with --localstatedir=/var) keeps its drift file.
mkdir -p "$target/data" "$target/mnt" "$target/var/lib/openntpd" "$target/var/db"
