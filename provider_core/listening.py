"""What the server listens with: its address and its TLS credentials,
checked before grpc sees them.

grpc reports a bad certificate or a port in use with lines of its C core
and then "Failed to bind", blaming the port whatever went wrong. These
checks run first and name the setting, the file and what to do.
"""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path

import grpc

from .config import ServerSettings
from .errors import ConfigError


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


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """grpc's credentials for ``settings``' TLS files, once Python's ssl
    module has found them readable, PEM, and the key the certificate's."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    cert = _read(settings.tls_cert, "tls_cert")
    key = _read(settings.tls_key, "tls_key")
    ca = _read(settings.tls_client_ca, "tls_client_ca") if settings.tls_client_ca else None
    _certificates(cert, settings.tls_cert, "tls_cert")
    if ca is not None and settings.tls_client_ca is not None:
        _certificates(ca, settings.tls_client_ca, "tls_client_ca")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.tls_cert, settings.tls_key, password=_no_password)
    except _Encrypted:
        raise ConfigError(
            f"tls_key {settings.tls_key} is encrypted; give it unencrypted (openssl pkey -in KEY -out NEW)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"tls_key {settings.tls_key} is not the key of tls_cert {settings.tls_cert}; give the pair that belongs together"
            ) from None
        raise ConfigError(f"tls_key {settings.tls_key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def security(settings: ServerSettings) -> str:
    """How calls are protected, for the start line."""
    tls = "mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext"
    return f"{tls}, {'token required' if settings.auth_token else 'no token'}"
