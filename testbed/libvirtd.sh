#!/usr/bin/env bash
# The test bed's own libvirt daemon: a private libvirtd with QEMU, separate
# from the machine's (qemu:///system), which it never starts, stops or reads.
#
#   libvirtd.sh start    start the private virtlogd and libvirtd (no-op when running)
#   libvirtd.sh stop     destroy the private daemon's domains and networks, stop it
#   libvirtd.sh restart  stop, then start (defined domains, pools, networks stay)
#   libvirtd.sh status   exit 0 when the private daemon answers, 3 otherwise
#   libvirtd.sh purge    stop, then delete every file the test bed's daemon kept
#   libvirtd.sh uri      print the URI to connect to it with
#
# The daemon runs under `tini -s` (a subreaper, so QEMU processes are reaped
# quickly) in a mount and network namespace of its own (`unshare -m -n`).
# Inside it, private directories are bound over the ones libvirt uses:
#
#   $VMP_TESTBED_RUN/libvirt   over /run/libvirt       (sockets, pid files, guest status)
#   $VMP_TESTBED_STATE/etc     over /etc/libvirt       (a copy of the *.conf files and nwfilters;
#                                                       no domain, network or pool of the machine)
#   $VMP_TESTBED_STATE/lib     over /var/lib/libvirt   (QEMU state, dnsmasq leases)
#   $VMP_TESTBED_STATE/cache   over /var/cache/libvirt (QEMU capabilities)
#   $VMP_TESTBED_STATE/log     over /var/log/libvirt   (QEMU logs)
#
# The first directory is also visible outside, so the daemon's socket is
# $VMP_TESTBED_RUN/libvirt/libvirt-sock there: connect with
# `qemu+unix:///system?socket=...` (`libvirtd.sh uri`). virtlogd runs inside
# too, with its pid file in $VMP_TESTBED_RUN; nothing is written to the
# machine's /run/libvirt, /run/libvirtd.pid or /run/virtlogd.pid.
#
# The `default` storage pool is $VMP_TESTBED_STATE/images, a path that is
# the same inside and outside the namespace. The `default` NAT network, its
# bridge, dnsmasq, firewall rules and guest traffic stay in the private
# network namespace, published as /run/netns/$VMP_TESTBED_NETNS:
# `ip netns exec vm-provider-testbed ping 192.168.122.x` reaches the guests.
#
# Env:
#   VMP_TESTBED_RUN            runtime directory (default /run/vm-provider-testbed)
#   VMP_TESTBED_STATE          persistent directory (default /var/lib/vm-provider-testbed)
#   VMP_TESTBED_NETNS          netns name (default vm-provider-testbed)
#   VMP_TESTBED_LOG            daemon log (default $VMP_TESTBED_STATE/libvirtd.log)
#   VMP_TESTBED_START_TIMEOUT  seconds to wait for the daemon (default 60)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

run=${VMP_TESTBED_RUN:-/run/vm-provider-testbed}
state=${VMP_TESTBED_STATE:-/var/lib/vm-provider-testbed}
netns=${VMP_TESTBED_NETNS:-vm-provider-testbed}
log=${VMP_TESTBED_LOG:-$state/libvirtd.log}
start_timeout=${VMP_TESTBED_START_TIMEOUT:-60}
sock=$run/libvirt/libvirt-sock
uri="qemu+unix:///system?socket=$sock"
libvirtd_pidfile=$run/libvirtd.pid
virtlogd_pidfile=$run/virtlogd.pid
tini_pidfile=$run/tini.pid
pool_dir=$state/images
export LIBVIRT_DEFAULT_URI=$uri

die() {
    echo "libvirtd.sh: $*" >&2
    exit 1
}

need_root() {
    ((EUID == 0)) || die "must run as root"
}

# A process counts as alive unless it is gone or a zombie: orphans are
# reaped by PID 1, which can take seconds here.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Print the pid in a pid file if that process is alive.
live_pid() {
    local pid
    [[ -f $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    echo "$pid"
}

answers() {
    [[ -S $sock ]] && timeout 10 virsh -q version >/dev/null 2>&1
}

log_tail() {
    [[ -f $log ]] && tail -n 25 "$log" | sed 's/^/  | /' >&2
    return 0
}

# Wait until a pid is gone; SIGKILL it after $2 seconds.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            return 0
        fi
        sleep 0.1
    done
}

fix_kvm_perms() {
    [[ -e /dev/kvm ]] || return 0
    # With /dev/kvm root:root 0600 libvirt re-probes QEMU on every call.
    getent group kvm >/dev/null && chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
}

# The private directories; the configuration is the machine's *.conf files
# (and network filters), copied once: no domain, network, pool or secret.
prepare_dirs() {
    local f
    mkdir -p "$run/libvirt" "$state"/{etc,lib,cache,log}
    chmod 0755 "$run" "$state" "$run/libvirt"
    mkdir -p -m 0711 "$pool_dir"
    if [[ ! -f $state/etc/libvirtd.conf ]]; then
        for f in /etc/libvirt/*.conf; do
            cp -p "$f" "$state/etc/"
        done
        [[ -d /etc/libvirt/nwfilter ]] && cp -a /etc/libvirt/nwfilter "$state/etc/"
    fi
}

# Runs inside the new namespaces (as `bash -c`, with the paths as arguments):
# bind the private directories, bring lo up, start virtlogd, exec libvirtd.
# shellcheck disable=SC2016
inside='set -e
run=$1 state=$2
# The mount points: /run/libvirt exists only once a daemon ran here.
mkdir -p /run/libvirt /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount --bind "$run/libvirt" /run/libvirt
mount --bind "$state/etc" /etc/libvirt
mount --bind "$state/lib" /var/lib/libvirt
mount --bind "$state/cache" /var/cache/libvirt
mount --bind "$state/log" /var/log/libvirt
ip link set lo up
virtlogd --daemon --pid-file "$run/virtlogd.pid"
exec libvirtd --pid-file "$run/libvirtd.pid"'

ensure_pool() {
    if ! virsh -q pool-info default >/dev/null 2>&1; then
        virsh -q pool-define-as default dir --target "$pool_dir" >/dev/null
    fi
    virsh -q pool-autostart default >/dev/null
    if [[ $(virsh -q pool-info default | awk '$1 == "State:" { print $2 }') != running ]]; then
        virsh -q pool-start default >/dev/null
    fi
}

# The `default` NAT network. dnsmasq's "no-ping" skips the ICMP probe it
# otherwise makes before offering an address to a new MAC, which delays
# every fresh guest's first lease by about 3 s.
network_xml="<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
  <dnsmasq:options>
    <dnsmasq:option value='no-ping'/>
  </dnsmasq:options>
</network>"

ensure_network() {
    local xml
    if ! virsh -q net-dumpxml --inactive default 2>/dev/null | grep -q "value='no-ping'"; then
        virsh -q net-destroy default >/dev/null 2>&1 || true
        virsh -q net-undefine default >/dev/null 2>&1 || true
        xml=$(mktemp)
        echo "$network_xml" >"$xml"
        virsh -q net-define "$xml" >/dev/null
        rm -f "$xml"
    fi
    virsh -q net-autostart default >/dev/null
    if [[ $(virsh -q net-info default | awk '$1 == "Active:" { print $2 }') != yes ]]; then
        virsh -q net-start default >/dev/null
    fi
}

start() {
    need_root
    if answers; then
        echo "libvirtd: already running (pid $(live_pid "$libvirtd_pidfile" || echo '?'), $uri)"
        return 0
    fi
    local pid
    if pid=$(live_pid "$libvirtd_pidfile"); then
        die "libvirtd (pid $pid) is running but does not answer; run '$0 stop' first"
    fi
    for tool in libvirtd virtlogd virsh tini unshare ip mount; do
        command -v "$tool" >/dev/null || die "missing $tool (run testbed/install.sh)"
    done

    fix_kvm_perms
    prepare_dirs
    rm -f "$sock" "$run/libvirt/libvirt-sock-ro" "$run/libvirt/libvirt-admin-sock"

    : >"$log"
    # tini execs unshare, which execs bash in the new namespaces, which execs
    # libvirtd: tini (the subreaper) is libvirtd's direct parent and the
    # parent of the daemonised virtlogd.
    LIBVIRT_LOG_OUTPUTS="3:stderr" setsid tini -s -- \
        unshare --mount --net --propagation private -- bash -c "$inside" inside "$run" "$state" \
        </dev/null >>"$log" 2>&1 &
    local tini_pid=$!
    echo "$tini_pid" >"$tini_pidfile"

    local deadline=$((SECONDS + start_timeout))
    until answers; do
        if ! alive "$tini_pid"; then
            echo "libvirtd.sh: libvirtd exited during start-up; log $log:" >&2
            log_tail
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "libvirtd.sh: libvirtd did not answer within ${start_timeout}s; log $log:" >&2
            log_tail
            exit 1
        fi
        sleep 0.2
    done

    pid=$(live_pid "$libvirtd_pidfile") || die "libvirtd answers but $libvirtd_pidfile is stale"
    ip netns delete "$netns" 2>/dev/null || true
    ip netns attach "$netns" "$pid"

    ensure_pool
    ensure_network
    echo "libvirtd: started (pid $pid, netns $netns, $uri, log $log)"
}

stop() {
    need_root
    local pid dom net f stopped=()
    if answers; then
        # Every domain here is the test bed's own: the daemon sees no other.
        for dom in $(virsh -q list --name --state-running --state-paused --state-other); do
            virsh -q destroy "$dom" >/dev/null 2>&1 || true
        done
        # Networks must go while the daemon still runs: their bridge and
        # dnsmasq live in the daemon's netns, which a new daemon won't share.
        for net in $(virsh -q net-list --name); do
            virsh -q net-destroy "$net" >/dev/null 2>&1 || true
        done
    fi
    if pid=$(live_pid "$libvirtd_pidfile"); then
        kill -TERM "$pid"
        wait_gone "$pid" 20
        stopped+=(libvirtd)
    fi
    # dnsmasq left behind by a daemon that died without net-destroy.
    for f in "$run"/libvirt/network/*.pid; do
        pid=$(live_pid "$f") || continue
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dnsmasq ]]; then
            kill -TERM "$pid"
        fi
    done
    ip netns delete "$netns" 2>/dev/null || true
    if pid=$(live_pid "$virtlogd_pidfile"); then
        kill -TERM "$pid"
        wait_gone "$pid" 10
        stopped+=(virtlogd)
    fi
    if pid=$(live_pid "$tini_pidfile"); then
        wait_gone "$pid" 5
    fi
    rm -f "$tini_pidfile"
    if ((${#stopped[@]})); then
        echo "libvirtd: stopped ${stopped[*]}"
    else
        echo "libvirtd: not running"
    fi
}

purge() {
    stop
    rm -rf "$run" "$state"
    echo "libvirtd: removed $run and $state"
}

status() {
    local pid
    if answers; then
        pid=$(live_pid "$libvirtd_pidfile" || echo '?')
        echo "libvirtd: running (pid $pid, $uri, $(virsh -q version | awk '/Running hypervisor/ { print $3, $4 }'))"
        return 0
    fi
    if pid=$(live_pid "$libvirtd_pidfile"); then
        echo "libvirtd: pid $pid does not answer"
    else
        echo "libvirtd: not running"
    fi
    return 3
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    restart) stop && start ;;
    purge) purge ;;
    uri) echo "$uri" ;;
    *)
        echo "usage: $0 start|stop|restart|status|purge|uri" >&2
        exit 2
        ;;
esac
