#!/usr/bin/env bash
# Boot the test guest on the running test-bed daemon and time its life cycle.
#
#   smoke-test.sh          define, start, wait for VMP-GUEST-READY and a DHCP
#                          lease, ACPI shutdown, undefine (type='qemu')
#   smoke-test.sh --kvm    probe whether KVM guests actually run here: boot a
#                          transient type='kvm' guest and wait for the ready
#                          line; exit 0 if it appears, 1 if not
#
# Env:
#   VMP_TESTBED_TIMEOUT    seconds to wait for each step (default 30; the KVM
#                          probe defaults to 15)
set -euo pipefail
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
LIBVIRT_DEFAULT_URI=$("$here/libvirtd.sh" uri)
export LIBVIRT_DEFAULT_URI

mode=qemu
case ${1:-} in
    "") ;;
    --kvm) mode=kvm ;;
    *)
        echo "usage: $0 [--kvm]" >&2
        exit 2
        ;;
esac
timeout=${VMP_TESTBED_TIMEOUT:-$([[ $mode == kvm ]] && echo 15 || echo 30)}

die() {
    echo "smoke-test.sh: $*" >&2
    exit 1
}

((EUID == 0)) || die "must run as root"
"$here/libvirtd.sh" status >/dev/null || die "daemon not running (testbed/libvirtd.sh start)"
cache=$("$here/build-guest.sh")

name=vmp-smoke-$mode-$$
# QEMU runs as libvirt-qemu, which cannot read files under /root: use copies
# in a directory it can traverse, at the same path inside the daemon's mount
# namespace. Not the pool directory, so the `default` pool's volume list
# stays as the tests left it.
boot=$cache/boot/$name
disk=$boot/disk.qcow2
work=$(mktemp -d /tmp/vmp-smoke.XXXXXX)
serial=$work/serial.log
cleanup() {
    virsh -q destroy "$name" >/dev/null 2>&1 || true
    virsh -q undefine "$name" >/dev/null 2>&1 || true
    rm -rf "$boot" "$work"
}
trap cleanup EXIT

mkdir -p -m 0755 "$cache/boot"
mkdir -m 0755 "$boot"
cp "$cache/vmlinuz" "$cache/initrd.img" "$boot/"
devices=
if [[ $mode == qemu ]]; then
    cp "$cache/disk.qcow2" "$disk"
    devices="
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network='default'/>
      <model type='virtio'/>
    </interface>"
fi
cat >"$work/domain.xml" <<EOF
<domain type='$mode'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$boot/vmlinuz</kernel>
    <initrd>$boot/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet vmp.hostname=$name</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>$devices
    <serial type='file'>
      <source path='$serial'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='$serial'/>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>
EOF

# wait_for SECONDS T0 COMMAND...: poll until COMMAND succeeds, then print the
# seconds since T0 (an $EPOCHREALTIME value).
wait_for() {
    local limit=$1 t0=$2
    shift 2
    until "$@"; do
        if (($(elapsed_ms "$t0") > limit * 1000)); then
            return 1
        fi
        sleep 0.05
    done
    elapsed "$t0"
}
elapsed_ms() {
    local now=$EPOCHREALTIME
    echo $(((${now/./} - ${1/./}) / 1000))
}
elapsed() {
    local ms
    ms=$(elapsed_ms "$1")
    printf '%d.%02d\n' $((ms / 1000)) $((ms % 1000 / 10))
}
ready() { grep -q VMP-GUEST-READY "$serial" 2>/dev/null; }
has_ip() { grep -q VMP-GUEST-IP "$serial" 2>/dev/null; }
has_lease() { virsh -q net-dhcp-leases default 2>/dev/null | grep -q "$name"; }
shut_off() { [[ $(virsh domstate "$name" 2>/dev/null) == "shut off" ]]; }

if [[ $mode == kvm ]]; then
    t0=$EPOCHREALTIME
    virsh -q create "$work/domain.xml" >/dev/null
    if t_ready=$(wait_for "$timeout" "$t0" ready); then
        echo "kvm: usable, guest ready ${t_ready}s after create"
        exit 0
    fi
    echo "kvm: unusable, no ready line within ${timeout}s ($(wc -c <"$serial") bytes of console output)"
    exit 1
fi

virsh -q define "$work/domain.xml" >/dev/null
t0=$EPOCHREALTIME
virsh -q start "$name" >/dev/null
t_start=$(elapsed "$t0")
t_ready=$(wait_for "$timeout" "$t0" ready) ||
    { tail -n 20 "$serial" >&2; die "no VMP-GUEST-READY within ${timeout}s"; }
t_ip=$(wait_for "$timeout" "$t0" has_ip) ||
    { tail -n 20 "$serial" >&2; die "guest got no DHCP address within ${timeout}s"; }
t_lease=$(wait_for "$timeout" "$t0" has_lease) ||
    { tail -n 20 "$serial" >&2; die "no DHCP lease within ${timeout}s"; }
t0=$EPOCHREALTIME
virsh -q shutdown "$name" >/dev/null
t_shutdown=$(wait_for "$timeout" "$t0" shut_off) || die "not shut off ${timeout}s after ACPI shutdown"
echo "qemu guest: start ${t_start}s, ready ${t_ready}s, guest IP ${t_ip}s, lease listed ${t_lease}s, ACPI shutdown ${t_shutdown}s"
