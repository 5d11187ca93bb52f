#!/usr/bin/env bash
# Entry point for a fresh Debian 12 machine (as root): installs the few
# Debian packages the build needs (make, Python's venv, libvirt headers),
# then runs the Makefile target given: `bash dev.sh run`, `bash dev.sh test`.
set -euo pipefail
cd "$(dirname "$0")"
bash tools/bootstrap.sh
exec make "$@"
