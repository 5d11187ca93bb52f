#!/usr/bin/env bash
# Proof that the test suite leaves the machine's own VMs alone: a guest on
# the machine's libvirtd (qemu:///system, the standard /run/libvirt socket)
# that must still run, with the same domain ID and QEMU process, after the
# suite ran against the test bed's private daemon (libvirtd.sh).
#
#   host-guard.sh start   start the machine's libvirtd if it does not answer
#                         (virtlogd, libvirtd; remembered so `stop` stops it),
#                         then define and start a guest named vmp-host-guard-*
#   host-guard.sh check   exit 0 when that guest still runs with the same
#                         domain ID and QEMU pid, 1 (saying what changed) otherwise
#   host-guard.sh stop    destroy and undefine that guest only; stop the
#                         machine's daemons (and the networks that daemon
#                         autostarted) only if `start` started them
#
# Only the guest this script made is ever destroyed. Debian 12, as root;
# the guest is the test bed's (build-guest.sh), under software emulation.
#
# Env:
#   VMP_HOST_GUARD_STATE   where start records what it did (default /run/vmp-host-guard)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
export LIBVIRT_DEFAULT_URI=qemu:///system
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
state=${VMP_HOST_GUARD_STATE:-/run/vmp-host-guard}
sock=/run/libvirt/libvirt-sock

die() {
    echo "host-guard.sh: $*" >&2
    exit 1
}

answers() {
    [[ -S $sock ]] && timeout 10 virsh -q version >/dev/null 2>&1
}

qemu_pid() {
    cat "/run/libvirt/qemu/$1.pid" 2>/dev/null || echo none
}

start_daemon() {
    local deadline
    if answers; then
        return 0
    fi
    if ! { [[ -f /run/virtlogd.pid ]] && kill -0 "$(</run/virtlogd.pid)" 2>/dev/null; }; then
        virtlogd -d
        echo virtlogd >>"$state/started"
    fi
    libvirtd -d
    echo libvirtd >>"$state/started"
    deadline=$((SECONDS + 60))
    until answers; do
        ((SECONDS < deadline)) || die "the machine's libvirtd did not answer within 60s"
        sleep 0.2
    done
}

start() {
    ((EUID == 0)) || die "must run as root"
    [[ ! -f $state/name ]] || die "a guard guest is already recorded in $state (run '$0 stop')"
    mkdir -p "$state"
    : >"$state/started"
    start_daemon
    local cache name boot
    cache=$(bash "$here/build-guest.sh")
    name=vmp-host-guard-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    boot=/var/lib/libvirt/boot/$name
    mkdir -p -m 0755 "$boot"
    cp "$cache/vmlinuz" "$cache/initrd.img" "$boot/"
    cat >"$state/domain.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$boot/vmlinuz</kernel>
    <initrd>$boot/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet vmp.hostname=$name</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='file'>
      <source path='$boot/serial.log'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
EOF
    echo "$name" >"$state/name"
    virsh -q define "$state/domain.xml" >/dev/null
    virsh -q start "$name" >/dev/null
    virsh -q domid "$name" >"$state/id"
    qemu_pid "$name" >"$state/pid"
    echo "host guest $name: running, domain ID $(<"$state/id"), QEMU pid $(<"$state/pid")"
}

check() {
    [[ -f $state/name ]] || die "no guard guest recorded (run '$0 start')"
    local name id pid dstate
    name=$(<"$state/name")
    answers || die "the machine's libvirtd no longer answers"
    dstate=$(virsh -q domstate "$name" 2>/dev/null || echo missing)
    id=$(virsh -q domid "$name" 2>/dev/null || echo none)
    pid=$(qemu_pid "$name")
    if [[ $dstate != running || $id != "$(<"$state/id")" || $pid != "$(<"$state/pid")" ]]; then
        echo "host-guard.sh: the machine's guest $name changed: state $dstate, domain ID $(<"$state/id") -> $id, QEMU pid $(<"$state/pid") -> $pid" >&2
        exit 1
    fi
    echo "host guest $name: still running, same domain ID $id, same QEMU pid $pid"
}

stop() {
    [[ -f $state/name ]] || { echo "host guard: nothing recorded"; return 0; }
    local name pid net
    name=$(<"$state/name")
    if answers; then
        virsh -q destroy "$name" >/dev/null 2>&1 || true
        virsh -q undefine "$name" >/dev/null 2>&1 || true
    fi
    rm -rf "/var/lib/libvirt/boot/$name"
    if grep -qx libvirtd "$state/started" && [[ -f /run/libvirtd.pid ]]; then
        # Networks that daemon autostarted: their dnsmasq would outlive it.
        for net in $(virsh -q net-list --name 2>/dev/null); do
            virsh -q net-destroy "$net" >/dev/null 2>&1 || true
        done
        pid=$(</run/libvirtd.pid)
        kill -TERM "$pid" 2>/dev/null || true
        for _ in {1..200}; do
            [[ $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || echo Z) == Z ]] && break
            sleep 0.1
        done
    fi
    if grep -qx virtlogd "$state/started" && [[ -f /run/virtlogd.pid ]]; then
        kill -TERM "$(</run/virtlogd.pid)" 2>/dev/null || true
    fi
    rm -rf "$state"
    echo "host guard: removed $name"
}

case ${1:-} in
    start) start ;;
    check) check ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|check|stop" >&2
        exit 2
        ;;
esac
