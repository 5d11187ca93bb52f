"""The one table from libvirt errors to the core's errors.

Every ``libvirt.libvirtError`` the backend meets goes through
:func:`translate`, which walks :data:`TABLE` top to bottom and uses the first
rule whose error codes match (and, for a few rules, whose message contains a
given phrase). Rules are ordered most specific first. An error no rule
matches becomes :class:`~provider_core.errors.Internal` carrying libvirt's
message: an unexpected hypervisor failure is exactly what clients count as
an infrastructure failure.

libvirt messages name objects and paths, never passwords, so they are passed
on to clients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import libvirt

from provider_core.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """libvirt error codes (and optionally a phrase of the message) -> error class."""

    codes: frozenset[int]
    error: type[ProviderError]
    phrase: str = ""
    """Lower-case text the message must contain for the rule to apply."""
    prefix: str = ""
    """Put before libvirt's message, to say what the client is told."""

    def matches(self, code: int, message: str) -> bool:
        return code in self.codes and (not self.phrase or self.phrase in message.lower())


def _codes(*names: str) -> frozenset[int]:
    """Error codes by name; names this libvirt-python lacks are skipped."""
    return frozenset(getattr(libvirt, f"VIR_ERR_{n}") for n in names if hasattr(libvirt, f"VIR_ERR_{n}"))


#: Codes of a daemon that cannot be reached or talked to: the client should
#: retry. (A system error is an errno failure; towards a remote daemon that
#: is a broken socket.)
UNREACHABLE = _codes("SYSTEM_ERROR", "RPC", "NO_CONNECT", "INVALID_CONN")
_SOCKET_CLOSED = "client socket is closed"

TABLE: tuple[Rule, ...] = (
    Rule(
        _codes(
            "NO_DOMAIN",
            "NO_DOMAIN_SNAPSHOT",
            "NO_STORAGE_POOL",
            "NO_STORAGE_VOL",
            "NO_NETWORK",
            "NO_DOMAIN_CHECKPOINT",
            "NO_DOMAIN_METADATA",
            "NO_INTERFACE",
            "NO_NETWORK_PORT",
            "NO_NODE_DEVICE",
            "NO_SECRET",
        ),
        NotFound,
    ),
    Rule(_codes("DOM_EXIST", "NETWORK_EXIST", "STORAGE_VOL_EXIST", "NETWORK_PORT_EXIST"), AlreadyExists),
    Rule(_codes("OPERATION_FAILED", "INTERNAL_ERROR"), AlreadyExists, phrase="already exists"),
    Rule(_codes("INTERNAL_ERROR"), Unavailable, phrase=_SOCKET_CLOSED, prefix="lost the connection to libvirt: "),
    Rule(_codes("OPERATION_FAILED", "SYSTEM_ERROR", "INTERNAL_ERROR"), ResourceExhausted, phrase="no space left"),
    Rule(_codes("NO_MEMORY"), ResourceExhausted),
    Rule(
        _codes("OPERATION_INVALID", "SNAPSHOT_REVERT_RISKY", "BLOCK_COPY_ACTIVE", "CHECKPOINT_INCONSISTENT", "MIGRATE_UNSAFE"),
        FailedPrecondition,
    ),
    Rule(
        _codes("NO_SUPPORT", "ARGUMENT_UNSUPPORTED", "OPERATION_UNSUPPORTED"),
        Unimplemented,
        prefix="not supported by this libvirt host: ",
    ),
    Rule(_codes("OPERATION_TIMEOUT"), DeadlineExceeded),
    Rule(_codes("RESOURCE_BUSY"), Aborted),
    Rule(_codes("AUTH_FAILED", "AUTH_CANCELLED", "AUTH_UNAVAILABLE"), Unauthenticated),
    Rule(_codes("ACCESS_DENIED", "OPERATION_DENIED"), PermissionDenied),
    Rule(UNREACHABLE, Unavailable, prefix="libvirt unavailable: "),
    Rule(_codes("AGENT_UNRESPONSIVE", "AGENT_UNSYNCED"), Unavailable, prefix="guest agent: "),
    Rule(
        _codes(
            "XML_ERROR",
            "XML_DETAIL",
            "XML_INVALID_SCHEMA",
            "INVALID_ARG",
            "INVALID_MAC",
            "CONF_SYNTAX",
            "CONFIG_UNSUPPORTED",
            "NO_NAME",
            "NO_OS",
            "OS_TYPE",
            "NO_SOURCE",
            "NO_TARGET",
            "NO_KERNEL",
            "CPU_INCOMPATIBLE",
        ),
        InvalidArgument,
    ),
)


def connection_lost(exc: libvirt.libvirtError) -> bool:
    """Whether the error says the connection to the daemon is gone (so the
    next call should open a new one)."""
    code = exc.get_error_code()
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN) or exc.get_error_domain() == libvirt.VIR_FROM_RPC:
        return True
    return code == libvirt.VIR_ERR_INTERNAL_ERROR and _SOCKET_CLOSED in (exc.get_error_message() or "")


def translate(exc: libvirt.libvirtError, context: str = "") -> ProviderError:
    """The core error for a libvirt error; ``context`` (e.g. ``"VM 'web-1'"``)
    is put in front of the message. Use as ``raise translate(exc) from exc``."""
    code = exc.get_error_code() or 0
    message = exc.get_error_message() or str(exc)
    lead = f"{context}: " if context else ""
    for rule in TABLE:
        if rule.matches(code, message):
            return rule.error(f"{lead}{rule.prefix}{message}")
    if exc.get_error_domain() == libvirt.VIR_FROM_RPC:
        return Unavailable(f"{lead}libvirt unavailable: {message}")
    log.warning("unmapped libvirt error code %s (domain %s): %s", code, exc.get_error_domain(), message)
    return Internal(f"{lead}libvirt error {code}: {message}")
