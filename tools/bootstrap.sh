#!/usr/bin/env bash
# Installs what building vm-provider needs on Debian 12 (as root), once:
# Python's venv and headers, a compiler, and libvirt's headers for
# libvirt-python. Fast no-op when everything is present.
set -euo pipefail
pkgs=(make python3 python3-venv python3-dev gcc pkg-config libvirt-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
