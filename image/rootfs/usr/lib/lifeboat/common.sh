# Shared by the appliance's boot, shutdown, supervisor and console menu
# scripts (sourced, busybox sh). One place for paths and settings.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin

DATA=/data                          # the persistent data area
DATA_LABEL=LIFEBOAT-DATA            # its file system label
CONTROLLER_DATA=$DATA/lifeboat      # the controller's --data-dir
SETTINGS=$DATA/etc/appliance.conf   # network, NTP, host name (menu-edited)
LOG_DIR=$DATA/log
RUN=/run/lifeboat
ANNOUNCE=$RUN/announce              # written by `lifeboat serve --announce`
CONSOLE_PORT=443
AGENT_PORT=8444
AGENT_BINARY=/usr/share/lifeboat/lifeboat-agent

log() { /usr/lib/lifeboat/log "$@"; }

# The release this image is (VERSION=...), written by image/build.
. /etc/lifeboat-release

# A kernel command-line parameter's value: `cmdline_value lifeboat.ip`.
cmdline_value() {
    for word in $(cat /proc/cmdline); do
        case $word in "$1="*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

# Settings: defaults, then the saved file, then the kernel command line
# (which wins, for this boot only).
load_settings() {
    NET_MODE=dhcp NET_ADDRESS= NET_GATEWAY= NET_DNS=
    NTP_SERVERS="0.pool.ntp.org 1.pool.ntp.org"
    HOST_NAME=lifeboat
    [ -f "$SETTINGS" ] && . "$SETTINGS"
    if ip=$(cmdline_value lifeboat.ip); then
        if [ "$ip" = dhcp ]; then
            NET_MODE=dhcp
        else
            # ADDRESS/PREFIX,GATEWAY[,DNS[,DNS...]]
            NET_MODE=static
            NET_ADDRESS=${ip%%,*}
            case $ip in
            *,*)
                rest=${ip#*,}
                NET_GATEWAY=${rest%%,*}
                [ "$rest" != "$NET_GATEWAY" ] && NET_DNS=$(echo "${rest#*,}" | tr ',' ' ')
                ;;
            esac
            if ! valid_ipv4 "$NET_ADDRESS" with_prefix; then
                log "lifeboat.ip=$ip is not ADDRESS/PREFIX[,GATEWAY[,DNS...]]: using DHCP"
                NET_MODE=dhcp
            fi
        fi
    fi
    if ntp=$(cmdline_value lifeboat.ntp); then NTP_SERVERS=$(echo "$ntp" | tr ',' ' '); fi
    if name=$(cmdline_value lifeboat.hostname); then HOST_NAME=$name; fi
}

# Writes one setting into the saved file (creating it), keeping the others.
save_setting() {
    mkdir -p "${SETTINGS%/*}"
    touch "$SETTINGS"
    grep -v "^$1=" "$SETTINGS" > "$SETTINGS.new" || true
    printf '%s=%s\n' "$1" "'$2'" >> "$SETTINGS.new"
    sync "$SETTINGS.new" 2>/dev/null
    mv "$SETTINGS.new" "$SETTINGS"
}

# A dotted IPv4 address, or ADDRESS/PREFIX with `with_prefix`.
valid_ipv4() {
    case $1 in */*) [ "$2" = with_prefix ] || return 1 ;; *) [ "$2" = with_prefix ] && return 1 ;; esac
    ipcalc -s -n "$1" >/dev/null 2>&1
}

# The first Ethernet interface.
primary_interface() {
    for dev in /sys/class/net/*; do
        name=${dev##*/}
        [ "$name" = lo ] && continue
        [ -e "$dev/device" ] && { echo "$name"; return 0; }
    done
    return 1
}

# The primary interface's IPv4 address, without prefix; empty if none.
current_address() {
    dev=$(primary_interface) || return 0
    ip -4 -o addr show dev "$dev" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }'
}

network_up() {
    load_settings
    dev=$(primary_interface) || { log "no network interface found"; return 1; }
    hostname "$HOST_NAME"
    [ -f $RUN/udhcpc.pid ] && kill "$(cat $RUN/udhcpc.pid)" 2>/dev/null
    rm -f $RUN/udhcpc.pid
    ip -4 addr flush dev "$dev"
    ip link set "$dev" up
    if [ "$NET_MODE" = static ]; then
        ip addr add "$NET_ADDRESS" dev "$dev"
        [ -n "$NET_GATEWAY" ] && ip route add default via "$NET_GATEWAY" dev "$dev"
        : > /etc/resolv.conf
        for s in $NET_DNS; do echo "nameserver $s" >> /etc/resolv.conf; done
        log "network: $dev static $NET_ADDRESS gateway ${NET_GATEWAY:-none}"
    else
        # Waits up to ~10 s for a lease, then keeps trying in the background.
        udhcpc -i "$dev" -b -t 5 -T 2 -p $RUN/udhcpc.pid -x hostname:"$HOST_NAME" \
            -s /usr/share/udhcpc/default.script >/dev/null 2>&1
        log "network: $dev DHCP, address $(current_address)"
    fi
}

ntp_restart() {
    load_settings
    killall ntpd 2>/dev/null
    servers="$NTP_SERVERS $(cat $RUN/dhcp-ntp 2>/dev/null)"
    conf=$RUN/ntpd.conf
    : > $conf
    for s in $servers; do echo "servers $s" >> $conf; done
    [ -s $conf ] || return 0
    mkdir -p /var/lib/openntpd/db /var/lib/openntpd/run
    /usr/sbin/ntpd -f $conf -s 2>/dev/null &
}

# Stops the controller (the supervisor waits), at most $1 seconds.
controller_stop() {
    pid=$(cat $RUN/controller.pid 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt $(( ${1:-30} * 10 )) ]; do
        usleep 100000; i=$((i + 1))
    done
    kill -KILL "$pid" 2>/dev/null
    return 0
}

# key=value from the controller's announce file: `announced ca_fingerprint`.
announced() {
    sed -n "s/^$1=//p" $ANNOUNCE 2>/dev/null
}
