"""The one URL policy: which URLs a request may make this process (or a
hypervisor on its behalf) fetch from or send to, and how URLs are written
in logs and errors.

- Schemes: http, https and s3 (:data:`SCHEMES`).
- Addresses: loopback, link-local (which holds cloud metadata services,
  169.254.169.254), private (RFC 1918, unique-local IPv6, shared address
  space) and unspecified addresses are refused, whether the URL names them
  or a name resolves to them, and so are redirects to them, unless the
  operator allows the kind (``[server] allow_addresses``). Multicast and
  reserved addresses are always refused.
- :func:`redact` drops user-info, query string and fragment: presigned URLs
  carry their signature in the query.
- Staging directories: ``pvc://<claim>/<path>`` and
  ``nfs://<server>/<export>/<path>`` name files in directories mounted
  into the provider (``[server] pvc_root``, ``nfs_root``: :func:`set_roots`);
  their host is never connected to, so the address policy does not apply,
  but their paths may not climb (``..``) nor carry a query or fragment
  (:func:`check_staging_url`). Which file they stand for is decided in one
  place, :mod:`provider_core.transfer`.

Requests are checked when they are validated (the URL as written: scheme,
host, and an address literal); code that connects (the transfer code)
checks each address a name resolves to and each redirect with
:func:`check_host` just before connecting. A name that resolves to another
address between that check and the connection (DNS rebinding) is not
caught: operators who fear it resolve through a DNS server that refuses
private answers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SCHEMES = ("http", "https", "s3")
STAGING_SCHEMES = ("pvc", "nfs")
"""Schemes of staging directories mounted into the provider."""
TRANSFER_SCHEMES = (*SCHEMES, *STAGING_SCHEMES)
"""Schemes ExportDisk and ImportDisk accept."""
DEFAULT_PVC_ROOT = Path("/mnt/migration-storage")
"""Where the manager mounts each migration claim: ``<root>/<claim-name>``."""
KINDS = ("loopback", "link-local", "private")
"""Address kinds an operator may allow (``[server] allow_addresses``)."""

#: Credential keys of http(s) transfers.
HTTP_KEYS = frozenset({"token", "bearer_token", "username", "password"})
#: Credential keys of s3 transfers -> their canonical name.
S3_KEYS = {
    "access_key_id": "access_key_id",
    "aws_access_key_id": "access_key_id",
    "secret_access_key": "secret_access_key",
    "aws_secret_access_key": "secret_access_key",
    "session_token": "session_token",
    "aws_session_token": "session_token",
    "endpoint_url": "endpoint_url",
    "region": "region",
    "region_name": "region",
    # VirtRigaud's spellings (internal/storage/migration/options.go)
    "accessKeyID": "access_key_id",
    "secretAccessKey": "secret_access_key",
    "sessionToken": "session_token",
}

_allowed: frozenset[str] = frozenset()
_CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def allow(kinds: Iterable[str]) -> None:
    """Set the address kinds this process allows (at start; default none)."""
    kinds = frozenset(kinds)
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ValueError(f"unknown address kind(s) {', '.join(unknown)}; use {', '.join(KINDS)}")
    global _allowed  # noqa: PLW0603 - one policy per process, set once by the server at start
    _allowed = kinds


def allowed() -> frozenset[str]:
    return _allowed


@dataclass(frozen=True)
class Roots:
    """Where staging directories are mounted into this process."""

    pvc: Path | None = DEFAULT_PVC_ROOT
    """Each claim at ``<pvc>/<claim>``; None: pvc is not offered."""
    nfs: Path | None = None
    """The NFS export; None: nfs is not offered."""

    def backends(self) -> tuple[str, ...]:
        """The staging backends these roots serve, with s3 (which needs
        none): pvc when its directory exists, nfs when it is set."""
        found = []
        if self.pvc is not None and os.path.isdir(self.pvc):
            found.append("pvc")
        if self.nfs is not None:
            found.append("nfs")
        return (*found, "s3")


_roots = Roots()


def set_roots(pvc: Path | None = DEFAULT_PVC_ROOT, nfs: Path | None = None) -> None:
    """Set where staging directories are mounted (at start, like :func:`allow`)."""
    global _roots  # noqa: PLW0603 - one policy per process, set once by the server at start
    _roots = Roots(pvc, nfs)


def roots() -> Roots:
    return _roots


def redact(url: str) -> str:
    """The URL without user-info (``***@``), query string (``?<redacted>``)
    and fragment: safe for logs and error messages. Keeps an empty
    authority (libvirt's ``qemu:///system``) and IPv6 brackets."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "<unparsable URL>"
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    query = "?<redacted>" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


_SHARED = ipaddress.ip_network("100.64.0.0/10")


def kind(address: str) -> str:
    """``public``, a kind of :data:`KINDS`, ``unspecified`` or ``reserved``.
    An IPv4 address inside an IPv6 one (mapped, 6to4) counts as itself."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None and kind(str(embedded)) != "public":
            return kind(str(embedded))
    checks = (
        ("unspecified", ip.is_unspecified),  # connecting to it reaches this host
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("reserved", ip.is_multicast or ip.is_reserved),
        ("private", ip.is_private or (ip.version == 4 and ip in _SHARED)),
    )
    return next((name for name, hit in checks if hit), "public")


def check_address(address: str) -> None:
    """ValueError unless connecting to ``address`` is allowed."""
    found = kind(address)
    if found == "public" or found in _allowed:
        return
    if found == "unspecified" and "loopback" in _allowed:
        return
    if found in KINDS:
        raise ValueError(f"points at a {found} address ({address}), which this provider does not reach (allow_addresses)")
    raise ValueError(f"points at a {found} address ({address})")


def _literal(host: str) -> str | None:
    """The address a host written as an address stands for, in any of the
    forms resolvers accept (``127.1``, ``2130706433``, ``0x7f.1``, octal)."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if bare and all(c in "0123456789abcdefxABCDEFX." for c in bare) and not bare.endswith("."):
        try:
            return socket.inet_ntoa(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def check_url(url: str, schemes: tuple[str, ...] = SCHEMES) -> str:
    """``url`` when its scheme is allowed, it has a host, and that host is
    not an address the policy refuses; ValueError otherwise (naming the URL
    redacted). Names are resolved later, by :func:`check_host`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"not a valid URL: {redact(url)}") from None
    if parts.scheme not in schemes:
        raise ValueError(f"URL scheme must be one of {', '.join(schemes)}")
    host = parts.hostname
    if not host:
        raise ValueError("URL has no host")
    name = host.lower().rstrip(".")
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        check_address("127.0.0.1")
    address = _literal(host)
    if address is not None:
        check_address(address)
    return url


def check_staging_url(url: str) -> str:
    """``url`` when it names a file in a staging directory
    (``pvc://<claim>/<path>``, ``nfs://<server>/<path>``): a host, a path
    below it without ``.`` or ``..`` segments, no query or fragment;
    ValueError otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"not a valid URL: {redact(url)}") from None
    if parts.scheme not in STAGING_SCHEMES:
        raise ValueError(f"URL scheme must be one of {', '.join(STAGING_SCHEMES)}")
    if not parts.hostname or parts.username is not None or parts.port is not None:
        what = "claim name" if parts.scheme == "pvc" else "server"
        raise ValueError(f"URL must name a {what} (and nothing else) as its host")
    if parts.scheme == "pvc" and not _CLAIM_RE.match(parts.hostname):
        raise ValueError("claim name must be a Kubernetes object name (lowercase letters, digits, '-' and '.')")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError("a staging URL has no query or fragment")
    segments = parts.path.split("/")[1:]
    if not segments or not segments[-1]:
        raise ValueError("URL names no file (it ends with '/' or has no path)")
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError("URL path may not contain empty, '.' or '..' segments")
    return url


def credential_problem(credentials: Iterable[str], scheme: str) -> str:
    """What is wrong with the keys of a transfer's credentials for URLs of
    ``scheme`` (keys are named, never values); "" when nothing is."""
    if scheme in STAGING_SCHEMES:
        given = sorted(credentials)
        if given:
            return f"{scheme} URLs take no credentials (the directory is mounted into the provider): {', '.join(given)}"
        return ""
    allowed = set(S3_KEYS) if scheme == "s3" else HTTP_KEYS
    unknown = sorted(set(credentials) - allowed)
    if unknown:
        return f"unknown key(s) {', '.join(unknown)} for {scheme} URLs; use {', '.join(sorted(allowed))}"
    return ""


def check_host(host: str, port: int | None) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order, when
    every one is allowed; ValueError otherwise (call just before connecting;
    OSError when it does not resolve). Whoever connects for the provider
    elsewhere (a hypervisor host) is pinned to one of these."""
    address = _literal(host)
    if address is not None:
        check_address(address)
        return [address]
    found: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP):
        address = str(sockaddr[0])
        check_address(address)
        if address not in found:
            found.append(address)
    if not found:
        raise OSError(f"{host} resolves to no address")
    return found


__all__ = [
    "DEFAULT_PVC_ROOT",
    "HTTP_KEYS",
    "KINDS",
    "S3_KEYS",
    "SCHEMES",
    "STAGING_SCHEMES",
    "TRANSFER_SCHEMES",
    "Roots",
    "allow",
    "allowed",
    "check_address",
    "check_host",
    "check_staging_url",
    "check_url",
    "credential_problem",
    "kind",
    "redact",
    "roots",
    "set_roots",
]
