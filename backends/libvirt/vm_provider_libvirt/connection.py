"""The connection to libvirt: open, notice when it is gone, open again.

libvirt-python connections are thread-safe; one is shared by all worker
threads.

libvirt's default event loop is registered once per process, before the
first connection opens, and runs in a daemon thread only while something
needs it (:func:`event_loop`): a remote connection, for its keepalive
probes (which time out a link whose peer vanished without closing it), and
a wait for a domain event (a graceful reboot). While it runs, every call
on a connection wakes it twice (libvirt takes the socket from the loop for
the call and gives it back), which cost a local Describe a quarter of its
time; a local daemon needs neither probes nor the loop to be noticed gone:
its socket closes with it, and the next call fails and reconnects.

:meth:`Connection.get` hands out the connection and opens a new one once
the close callback said the old one is gone, so after a daemon restart the
next call simply works; it asks libvirt nothing (it runs on every call). A
call on a connection whose daemon went away fails with UNAVAILABLE (the
backend then drops the connection, see
:func:`~vm_provider_libvirt.errors.connection_lost`); read-only calls are
retried once on a new connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import libvirt

from provider_core import PermissionDenied, Unauthenticated, Unavailable
from provider_core.urls import redact

from . import errors
from .login import Login

log = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_loop_registered = False
_loop_users = 0
_loop_thread: threading.Thread | None = None

#: Seconds between keepalive probes, and unanswered probes before the
#: connection counts as dead (remote connections only, see :func:`is_local`).
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler is set; errors
    reach us as exceptions anyway."""


def register_event_loop() -> None:
    """Register libvirt's default event loop (once per process; connections
    opened before it would never get events or keepalive)."""
    global _loop_registered  # noqa: PLW0603 - one loop per process, by libvirt's design
    with _loop_lock:
        if not _loop_registered:
            libvirt.registerErrorHandler(_quiet, None)
            libvirt.virEventRegisterDefaultImpl()
            _loop_registered = True


def _run_loop() -> None:
    global _loop_thread  # noqa: PLW0603
    while True:
        with _loop_lock:
            if _loop_users == 0:
                _loop_thread = None
                return
        libvirt.virEventRunDefaultImpl()


def _wake_loop(timer: int, _opaque: object) -> None:
    libvirt.virEventRemoveTimeout(timer)


def hold_event_loop() -> None:
    """Run the event loop until as many :func:`release_event_loop` calls."""
    global _loop_users, _loop_thread  # noqa: PLW0603
    register_event_loop()
    with _loop_lock:
        _loop_users += 1
        if _loop_thread is None:
            _loop_thread = threading.Thread(target=_run_loop, name="libvirt-events", daemon=True)
            _loop_thread.start()


def release_event_loop() -> None:
    global _loop_users  # noqa: PLW0603
    with _loop_lock:
        _loop_users -= 1
        if _loop_users > 0 or _loop_thread is None:
            return
    # A timer due at once ends the loop's current wait, so its thread sees
    # that nobody needs it any more and ends.
    libvirt.virEventAddTimeout(0, _wake_loop, None)


def event_loop_running() -> bool:
    with _loop_lock:
        return _loop_thread is not None and _loop_users > 0


@contextlib.contextmanager
def event_loop() -> Iterator[None]:
    """Run libvirt's event loop while the block runs."""
    hold_event_loop()
    try:
        yield
    finally:
        release_event_loop()


def is_local(uri: str) -> bool:
    """The URI reaches a daemon on this host over its unix socket (or an
    in-process driver such as ``test:///``): no host, no network transport."""
    parts = urlsplit(uri)
    return not parts.hostname and parts.scheme.partition("+")[2] in ("", "unix")


def safe_uri(uri: str) -> str:
    """The URI as the core writes URLs in logs: no user info, no query
    (which may name key files)."""
    return redact(uri)


class Connection:
    """A self-healing libvirt connection, opened as ``login`` says
    (:mod:`~vm_provider_libvirt.login`)."""

    def __init__(self, login: Login, attempts: int = 3) -> None:
        self.login = login
        self.uri = login.uri
        self.attempts = attempts
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._lost = False
        self._holding_loop = False
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
                self._drop_locked()
            self._conn = self._open()
            self._lost = False
            self.generation += 1
            return self._conn

    def invalidate(self) -> None:
        """Drop the connection (after an error saying it is gone)."""
        with self._lock:
            self._drop_locked()

    def _drop_locked(self) -> None:
        if self._conn is not None:
            _close(self._conn)
            self._conn = None
        self._release_loop()

    def _release_loop(self) -> None:
        if self._holding_loop:
            self._holding_loop = False
            release_event_loop()

    def close(self) -> None:
        self.invalidate()

    def _open(self) -> libvirt.virConnect:
        register_event_loop()
        delay = 0.2
        for attempt in range(1, self.attempts + 1):
            try:
                conn = self.login.open()
            except libvirt.libvirtError as exc:
                error = errors.translate(exc, f"cannot connect to libvirt at {safe_uri(self.uri)}")
                error = self.login.explain(error)
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
            if is_local(conn.getURI()):
                return
            hold_event_loop()  # for the keepalive probes, as long as this connection is open
            self._holding_loop = True
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError as exc:
            if not errors.is_unsupported(exc):  # local drivers have no keepalive
                _close(conn)
                self._release_loop()
                raise errors.translate(exc, "libvirt connection") from exc

    def _closed(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        """Close callback (event loop thread, or the thread whose call found
        the connection closed): the next :meth:`get` reconnects."""
        if conn is self._conn:
            self._lost = True
        log.warning("libvirt closed the connection to %s (reason %d)", safe_uri(self.uri), reason)


def _close(conn: libvirt.virConnect) -> None:
    """Close a connection that may be dead already."""
    with errors.ignoring(errors.any_error):
        conn.unregisterCloseCallback()
    with errors.ignoring(errors.any_error):
        conn.close()


__all__ = [
    "Connection",
    "event_loop",
    "event_loop_running",
    "hold_event_loop",
    "is_local",
    "register_event_loop",
    "release_event_loop",
    "safe_uri",
]
