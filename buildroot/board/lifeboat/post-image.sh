#!/usr/bin/env bash
# Buildroot post-image script: turns the kernel and the initramfs into the
# appliance's disks and OVA with the very script image/build uses.
#
#   post-image.sh BINARIES_DIR [--data-size 64G]
#
# (the defconfig passes --data-size through BR2_ROOTFS_POST_IMAGE_SCRIPT_ARGS).
# Writes lifeboat-appliance.qcow2, .vmdk, .ova and SHA256SUMS into
# BINARIES_DIR (output/images/).
set -euo pipefail
binaries=${1:?usage: post-image.sh BINARIES_DIR [--data-size SIZE]}
shift
data_size=64G
while [ $# -gt 0 ]; do
    case $1 in
    --data-size) data_size=${2:?--data-size needs a value}; shift 2 ;;
    *) echo "post-image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

: "${BR2_EXTERNAL_LIFEBOAT_PATH:?run by Buildroot with BR2_EXTERNAL set}"
: "${TARGET_DIR:?run by Buildroot}"
repo=$(cd "$BR2_EXTERNAL_LIFEBOAT_PATH/.." && pwd)

# The release the lifeboat package wrote into the image.
version=$(sed -n 's/^VERSION=//p' "$TARGET_DIR/etc/lifeboat-release" | head -n 1)
case $version in *[!A-Za-z0-9.+~-]*|"") echo "post-image.sh: bad version '$version'" >&2; exit 2 ;; esac

for f in bzImage rootfs.cpio.zst; do
    [ -f "$binaries/$f" ] || { echo "post-image.sh: $binaries/$f is missing" >&2; exit 1; }
done

exec "$repo/image/assemble" \
    --kernel "$binaries/bzImage" \
    --initrd "$binaries/rootfs.cpio.zst" \
    --version "$version" \
    --out "$binaries" \
    --data-size "$data_size"
