"""Where the test bed's own libvirt daemon listens: the one place the
real-daemon tests and benchmarks take it from.

``testbed/libvirtd.sh start`` runs a private libvirtd (never the machine's
``qemu:///system``); ``make test`` exports its URI as ``VMP_LIBVIRTD_URI``.
Without that variable the URI is asked from ``testbed/libvirtd.sh uri``, so
a plain ``pytest`` after ``libvirtd.sh start`` finds the same daemon.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

ENV = "VMP_LIBVIRTD_URI"
SCRIPT = Path(__file__).resolve().parents[3] / "testbed" / "libvirtd.sh"


LIBVIRT_LAYER = Path(__file__).resolve().parents[3] / "backends" / "libvirt" / "tests" / "conftest.py"


def load_libvirt_layer() -> ModuleType:
    """The libvirt backend's test layer (``RealHost``, ``guest_cache``,
    ``libvirtd_unavailable``, ...), for tests outside its folder: its
    conftest imported once by path, as ``libvirt_test_layer``."""
    name = "libvirt_test_layer"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LIBVIRT_LAYER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


POSTGRES_ENV = "VMP_POSTGRES_URL"
POSTGRES_SCRIPT = SCRIPT.parent / "postgres.sh"


@cache
def postgres_url() -> str:
    """The URL of the test bed's PostgreSQL (``testbed/postgres.sh``): from
    ``$VMP_POSTGRES_URL`` (``make test`` sets it), else from the script.
    Tests make a database of their own in it (:func:`fresh_database`)."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if url:
        return url
    done = subprocess.run(["bash", str(POSTGRES_SCRIPT), "url"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def database_url(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


def postgres_instance(directory: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``postgres.sh`` for a private
    instance kept in ``directory`` (a test that stops its own database)."""
    env = {**os.environ, "VMP_TESTBED_PG_DIR": str(directory), "VMP_TESTBED_PG_PORT": str(port)}
    return ["bash", str(POSTGRES_SCRIPT)], env
