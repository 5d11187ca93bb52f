"""TLS in front of the gRPC server.

grpc's Python API can set neither the oldest TLS version a server accepts
(its core allows 1.2 and 1.3) nor a check of the client certificate's
names, and it reloads certificates only through a callback that cannot
say which client is connecting. So the provider terminates TLS itself,
with Python's ssl module (OpenSSL) on the event loop the server runs on:

- each accepted connection does its handshake with the context
  :class:`~provider_core.listening.Credentials` holds at that moment (a
  fresh one after the files changed; they are looked at in a thread, off
  the event loop); the client certificate is verified
  against the CA before a single byte reaches grpc (a failed handshake
  ends the connection: the client sees UNAVAILABLE);
- a verified certificate none of whose names is in ``allowed_sans`` is
  let through, but marked refused: :mod:`provider_core.auth` answers each
  of its calls PERMISSION_DENIED naming the certificate, as VirtRigaud's
  own providers do, instead of an UNAVAILABLE the manager would retry;
- then it is spliced to grpc, which listens on a unix socket in a private
  directory (0700, the socket 0600) and nowhere else. Bytes are passed on
  as they come: no parsing, no copies beyond the transports' own; each
  side pauses reading while the other cannot write (backpressure); an end
  of input is passed on where the transport can half-close (the unix
  socket), otherwise the connection is closed (TLS has no half-close).

grpc sees each connection come from a unix socket bound to an abstract
name made at random; :data:`_clients` maps that name to what the TLS
layer knows of the client (:func:`client`), so that grpc's
``context.peer()`` of a call leads to the TLS client's address. A name
not in the map (any other process may bind one) is shown as it is.

Refused handshakes are logged with the peer's address and the reason, at
most a few per interval, then counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .listening import Credentials

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to finish its TLS handshake."""
PEER_PREFIX = "vm-provider-"
"""Start of the abstract unix name each spliced connection has on grpc's
side, followed by random hex digits; see :func:`client`."""
ABSTRACT = "unix-abstract:"
"""How grpc's ``context.peer()`` writes a peer on an abstract unix name."""
PENDING_LIMIT = 256 * 1024
"""Bytes a client may send before grpc is connected, after which its
reading is paused until it is: a call's first frames fit, a flood does not."""


def peer_names(cert: dict[str, Any]) -> list[str]:
    """The names of a verified peer certificate that ``allowed_sans`` is
    matched against: its DNS and URI SANs, and its CN."""
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    names += [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names


@dataclass(frozen=True)
class Client:
    """A connection the TLS layer spliced to grpc, as that layer saw it."""

    peer: str
    """The client's address as grpc writes a TCP peer (``ipv4:10.0.0.7:41234``)."""
    refused: str | None = None
    """Why each of its calls is refused (its certificate is not in
    ``allowed_sans``), or None."""


_clients: dict[str, Client] = {}
"""The connections spliced to grpc now, by the abstract name of their unix
socket on grpc's side (in this process only)."""


def client(peer: str) -> Client | None:
    """The TLS client behind grpc's ``context.peer()``; None for a call
    that did not come through the TLS layer of this process."""
    return _clients.get(peer.removeprefix(ABSTRACT)) if peer.startswith(ABSTRACT) else None


def client_peer(peer: str) -> str:
    """The client's address for grpc's ``context.peer()``: a call that came
    through the TLS layer names the TLS client (``ipv4:10.0.0.7:41234``), not
    the layer's unix socket; any other peer is returned as it is."""
    found = client(peer)
    return found.peer if found is not None else peer


def not_allowed(names: list[str]) -> str:
    """What a client whose certificate is not in ``allowed_sans`` is told."""
    return f"client certificate {', '.join(names) or 'without names'} is not in allowed_sans"


class RefusalLog:
    """Warnings of refused connections: ``burst`` per ``interval`` seconds,
    then how many more were refused (at the end of the interval, or at
    :meth:`flush`)."""

    def __init__(self, burst: int = 5, interval: float = 10.0) -> None:
        self.burst, self.interval = burst, interval
        self._start = -interval
        self._logged = self._more = 0
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, peer: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._start >= self.interval:
            self.flush()
            self._start, self._logged = now, 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning("refused a TLS connection from %s: %s", peer, reason)
            return
        self._more += 1
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no event loop: counted at the next refusal
                self._timer = asyncio.get_running_loop().call_later(self._start + self.interval - now, self.flush)

    def flush(self) -> None:
        """Log how many refusals were counted and not logged, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._more:
            log.warning("refused %d more TLS connections in the last %.0fs", self._more, time.monotonic() - self._start)
            self._more = 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        hints = {
            "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
            "UNSUPPORTED_PROTOCOL": "TLS version below the minimum",
            "TLSV1_ALERT_PROTOCOL_VERSION": "TLS version below the minimum",
            "NO_SHARED_CIPHER": "no cipher in common",
            "WRONG_VERSION_NUMBER": "not TLS",
            "HTTP_REQUEST": "not TLS (plain HTTP)",
        }
        return hints.get(reason, reason.replace("_", " ").lower())
    if isinstance(exc, ConnectionAbortedError):  # how asyncio and uvloop end a handshake that takes too long
        return f"no handshake within {HANDSHAKE_TIMEOUT:.0f}s"
    return "closed during the handshake"


class _Side(asyncio.Protocol):
    """One end of a spliced connection: what it receives, the other sends."""

    def __init__(self, conn: _Connection, half_close: bool) -> None:
        self.conn = conn
        self.half_close = half_close  # whether its transport stays open for writing after an end of input
        self.transport: Any = None  # asyncio.Transport; uvloop's are no subclasses of it
        self.other: _Side | None = None
        self.pending: list[bytes] = []  # received before the other end was connected
        self.waiting = 0  # bytes in pending
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        other = self.other
        if other is None or other.transport is None:
            return
        # Spliced: what the other end sent meanwhile goes first, then its end, if it came.
        for data in other.pending:
            self.transport.write(data)
        other.pending.clear()
        if other.ended:
            if self.half_close:
                self.transport.write_eof()
            else:
                self.transport.close()
        else:
            other.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.other is None or self.other.transport is None:
            self.pending.append(data)
            self.waiting += len(data)
            if self.waiting > PENDING_LIMIT:
                self.transport.pause_reading()  # until grpc is connected
        else:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        if self.other is None or self.other.transport is None:
            return False  # not spliced yet: the end is passed on when it is
        other = self.other.transport
        if self.other.ended or not other.can_write_eof():
            other.close()
            return False
        other.write_eof()
        return self.half_close

    def pause_writing(self) -> None:
        if self.other and self.other.transport:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other and self.other.transport:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.conn.lost()


class _Connection:
    """A client's connection: TLS on one side, grpc's unix socket on the other."""

    def __init__(self) -> None:
        self.client = _Side(self, half_close=False)  # TLS: an end of input ends the connection
        self.grpc = _Side(self, half_close=True)
        self.client.other, self.grpc.other = self.grpc, self.client
        self.closed = asyncio.Event()

    def lost(self) -> None:
        for side in (self.client, self.grpc):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        if all(s.transport is None or s.transport.is_closing() for s in (self.client, self.grpc)):
            self.closed.set()

    def abort(self) -> None:
        for side in (self.client, self.grpc):
            if side.transport is not None:
                side.transport.abort()
        self.closed.set()


class TlsFront:
    """The provider's listening socket, terminating TLS, in front of grpc
    on :attr:`upstream` (a unix socket only this process can reach)."""

    def __init__(self, sock: socket.socket, credentials: Credentials, allowed_sans: list[str]) -> None:
        self.sock = sock
        self.credentials = credentials
        self._listening: tuple[str, int] | None = None  # a unix socket's path and inode: removed at close
        if sock.family == socket.AF_UNIX and isinstance(sock.getsockname(), str) and sock.getsockname():
            path = sock.getsockname()
            self._listening = (path, os.stat(path).st_ino)
        self.allowed = set(allowed_sans)
        try:
            self.directory = Path(tempfile.mkdtemp(prefix="vm-provider-grpc-"))  # 0700; /tmp is writable in the pod
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"TLS: cannot make a private directory for the gRPC socket in {tempfile.gettempdir()}: {exc.strerror}; "
                "set TMPDIR to a writable directory"
            ) from None
        self.upstream = self.directory / "grpc.sock"
        self.refusals = RefusalLog()
        self._accepting: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1]) if self.sock.family != socket.AF_UNIX else 0

    def secure_upstream(self) -> None:
        """Once grpc has made its socket: only this user may connect to it."""
        os.chmod(self.upstream, 0o600)

    async def start(self) -> None:
        self._accepting = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(self.sock)
            except OSError as exc:  # e.g. out of file descriptors: wait, as a TCP backlog does
                log.warning("cannot accept connections on %s: %s", _address(self.sock.getsockname()), exc.strerror or exc)
                await asyncio.sleep(0.5)
                continue
            self.spawn(self.serve(sock, address))

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, sock: socket.socket, address: Any) -> None:
        """One client: handshake, names, then splice it to grpc until either end closes."""
        peer = _address(address)
        conn = _Connection()
        loop = asyncio.get_running_loop()
        try:
            context = await self.credentials.current()
        except BaseException:  # cancelled: the provider stops
            sock.close()
            raise
        try:
            tls, _ = await loop.connect_accepted_socket(
                lambda: conn.client, sock, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            sock.close()
            self.refusals.refused(peer, _reason(exc))
            return
        refusal = None
        if self.allowed:
            names = peer_names(tls.get_extra_info("peercert") or {})
            if not self.allowed & set(names):
                refusal = not_allowed(names)
                shown = ", ".join(names) or "no names"
                why = f"client certificate names {shown}; none is in allowed_sans (its calls: PERMISSION_DENIED)"
                self.refusals.refused(peer, why)
        self._connections.add(conn)
        name = f"{PEER_PREFIX}{secrets.token_hex(16)}"
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.bind(f"\0{name}")  # Linux only: grpc then names it in context.peer()
            except OSError:
                if refusal is not None:  # its calls could not be told apart: end it
                    upstream.close()
                    conn.abort()
                    return
            _clients[name] = Client(_grpc_peer(address), refusal)
            upstream.setblocking(False)
            try:
                await loop.sock_connect(upstream, str(self.upstream))
                await loop.create_unix_connection(lambda: conn.grpc, sock=upstream)
            except BaseException:
                upstream.close()
                raise
            await conn.closed.wait()
        except OSError as exc:
            log.warning("cannot reach the gRPC server on %s: %s", self.upstream, exc.strerror or exc)
            conn.abort()
        finally:
            _clients.pop(name, None)
            self._connections.discard(conn)

    def close(self) -> None:
        """Accept no more connections (open ones go on); a unix socket's
        file is removed (if it is still this one's)."""
        if self._accepting is not None:
            self._accepting.cancel()
        self.sock.close()
        if self._listening is not None:
            path, inode = self._listening
            self._listening = None
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)

    async def stop(self) -> None:
        """Close what is still open and remove grpc's private socket."""
        self.close()
        for conn in list(self._connections):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self.remove()

    def remove(self) -> None:
        """Remove grpc's private socket, and the listening one's file (a start that failed)."""
        self.close()
        self.refusals.flush()
        shutil.rmtree(self.directory, ignore_errors=True)


def _grpc_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"ipv6:[{host}]:{address[1]}" if ":" in host else f"ipv4:{host}:{address[1]}"
    return "unix:"


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "unix socket")
