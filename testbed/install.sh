#!/usr/bin/env bash
# Install the Debian packages the test bed needs (libvirt, PostgreSQL) (Debian 12, as root).
# Idempotent: does nothing when every package is already installed.
set -euo pipefail

PACKAGES=(
    # daemon, hypervisor and tools
    libvirt-daemon-system
    libvirt-daemon-driver-qemu
    libvirt-daemon-config-network
    libvirt-clients
    qemu-system-x86
    qemu-utils
    # libvirt-python builds against these
    pkg-config
    gcc
    libvirt-dev
    # running the daemon without systemd, in its own network namespace
    tini
    iproute2
    util-linux
    dnsmasq-base
    iptables
    # building the test guest (build-guest.sh)
    busybox-static
    cpio
    e2fsprogs
    xz-utils
    zstd
    genisoimage
    # a remote-transport stand-in for the tests (qemu+ext relaying to the local socket)
    netcat-openbsd
    # an SSH server for the qemu+ssh tests (backends/libvirt/tests/test_ssh.py)
    openssh-server
    # what a Proxmox node runs for transfer mode direct (backends/proxmox/tests/test_direct.py)
    curl
    # UEFI firmware (OVMF) for the firmware tests: descriptors in /usr/share/qemu/firmware
    ovmf
    # libvirt disk pools on loop devices: libvirt partitions them with parted
    # (backends/libvirt/tests/test_libvirtd_storage.py)
    parted
    # the shared state store of several replicas (testbed/postgres.sh)
    postgresql
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "testbed packages: all ${#PACKAGES[@]} installed"
    exit 0
fi

if ((EUID != 0)); then
    echo "install.sh: must run as root to install: ${missing[*]}" >&2
    exit 1
fi

log=$(mktemp /tmp/vmp-testbed-install.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update && apt-get install -y "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "install.sh: apt-get failed, full log in $log" >&2
    exit 1
fi
rm -f "$log"
echo "testbed packages: installed ${missing[*]}"
