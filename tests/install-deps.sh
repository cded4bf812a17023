#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh Debian 12 (bookworm),
# as root. Idempotent: steps whose result is already there are skipped.
#
#   bash tests/install-deps.sh           install what is missing
#   bash tests/install-deps.sh --check   only tell; exit 1 if something is missing
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-utils and qemu-block-extra are pinned to bookworm: a machine may carry
# a newer qemu-utils from backports, which conflicts with bookworm's
# qemu-system-x86. Both come from the one qemu source package, so their
# versions must match.
APT_PACKAGES=(
    qemu-system-x86 qemu-utils/bookworm qemu-block-extra/bookworm
    libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
    chromium
    musl-tools
    genisoimage
    dnsmasq-base iptables
    # Cluster tests (tests/src/cluster): network namespaces and veths (ip),
    # nsenter/unshare/taskset, kill, and Python's http.server.
    iproute2 util-linux procps python3
    # Directory tests (tests/src/slapd.rs): a throwaway OpenLDAP, its tools,
    # and openssl for its private CA.
    slapd ldap-utils openssl
    # The appliance image (image/build): partitioning a plain file, ext4
    # and FAT file systems written without mounting, GRUB for BIOS and
    # UEFI, kernel-module tables, the initramfs archive.
    fdisk e2fsprogs dosfstools mtools grub-pc-bin grub-efi-amd64-bin grub-common
    kmod cpio zstd ovmf
    # Share datastores (tests/src/shares.rs): the NFS and SMB servers the
    # booted appliance mounts.
    nfs-ganesha nfs-ganesha-vfs samba smbclient
    # Exports (tests/tests/exports.rs): the .xlsx files opened by openpyxl.
    python3-openpyxl
    # The SQL export (tests/src/postgres.rs): a throwaway PostgreSQL server
    # (initdb, postgres, psql); setpriv (util-linux) runs it as postgres.
    postgresql
    # SNMP (tests/tests/snmp.rs): net-snmp's clients and libsmi's smilint.
    # Debian ships the IETF base MIBs they load only in non-free (a
    # downloader): the tests take the copies in the npm package net-snmp
    # (tests/browser).
    snmp smitools
    # SNMP notifications (tests/tests/alerts.rs): net-snmp's snmptrapd
    # receives the v2c traps and the v3 traps and informs.
    snmptrapd
    # Alerts (tests/tests/alerts.rs): aiosmtpd receives the alert mails
    # (tests/peers/alert_receivers.py runs under Debian's python3), rsyslogd
    # with its TLS driver the syslog messages.
    python3-aiosmtpd rsyslog rsyslog-gnutls
)
BROWSER_DIR=tests/browser
# The agent ships as a static binary; the end-to-end tests run that build.
MUSL_TARGET=x86_64-unknown-linux-musl

# The installed version of a package; empty if it is not installed.
installed_version() {
    { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null || true; } \
        | awk '$3 == "installed" { print $4 }'
}

missing_apt_packages() {
    local qemu_version
    qemu_version=$(installed_version qemu-system-x86)
    for spec in "${APT_PACKAGES[@]}"; do
        local package=${spec%%/*}
        local version
        version=$(installed_version "$package")
        if [ -z "$version" ]; then
            echo "$spec"
        elif [ "$spec" != "$package" ] && [ "$version" != "$qemu_version" ]; then
            echo "$spec" # from another qemu build than qemu-system-x86
        fi
    done
    # Node.js 20 is on every machine of this project's kind; Debian's 18 is
    # the fallback (playwright-core asks for 20 but has run on 18).
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo nodejs
        echo npm
    fi
}

node_modules_current() {
    # npm ci writes node_modules/.package-lock.json; older than the lock
    # file means the lock changed since.
    local installed=$BROWSER_DIR/node_modules/.package-lock.json
    [ -f "$installed" ] && [ ! "$installed" -ot "$BROWSER_DIR/package-lock.json" ]
}

# The guest-agent test boots a real Linux built from these Debian packages
# (tests/src/guest.rs); they are downloaded here, not installed.
GUEST_DEBS=/var/cache/lifeboat-e2e/guest-debs
guest_debs_present() {
    compgen -G "$GUEST_DEBS/linux-image-*.deb" >/dev/null &&
        compgen -G "$GUEST_DEBS/busybox-static_*.deb" >/dev/null &&
        compgen -G "$GUEST_DEBS/qemu-guest-agent_*.deb" >/dev/null
}

# The appliance image (image/build) is made of these Debian packages; the
# end-to-end tests keep them here so a rebuild downloads nothing.
APPLIANCE_DEBS=/var/cache/lifeboat-e2e/appliance-debs
appliance_debs_present() {
    compgen -G "$APPLIANCE_DEBS/linux-image-*.deb" >/dev/null &&
        compgen -G "$APPLIANCE_DEBS/busybox-static_*.deb" >/dev/null &&
        compgen -G "$APPLIANCE_DEBS/openntpd_*.deb" >/dev/null
}

# Python peers from PyPI (tests/peers/requirements.txt), kept apart from
# the system's Python: the tests add this directory to PYTHONPATH.
PY_PEERS=/var/cache/lifeboat-e2e/python
python_peers_current() {
    [ -f "$PY_PEERS/requirements.txt" ] && cmp -s "$PY_PEERS/requirements.txt" tests/peers/requirements.txt
}

musl_target_installed() {
    rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"
}

missing_list=$(missing_apt_packages)
missing=()
if [ -n "$missing_list" ]; then
    mapfile -t missing <<<"$missing_list"
fi

if [ "${1:-}" = "--check" ]; then
    status=0
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing packages: ${missing[*]}"
        status=1
    fi
    if ! node_modules_current; then
        echo "missing: $BROWSER_DIR/node_modules (npm ci)"
        status=1
    fi
    if ! musl_target_installed; then
        echo "missing: rust target $MUSL_TARGET"
        status=1
    fi
    if ! guest_debs_present; then
        echo "missing: guest packages in $GUEST_DEBS"
        status=1
    fi
    if ! appliance_debs_present; then
        echo "missing: appliance packages in $APPLIANCE_DEBS"
        status=1
    fi
    if ! python_peers_current; then
        echo "missing: Python peers in $PY_PEERS (pip)"
        status=1
    fi
    exit $status
fi

updated=no
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    apt-get update
    updated=yes
    # Packages such as samba and nfs-ganesha start their daemons on install;
    # the tests start their own, on ports of their own. Keep services down
    # for the length of the install (the policy-rc.d convention).
    policy=/usr/sbin/policy-rc.d
    own_policy=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        --allow-downgrades "${missing[@]}"
    if [ "$own_policy" = yes ]; then rm -f "$policy"; fi
else
    echo "== system packages: all installed"
fi

if node_modules_current; then
    echo "== $BROWSER_DIR/node_modules: up to date"
else
    echo "== npm ci in $BROWSER_DIR"
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund)
fi

if python_peers_current; then
    echo "== Python peers: installed"
else
    echo "== pip install -r tests/peers/requirements.txt into $PY_PEERS"
    rm -rf "$PY_PEERS"
    python3 -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore \
        --target "$PY_PEERS" -r tests/peers/requirements.txt
    cp tests/peers/requirements.txt "$PY_PEERS/requirements.txt"
fi

if musl_target_installed; then
    echo "== rust target $MUSL_TARGET: installed"
else
    echo "== rustup target add $MUSL_TARGET"
    rustup target add "$MUSL_TARGET"
fi

if guest_debs_present; then
    echo "== guest packages: downloaded"
else
    echo "== downloading guest packages into $GUEST_DEBS"
    [ "$updated" = yes ] || apt-get update
    updated=yes
    kernel=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
    mkdir -p "$GUEST_DEBS"
    (cd "$GUEST_DEBS" && apt-get download "$kernel" busybox-static qemu-guest-agent)
fi

if appliance_debs_present; then
    echo "== appliance packages: downloaded"
else
    echo "== downloading appliance packages into $APPLIANCE_DEBS"
    [ "$updated" = yes ] || apt-get update
    updated=yes
    kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
    mkdir -p "$APPLIANCE_DEBS"
    (cd "$APPLIANCE_DEBS" && apt-get download "$kernel" busybox-static openntpd)
fi
