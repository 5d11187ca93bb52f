"""What the server listens with: its address and its TLS credentials,
checked before anything is bound.

grpc reports a bad certificate or a port in use with lines of its C core
and then "Failed to bind", blaming the port whatever went wrong. These
checks run first and name the setting, the file and what to do.

TLS is Python's ssl module's (OpenSSL), not grpc's: grpc's Python API can
set neither a minimum TLS version nor a check of the client's name, so
:mod:`provider_core.tls_proxy` terminates TLS with the
:class:`ssl.SSLContext` built here and hands the plain bytes to grpc.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import INSECURE_ENV, ServerSettings
from .errors import ConfigError

log = logging.getLogger(__name__)
DIR_FILES = ("tls.crt", "tls.key", "ca.crt")
"""The files of ``tls_dir``, as a Kubernetes TLS Secret names them."""
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def split_listen(listen: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` (``[v6]:PORT``); None for unix sockets."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:50051, [::]:50051, 0.0.0.0:50051)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_address(listen: str, reuse_port: bool = False) -> None:
    """Refuse an address this host does not have, or a port another process
    listens on (unless ``reuse_port``: then sharing it is wanted)."""
    parsed = split_listen(listen)
    if parsed is None:
        return
    host, port = parsed
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {listen}: {host!r} does not resolve ({exc.strerror}); fix listen") from None
    if port == 0:
        return
    for family, kind, proto, _, address in found:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. IPv6 disabled: grpc skips it too
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is no conflict
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if family == socket.AF_INET6 and not host.strip(":") and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # IPv6 without an address: bind serves 0.0.0.0
                raise ConfigError(f"cannot listen on {listen}: {_why(exc, host, port, reuse_port)}") from None


def _why(exc: OSError, host: str, port: int, reuse_port: bool) -> str:
    if exc.errno == errno.EADDRINUSE:
        if reuse_port:
            return f"port {port} is in use by a process that does not share it"
        return f"port {port} is in use by another process; stop it, or choose another listen address"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this host; listen on one of its addresses, or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"permission denied (ports below 1024 need privileges); listen on port {max(port, 1024)} or above"
    return exc.strerror or str(exc)


@dataclass(frozen=True)
class TlsFiles:
    """The files TLS is served from, and the setting each came from."""

    cert: Path
    key: Path
    ca: Path | None
    labels: tuple[str, str, str] = ("tls_cert", "tls_key", "tls_client_ca")

    def signature(self) -> tuple[tuple[int, int, int, int], ...]:
        """What changes when any of the files does: in place, or by a
        swap of the symbolic links they are reached through."""
        found = []
        for path in (self.cert, self.key, self.ca):
            if path is not None:
                st = os.stat(path)
                found.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(found)


def tls_files(settings: ServerSettings) -> TlsFiles | None:
    """The TLS files ``settings`` name; None to serve plaintext. Refuses
    a partial set, and no files at all under ``require_tls``."""
    if settings.tls_dir is not None:
        cert, key, ca = paths = [settings.tls_dir / name for name in DIR_FILES]
        missing = [p.name for p in paths if not p.exists()]
        if not missing:
            return TlsFiles(cert, key, ca, labels=("tls_dir", "tls_dir", "tls_dir"))
        if len(missing) < len(paths):
            raise ConfigError(f"tls_dir {settings.tls_dir} lacks {', '.join(missing)}; it needs all of {', '.join(DIR_FILES)}")
        if settings.require_tls:
            raise ConfigError(
                f"require_tls: tls_dir {settings.tls_dir} holds none of {', '.join(DIR_FILES)}; "
                f"provision them, or set {INSECURE_ENV}=true to serve plaintext"
            )
        return None
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key")
        if settings.require_tls:
            raise ConfigError(f"require_tls: no TLS files are set; set tls_dir, or tls_cert and tls_key (or {INSECURE_ENV}=true)")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    return TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _certificates(data: bytes, path: Path, setting: str) -> None:
    try:
        ssl.create_default_context().load_verify_locations(cadata=data.decode("ascii"))
    except (ValueError, ssl.SSLError):  # UnicodeDecodeError is a ValueError; so is empty cadata
        raise ConfigError(f"{setting} {path} holds no PEM certificate; give the PEM file (-----BEGIN CERTIFICATE-----)") from None


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    raise _Encrypted


def _context(files: TlsFiles, min_version: str) -> ssl.SSLContext:
    cert_label, key_label, ca_label = files.labels
    cert = _read(files.cert, cert_label)
    _read(files.key, key_label)
    ca = _read(files.ca, ca_label) if files.ca else None
    _certificates(cert, files.cert, cert_label)
    if ca is not None and files.ca is not None:
        _certificates(ca, files.ca, ca_label)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    context.set_alpn_protocols(["h2"])  # grpc clients refuse a server that does not choose HTTP/2
    try:
        context.load_cert_chain(files.cert, files.key, password=_no_password)
    except _Encrypted:
        raise ConfigError(f"{key_label} {files.key} is encrypted; give it unencrypted (openssl pkey -in KEY -out NEW)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{key_label} {files.key} is not the key of {cert_label} {files.cert}; give the pair that belongs together"
            ) from None
        raise ConfigError(f"{key_label} {files.key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    if ca is not None:
        context.load_verify_locations(cadata=ca.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(files: TlsFiles, min_version: str = "1.3") -> ssl.SSLContext:
    """A TLS server context of ``files``, once they are found readable, PEM,
    and the key the certificate's; read again if they change meanwhile."""
    for _ in range(5):
        try:
            before = files.signature()
        except OSError:
            before = None  # _context names the file
        context = _context(files, min_version)
        if files.signature() == before:
            break
    return context


class Credentials:
    """The TLS context for new connections: built again when the files
    change (a new certificate, key or CA: a rotation); a broken new set
    keeps the context in use, with a warning. Open connections keep theirs.

    The files are looked at (:meth:`check`) in a thread, never on the event
    loop (:meth:`current`): a stat of a file on a slow or hung filesystem,
    or reading and loading a new set, would hold up every call meanwhile."""

    def __init__(self, files: TlsFiles, min_version: str) -> None:
        self.files = files
        self.min_version = min_version
        try:  # taken first: files changing after the context is built are seen at the next connection
            signature: object = files.signature()
        except OSError:
            signature = None  # server_context names the file
        self.context = server_context(files, min_version)  # names what is wrong with the files
        self._signature = signature
        self._refused: object = None
        self._checking: asyncio.Lock | None = None
        self._checked = float("-inf")  # when the last check began (time.monotonic)

    @property
    def mutual(self) -> bool:
        return self.files.ca is not None

    async def current(self) -> ssl.SSLContext:
        """The context to serve a new connection with, the files checked in
        a thread: one check at a time, and one that began after this call
        did answers for it too (connections arriving together share it)."""
        asked = time.monotonic()
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:
            if self._checked >= asked:
                return self.context
            self._checked = time.monotonic()
            return await asyncio.to_thread(self.check)

    def check(self) -> ssl.SSLContext:
        """The context of the files as they are now (a few stat calls when
        nothing changed; a blocking call: see :meth:`current`)."""
        try:
            signature: object = self.files.signature()
        except OSError as exc:
            signature = ("unreadable", exc.filename, exc.strerror)
            if signature != self._refused:
                self._refused = signature
                log.warning("TLS files changed: %s: %s; serving the previous certificate", exc.filename, exc.strerror)
            return self.context
        if signature in (self._signature, self._refused):
            return self.context
        try:
            context = server_context(self.files, self.min_version)
        except (ConfigError, OSError, ssl.SSLError) as exc:
            self._refused = signature
            log.warning("TLS files changed but %s; serving the previous certificate", exc)
            return self.context
        self.context, self._signature, self._refused = context, signature, None
        log.info("TLS files changed: new connections get the new certificate from %s", self.files.cert)
        return context


def security(settings: ServerSettings, files: TlsFiles | None) -> str:
    """How calls are protected, for the start line."""
    token = "token required" if settings.auth_token else "no token"
    if files is None:
        return f"plaintext, {token}"
    if files.ca is None:
        return f"TLS {settings.tls_min_version}+, {token}"
    sans = "on" if settings.allowed_sans else "off"
    return f"mutual TLS {settings.tls_min_version}+, SAN allow-list {sans}, {token}"


def bind(listen: str, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``listen`` (``HOST:PORT`` or ``unix:PATH``),
    for the TLS front (:mod:`provider_core.tls_proxy`); check it first
    with :func:`check_address`. ``[::]`` serves IPv4 too, and is served as
    ``0.0.0.0`` on a host without IPv6, as grpc does; every failure is a
    :class:`ConfigError` naming the address."""
    parsed = split_listen(listen)
    if parsed is None:
        if not listen.startswith("unix:"):
            raise ConfigError(f"listen {listen!r}: TLS is served on HOST:PORT or unix:PATH")
        return _bind_unix(listen, listen.removeprefix("unix:").removeprefix("//"))
    host, port = parsed
    found: list[tuple[Any, ...]]
    try:
        found = list(socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {listen}: {host!r} does not resolve ({exc.strerror}); fix listen") from None
    wildcard = not host.strip(":")  # [::] (or an empty host): every address of the host
    if wildcard:
        ipv4 = (socket.AF_INET, socket.SOCK_STREAM, 0, "", ("0.0.0.0", port))  # noqa: S104  # [::] means every address
        found = [f for f in found if f[0] == socket.AF_INET6] + [ipv4]
    last: OSError | None = None
    for family, kind, proto, _, address in found:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # EAFNOSUPPORT: IPv6 disabled (ipv6.disable=1)
            last = exc
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and wildcard:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] serves IPv4 too, as grpc's does
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                last = exc  # e.g. IPv6 present but with no address: the next answer (0.0.0.0 for [::])
                continue
            raise ConfigError(f"cannot listen on {listen}: {_why(exc, host, port, reuse_port)}") from None
        if wildcard and family == socket.AF_INET:
            log.info("IPv6 is not available on this host (%s): listening on 0.0.0.0:%d", last and last.strerror, port)
        return sock
    why = _why(last, host, port, reuse_port) if last is not None else "no address to listen on"
    raise ConfigError(f"cannot listen on {listen}: {why}")


def _bind_unix(listen: str, path: str) -> socket.socket:
    """A listening unix socket at ``path``; a socket file left there by a
    process that is gone (nobody answers on it) is replaced."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not _stale(listen, path):
                raise
            os.unlink(path)
            sock.bind(path)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {listen}: {path} exists and is no socket; remove it or choose another") from None
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    return sock


def _stale(listen: str, path: str) -> bool:
    """Whether ``path`` is a socket nobody listens on; a ConfigError if someone does."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            return False
    raise ConfigError(f"cannot listen on {listen}: another process listens on {path}; stop it, or choose another path")
