#!/usr/bin/env bash
# Builds the vm-provider container image (Containerfile) with podman.
#
#   bash tools/build-image.sh [--setup-host] [--local-base] [--tag NAME:TAG]
#
# --setup-host  (root, Debian 12) install podman, runc and debootstrap, and
#               write /etc/containers/containers.conf for hosts without
#               systemd if there is none: runc, cgroupfs, no default ulimits.
# --local-base  never pull the base image: when it is not present, make it
#               from Debian's own packages (debootstrap --variant=minbase,
#               trimmed like the official -slim image) and tag it under the
#               public name the Containerfile's FROM names. Without this
#               flag a pull is tried first, and the local base made if the
#               pull fails (no registry reachable).
# --tag         the image's name (default: $VMP_IMAGE, else vm-provider:dev).
#
# Prints the image's size and the build's duration at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

base=docker.io/library/debian:bookworm-slim
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=${VMP_IMAGE:-vm-provider:dev}
setup_host=0
local_base=0
while [ $# -gt 0 ]; do
  case "$1" in
    --setup-host) setup_host=1 ;;
    --local-base) local_base=1 ;;
    --tag) tag=$2; shift ;;
    --tag=*) tag=${1#--tag=} ;;
    *) echo "build-image: unknown argument $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$setup_host" = 1 ]; then
  missing=()
  for p in podman runc debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "build-image: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ! -e /etc/containers/containers.conf ]; then
    mkdir -p /etc/containers
    cat >/etc/containers/containers.conf <<'EOF'
# For hosts without systemd (CI machines): crun cannot manage cgroups
# there, and the default file-descriptor limit cannot be raised.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
  fi
fi

command -v podman >/dev/null || { echo "build-image: podman is not installed (try --setup-host, as root)" >&2; exit 1; }

make_base() {
  # The official -slim image is debootstrap minbase without documentation,
  # manuals and translations; do the same from Debian's own archive.
  command -v debootstrap >/dev/null || { echo "build-image: debootstrap is not installed (try --setup-host)" >&2; exit 1; }
  dir=$(mktemp -d /var/tmp/vm-provider-base.XXXXXX)
  trap 'rm -rf "$dir"' EXIT
  echo "build-image: making $base from $mirror (debootstrap --variant=minbase bookworm)"
  debootstrap --variant=minbase bookworm "$dir" "$mirror" >/dev/null
  cat >"$dir/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$dir/etc/apt/apt.conf.d/slim" <<'EOF'
APT::Install-Recommends "false";
Acquire::Languages "none";
EOF
  rm -f "$dir/etc/apt/sources.list"
  cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$dir"/usr/share/{man,info,locale,lintian}/* "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
    "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log "$dir"/var/log/apt/*
  tar -C "$dir" --numeric-owner -c . | podman import --quiet - "$base" >/dev/null
  rm -rf "$dir"
}

started=$(date +%s)
if ! podman image exists "$base"; then
  if [ "$local_base" = 1 ] || ! timeout 120 podman pull --quiet "$base" >/dev/null 2>&1; then
    make_base
    echo "build-image: base made in $(($(date +%s) - started)) s"
  fi
fi

# pip in the build trusts the CA bundle this host's pip trusts.
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
podman build --jobs=2 --network=host --pull=never --secret "id=ca,src=$ca" --file Containerfile --tag "$tag" .
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "build-image: $tag built in $(($(date +%s) - started)) s; size $((size / 1000000)) MB ($size bytes)"
