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
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

SCHEMES = ("http", "https", "s3")
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
}

_allowed: frozenset[str] = frozenset()


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


def credential_problem(credentials: Iterable[str], scheme: str) -> str:
    """What is wrong with the keys of a transfer's credentials for URLs of
    ``scheme`` (keys are named, never values); "" when nothing is."""
    allowed = set(S3_KEYS) if scheme == "s3" else HTTP_KEYS
    unknown = sorted(set(credentials) - allowed)
    if unknown:
        return f"unknown key(s) {', '.join(unknown)} for {scheme} URLs; use {', '.join(sorted(allowed))}"
    return ""


def check_host(host: str, port: int | None) -> None:
    """ValueError unless every address ``host`` resolves to is allowed (call
    just before connecting; OSError when it does not resolve)."""
    address = _literal(host)
    if address is not None:
        check_address(address)
        return
    for *_, sockaddr in socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP):
        check_address(str(sockaddr[0]))


__all__ = [
    "HTTP_KEYS",
    "KINDS",
    "S3_KEYS",
    "SCHEMES",
    "allow",
    "allowed",
    "check_address",
    "check_host",
    "check_url",
    "credential_problem",
    "kind",
    "redact",
]
