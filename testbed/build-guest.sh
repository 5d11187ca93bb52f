#!/usr/bin/env bash
# Build the tiny test guest used by the libvirt tests:
#   vmlinuz     Debian cloud kernel (direct kernel boot)
#   initrd.img  busybox initramfs: ACPI power button, DHCP, "VMP-GUEST-READY"
#   disk.qcow2  small qcow2 base image (ext2 filesystem, not bootable)
# into $VMP_TESTBED_CACHE (default /var/cache/vm-provider-testbed as root, where
# QEMU running as libvirt-qemu can read it; ~/.cache/vm-provider-testbed
# otherwise), then print that
# directory. Skips the build when the cache was built by this exact script.
#
# Env:
#   VMP_TESTBED_CACHE       output directory
#   VMP_TESTBED_KERNEL_PKG  kernel package (default: what linux-image-cloud-amd64 depends on)
#   VMP_TESTBED_REBUILD=1   rebuild even when the cache is current
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$(id -u)" -eq 0 ]; then default_cache=/var/cache/vm-provider-testbed; else default_cache=${HOME:?}/.cache/vm-provider-testbed; fi
cache=${VMP_TESTBED_CACHE:-$default_cache}
self=$(readlink -f "${BASH_SOURCE[0]}")
key=$(sha256sum "$self" | cut -d' ' -f1)
outputs=(vmlinuz initrd.img disk.qcow2)

# Modules the guest loads, in this order; dependencies are added before them.
# Modules that are built into the kernel are skipped.
guest_modules=(button evdev virtio_pci virtio_blk virtio_net virtio_balloon)
disk_size=64M

die() {
    echo "build-guest.sh: $*" >&2
    exit 1
}

is_current() {
    local f
    [[ -f $cache/.build-key && $(<"$cache/.build-key") == "$key" ]] || return 1
    for f in "${outputs[@]}"; do
        [[ -s $cache/$f ]] || return 1
    done
}

mkdir -p "$cache"
if [[ ${VMP_TESTBED_REBUILD:-0} != 1 ]] && is_current; then
    echo "$cache"
    exit 0
fi

# Serialise concurrent builds (e.g. parallel test workers).
exec 9>"$cache/.lock"
flock 9
if [[ ${VMP_TESTBED_REBUILD:-0} != 1 ]] && is_current; then
    echo "$cache"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb cpio gzip mke2fs qemu-img flock; do
    command -v "$tool" >/dev/null || die "missing $tool (run testbed/install.sh)"
done
busybox=/bin/busybox
[[ -x $busybox ]] || die "missing $busybox (run testbed/install.sh)"

work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/build.log

# --- kernel -----------------------------------------------------------------
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
refresh_lists() {  # a fresh machine may have no package lists, or stale ones
    ((EUID == 0)) && apt-get update -qq >>"$log" 2>&1
}
kpkg=${VMP_TESTBED_KERNEL_PKG:-}
if [[ -z $kpkg ]]; then
    kpkg=$(kernel_package)
    [[ -n $kpkg ]] || { refresh_lists && kpkg=$(kernel_package); }
    [[ -n $kpkg ]] || die "apt does not know linux-image-cloud-amd64 (run apt-get update)"
fi

mkdir -p "$work/deb" "$work/kernel"
apt_opts=()
((EUID == 0)) && apt_opts=(-o APT::Sandbox::User=root)
download() { (cd "$work/deb" && apt-get "${apt_opts[@]}" download "$kpkg") >>"$log" 2>&1; }
download || { refresh_lists && download; } ||
    { cat "$log" >&2; die "apt-get download $kpkg failed"; }
dpkg-deb -x "$work"/deb/*.deb "$work/kernel"

vmlinuz=$(find "$work/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
[[ -n $vmlinuz ]] || die "no vmlinuz in $kpkg"
kver=${vmlinuz##*/vmlinuz-}
moddir=
for d in "$work/kernel/lib/modules/$kver" "$work/kernel/usr/lib/modules/$kver"; do
    [[ -d $d ]] && moddir=$d
done
[[ -n $moddir ]] || die "no modules directory for $kver in $kpkg"

# --- initramfs ---------------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,etc/acpi/PWRF,lib/modules,var/log,mnt}
ln -s bin "$root/sbin"
ln -s run "$root/var/run"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done

# Find a module file by module name ('-' and '_' are interchangeable).
module_file() {
    local pattern=${1//[-_]/[-_]}
    find "$moddir" -regextype posix-extended \
        -regex ".*/${pattern}\.ko(\.xz|\.zst|\.gz)?" -print -quit
}

is_builtin() {
    local pattern=${1//[-_]/[-_]}
    [[ -f $moddir/modules.builtin ]] &&
        grep -Eq "/${pattern}\.ko$" "$moddir/modules.builtin"
}

decompress() {
    case $1 in
        *.xz) xz -dc "$1" ;;
        *.zst) zstd -qdc "$1" ;;
        *.gz) gzip -dc "$1" ;;
        *) cat "$1" ;;
    esac
}

declare -A added=()
load_order=()
builtin=()
add_module() {
    local name=${1//-/_} file deps dep
    [[ -n ${added[$name]:-} ]] && return 0
    added[$name]=1
    if is_builtin "$name"; then
        builtin+=("$name")
        return 0
    fi
    file=$(module_file "$name")
    [[ -n $file ]] || die "module $name is neither built in nor shipped in $kpkg"
    decompress "$file" >"$root/lib/modules/$name.ko"
    deps=$(tr '\0' '\n' <"$root/lib/modules/$name.ko" | sed -n 's/^depends=//p' | head -n1)
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
    load_order+=("$name")
}
for m in "${guest_modules[@]}"; do
    add_module "$m"
done
printf '%s\n' "${load_order[@]}" >"$root/lib/modules/load-order"

cat >"$root/init" <<'INIT'
#!/bin/sh
# PID 1 of the test guest: set up, print the ready line, hand over to init.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm

name=vmp-guest
for arg in $(cat /proc/cmdline); do
    case $arg in
        vmp.hostname=*) name=${arg#vmp.hostname=} ;;
    esac
done
hostname "$name"

while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "vmp-guest: insmod $m failed"
done </lib/modules/load-order

# acpid only scans /dev/input at start-up: wait for the power button's node.
i=0
while [ $i -lt 50 ]; do
    for ev in /sys/class/input/event*; do
        [ -e "$ev/device/name" ] || continue
        case $(cat "$ev/device/name") in
            *"Power Button"*) [ -e "/dev/input/${ev##*/}" ] && break 2 ;;
        esac
    done
    i=$((i + 1))
    usleep 100000
done
acpid -l /dev/null

# Report vCPUs and memory at start and whenever they change (vCPU hot-plug,
# the balloon), bringing hot-plugged vCPUs online as udev would.
(
    last=
    while :; do
        for c in /sys/devices/system/cpu/cpu[0-9]*/online; do
            [ "$(cat "$c" 2>/dev/null)" = 0 ] && echo 1 >"$c"
        done
        now="cpus=$(grep -c '^processor' /proc/cpuinfo) mem_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)"
        [ "$now" != "$last" ] && echo "VMP-GUEST-HW $now"
        last=$now
        usleep 500000
    done
) &

disks=
for b in /sys/block/*; do
    case ${b##*/} in
        vd* | sd* | hd* | nvme*) disks="$disks ${b##*/}" ;;
    esac
done
[ -n "$disks" ] && echo "VMP-GUEST-DISKS$disks"

ip link set lo up
for n in /sys/class/net/*; do
    n=${n##*/}
    [ "$n" = lo ] && continue
    ip link set "$n" up
    udhcpc -f -S -i "$n" -s /etc/udhcpc.script -x "hostname:$name" -t 60 -T 1 \
        >/dev/null 2>&1 &
done

echo "VMP-GUEST-READY"
exec init
INIT
chmod 0755 "$root/init"

# busybox init: no consoles or respawns, it only reaps and idles.
cat >"$root/etc/inittab" <<'EOF'
::ctrlaltdel:/sbin/poweroff -f
::shutdown:/bin/sync
EOF

# busybox acpid runs <confdir>/PWRF/00000080 on the ACPI power button.
cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "VMP-GUEST-POWEROFF" >/dev/console
sync
poweroff -f
EOF
chmod 0755 "$root/etc/acpi/PWRF/00000080"

cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# $1 is the event; udhcpc exports interface, ip, mask, router.
case $1 in
    deconfig)
        ip -4 addr flush dev "$interface"
        ;;
    bound | renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do
            ip -4 route replace default via "$r" dev "$interface"
            break
        done
        [ "$1" = bound ] && echo "VMP-GUEST-IP $interface $ip" >/dev/console
        ;;
esac
exit 0
EOF
chmod 0755 "$root/etc/udhcpc.script"

# Fixed timestamps: the same inputs give the same initrd.img.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --renumber-inodes --ignore-devno | gzip -9n) >"$work/initrd.img"
cp "$vmlinuz" "$work/vmlinuz"

# --- disk image ----------------------------------------------------------------
mkdir -p "$work/diskfs"
printf 'vm-provider test base image\nkernel package: %s\n' "$kpkg" >"$work/diskfs/VMP-BASE-IMAGE"
truncate -s "$disk_size" "$work/disk.raw"
mke2fs -q -F -t ext2 -L vmp-base -d "$work/diskfs" "$work/disk.raw" >>"$log" 2>&1 ||
    { cat "$log" >&2; die "mke2fs failed"; }
qemu-img convert -q -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
qemu-img check -q "$work/disk.qcow2"

# --- publish -----------------------------------------------------------------
chmod 0644 "$work"/{vmlinuz,initrd.img,disk.qcow2}
for f in "${outputs[@]}"; do
    mv -f "$work/$f" "$cache/$f"
done
cat >"$cache/build-info" <<EOF
kernel_package=$kpkg
kernel_version=$kver
modules=${load_order[*]}
builtin_modules=${builtin[*]}
EOF
echo "$key" >"$cache/.build-key"
echo "guest built: $kpkg, initrd $(du -k "$cache/initrd.img" | cut -f1) KiB, modules: ${load_order[*]}" >&2
# libvirt runs QEMU as libvirt-qemu, which cannot open files under /root.
if ((EUID == 0)) && id libvirt-qemu >/dev/null 2>&1 &&
    ! setpriv --reuid=libvirt-qemu --regid=libvirt-qemu --init-groups test -r "$cache/vmlinuz"; then
    echo "note: QEMU (user libvirt-qemu) cannot read $cache; copy the files or set VMP_TESTBED_CACHE=/var/cache/vm-provider-testbed" >&2
fi
echo "$cache"
