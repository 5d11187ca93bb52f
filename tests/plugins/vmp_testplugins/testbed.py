"""Where the test bed's own libvirt daemon listens: the one place the
real-daemon tests and benchmarks take it from.

``testbed/libvirtd.sh start`` runs a private libvirtd (never the machine's
``qemu:///system``); ``make test`` exports its URI as ``VMP_LIBVIRTD_URI``.
Without that variable the URI is asked from ``testbed/libvirtd.sh uri``, so
a plain ``pytest`` after ``libvirtd.sh start`` finds the same daemon.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ENV = "VMP_LIBVIRTD_URI"
SCRIPT = Path(__file__).resolve().parents[3] / "testbed" / "libvirtd.sh"


@cache
def libvirtd_uri() -> str:
    """The URI of the daemon the real-daemon tests use."""
    uri = os.environ.get(ENV, "").strip()
    if uri:
        return uri
    done = subprocess.run(["bash", str(SCRIPT), "uri"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def libvirtd_socket() -> Path | None:
    """The daemon's Unix socket, when its URI names one."""
    found = parse_qs(urlsplit(libvirtd_uri()).query).get("socket")
    return Path(found[0]) if found else None


def libvirtd_pid() -> int | None:
    """libvirtd's pid, from the pid file the test bed keeps next to the
    socket's directory (``<run>/libvirtd.pid`` for ``<run>/libvirt/libvirt-sock``)."""
    sock = libvirtd_socket()
    if sock is None:
        return None
    try:
        return int((sock.parent.parent / "libvirtd.pid").read_text().strip())
    except (OSError, ValueError):
        return None
