"""The connection to libvirt: open, notice when it is gone, open again.

libvirt-python connections are thread-safe; one is shared by all worker
threads. libvirt's default event loop runs in a daemon thread (registered
once per process, before the first connection opens): it lets libvirt read
the socket between calls, so a daemon that stops or restarts is noticed at
once (libvirt runs the connection's close callback), and it delivers the
domain events power operations wait for. Keepalive probes, which time out a
link whose peer vanished without closing it, run on remote connections
only: a local daemon's socket closes when the daemon goes, and the probes'
timer costs every call a wake-up of the event loop thread.

:meth:`Connection.get` hands out the connection and opens a new one once
the close callback said the old one is gone, so after a daemon restart the
next call simply works; it asks libvirt nothing (it runs on every call). A
call that was in flight when the daemon went away fails with UNAVAILABLE
(the backend then drops the connection, see
:func:`~vm_provider_libvirt.errors.connection_lost`).
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import libvirt

from provider_core import PermissionDenied, Unauthenticated, Unavailable

from . import errors

log = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_loop_started = False

#: Seconds between keepalive probes, and unanswered probes before the
#: connection counts as dead (remote connections only, see :func:`is_local`).
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler is set; errors
    reach us as exceptions anyway."""


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread
    (once per process)."""
    global _loop_started  # noqa: PLW0603 - one loop per process, by libvirt's design
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(_quiet, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def is_local(uri: str) -> bool:
    """The URI reaches a daemon on this host over its unix socket (or an
    in-process driver such as ``test:///``): no host, no network transport."""
    parts = urlsplit(uri)
    return not parts.hostname and parts.scheme.partition("+")[2] in ("", "unix")


def safe_uri(uri: str) -> str:
    """The URI without user info or query (which may carry key files)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class Connection:
    """A self-healing libvirt connection."""

    def __init__(self, uri: str, attempts: int = 3) -> None:
        self.uri = uri
        self.attempts = attempts
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._lost = False
        self.generation = 0
        """Counts opened connections (caches keyed on it go stale on reconnect)."""

    def get(self) -> libvirt.virConnect:
        """The connection, reconnecting when the daemon went away.
        Raises Unavailable when the daemon cannot be reached."""
        conn = self._conn
        if conn is not None and not self._lost:
            return conn
        with self._lock:
            conn = self._conn
            if conn is not None and not self._lost:
                return conn
            if conn is not None:
                log.info("libvirt connection to %s was lost; reconnecting", safe_uri(self.uri))
                _close(conn)
                self._conn = None
            self._conn = self._open()
            self._lost = False
            self.generation += 1
            return self._conn

    def invalidate(self) -> None:
        """Drop the connection (after an error saying it is gone)."""
        with self._lock:
            if self._conn is not None:
                _close(self._conn)
                self._conn = None

    def close(self) -> None:
        self.invalidate()

    def _open(self) -> libvirt.virConnect:
        ensure_event_loop()
        delay = 0.2
        for attempt in range(1, self.attempts + 1):
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                error = errors.translate(exc, f"cannot connect to libvirt at {safe_uri(self.uri)}")
                if isinstance(error, Unauthenticated | PermissionDenied):
                    raise error from exc
                if attempt == self.attempts:
                    raise Unavailable(str(error)) from exc
                time.sleep(delay)
                delay *= 2
                continue
            self._watch(conn)
            log.info("connected to libvirt at %s", safe_uri(self.uri))
            return conn
        raise AssertionError("unreachable")

    def _watch(self, conn: libvirt.virConnect) -> None:
        try:
            conn.registerCloseCallback(self._closed, None)
            if not is_local(conn.getURI()):
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # local drivers have no keepalive
                raise errors.translate(exc, "libvirt connection") from exc

    def _closed(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        """Close callback (event loop thread): the next :meth:`get` reconnects."""
        if conn is self._conn:
            self._lost = True
        log.warning("libvirt closed the connection to %s (reason %d)", safe_uri(self.uri), reason)


def _close(conn: libvirt.virConnect) -> None:
    try:
        conn.unregisterCloseCallback()
    except libvirt.libvirtError:
        pass
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


__all__ = ["Connection", "ensure_event_loop", "is_local", "safe_uri"]
