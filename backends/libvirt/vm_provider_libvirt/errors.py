"""The one table from libvirt errors to the core's errors, and the named
conditions the backend branches on.

Every ``libvirt.libvirtError`` the backend meets goes through
:func:`translate` (at the one boundary,
:meth:`vm_provider_libvirt.session.Session.translated`), which walks
:data:`TABLE` top to bottom and uses the first rule whose error codes match
(and, for a few rules, whose message contains a given phrase). Rules are
ordered most specific first. An error no rule matches becomes
:class:`~provider_core.errors.Internal` carrying libvirt's message: an
unexpected hypervisor failure is exactly what clients count as an
infrastructure failure.

Where an operation must tell one libvirt condition from the others (a
volume that is not there is simply absent; a domain already off needs no
destroy), it asks a predicate defined here (:func:`is_missing_volume`, ...)
through :func:`ignoring`; no module compares error codes itself. Cleanups
after a failure run under :func:`best_effort`, so that their own failure
is logged and does not hide the one being handled.

libvirt messages name objects and paths, never passwords, so they are passed
on to clients.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
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
    Rule(_codes("LIBSSH", "SSH"), Unauthenticated, phrase="host key", prefix="SSH host key not verified: "),
    Rule(_codes("LIBSSH", "SSH"), Unauthenticated, phrase="authenticat", prefix="SSH login refused: "),
    Rule(_codes("LIBSSH", "SSH"), Unauthenticated, phrase="passphrase", prefix="SSH login refused: "),
    Rule(_codes("AUTH_FAILED"), Unauthenticated, phrase="host key", prefix="SSH host key not verified: "),
    Rule(_codes("AUTH_FAILED"), Unauthenticated, phrase="rejected by the server", prefix="SSH login refused: "),
    Rule(_codes("AUTH_FAILED"), Unauthenticated, phrase="private key", prefix="SSH login refused: "),
    Rule(_codes("AUTH_FAILED", "AUTH_CANCELLED", "AUTH_UNAVAILABLE"), Unauthenticated),
    Rule(_codes("ACCESS_DENIED", "OPERATION_DENIED"), PermissionDenied),
    Rule(UNREACHABLE, Unavailable, prefix="libvirt unavailable: "),
    Rule(_codes("LIBSSH", "SSH"), Unavailable, prefix="libvirt unavailable over SSH: "),
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


# -- named conditions ---------------------------------------------------------------

Condition = Callable[[libvirt.libvirtError], bool]
"""A predicate over libvirt errors (the ``is_*`` functions below)."""


def _code_in(exc: libvirt.libvirtError, codes: frozenset[int]) -> bool:
    return (exc.get_error_code() or 0) in codes


_NO_DOMAIN = _codes("NO_DOMAIN")
_NO_SNAPSHOT = _codes("NO_DOMAIN_SNAPSHOT")
_NO_VOLUME = _codes("NO_STORAGE_VOL")
_NO_POOL = _codes("NO_STORAGE_POOL")
_NO_NETWORK = _codes("NO_NETWORK")
_NO_INTERFACE = _codes("NO_INTERFACE")
_VOLUME_EXISTS = _codes("STORAGE_VOL_EXIST")
_UNSUPPORTED = _codes("NO_SUPPORT")
_INVALID_IN_STATE = _codes("OPERATION_INVALID")
_FLAGS_REFUSED = _codes("INVALID_ARG", "NO_SUPPORT")
_LOST = _codes("NO_CONNECT", "INVALID_CONN")
_INTERNAL = _codes("INTERNAL_ERROR")
_TRANSPORTS = frozenset(getattr(libvirt, f"VIR_FROM_{n}") for n in ("RPC", "SSH", "LIBSSH") if hasattr(libvirt, f"VIR_FROM_{n}"))
"""Error domains of the link to the daemon (its RPC, the SSH transports)."""


def is_missing_domain(exc: libvirt.libvirtError) -> bool:
    """The domain does not exist (or no longer: a handle of a domain undefined since)."""
    return _code_in(exc, _NO_DOMAIN)


def is_missing_snapshot(exc: libvirt.libvirtError) -> bool:
    """The domain has no snapshot of that name."""
    return _code_in(exc, _NO_SNAPSHOT)


def is_missing_volume(exc: libvirt.libvirtError) -> bool:
    """No storage volume of that name or path."""
    return _code_in(exc, _NO_VOLUME)


def is_missing_pool(exc: libvirt.libvirtError) -> bool:
    """No storage pool of that name."""
    return _code_in(exc, _NO_POOL)


def is_missing_network(exc: libvirt.libvirtError) -> bool:
    """No libvirt network of that name."""
    return _code_in(exc, _NO_NETWORK)


def is_missing_interface(exc: libvirt.libvirtError) -> bool:
    """No host interface of that name (libvirt's interface API)."""
    return _code_in(exc, _NO_INTERFACE)


def is_volume_taken(exc: libvirt.libvirtError) -> bool:
    """A volume of that name exists already."""
    return _code_in(exc, _VOLUME_EXISTS)


def is_unsupported(exc: libvirt.libvirtError) -> bool:
    """The connection's driver does not implement the call (the test driver's
    streams, keepalive on a local connection, ...)."""
    return _code_in(exc, _UNSUPPORTED)


def is_invalid_in_state(exc: libvirt.libvirtError) -> bool:
    """The domain's state forbids the call (destroying a domain that is off,
    asking a paused one to shut down)."""
    return _code_in(exc, _INVALID_IN_STATE)


def is_flag_refused(exc: libvirt.libvirtError) -> bool:
    """The driver refuses a flag of the call (the test driver's undefine
    flags for NVRAM, TPM and checkpoints)."""
    return _code_in(exc, _FLAGS_REFUSED)


def any_error(_exc: libvirt.libvirtError) -> bool:
    """Every libvirt error (for calls whose failure only means "not known":
    a host name, the leases of a network, a guest agent's answer)."""
    return True


@contextlib.contextmanager
def ignoring(*conditions: Condition) -> Iterator[None]:
    """Run a block; a libvirt error one of ``conditions`` names ends it
    quietly, every other one passes on. For lookups of what may be absent::

        with errors.ignoring(errors.is_missing_volume):
            return pool.storageVolLookupByName(name)
        return None
    """
    if not conditions:
        raise TypeError("name the conditions to ignore")
    try:
        yield
    except libvirt.libvirtError as exc:
        if not any(condition(exc) for condition in conditions):
            raise


@contextlib.contextmanager
def best_effort(what: str) -> Iterator[None]:
    """Run a cleanup: a libvirt error is logged (``could not <what>``), not
    raised, so it does not hide the failure being cleaned up after."""
    try:
        yield
    except libvirt.libvirtError as exc:
        log.warning("could not %s: %s", what, exc.get_error_message())


def connection_lost(exc: libvirt.libvirtError) -> bool:
    """Whether the error says the connection to the daemon is gone (so the
    next call should open a new one)."""
    if _code_in(exc, _LOST) or exc.get_error_domain() in _TRANSPORTS:
        return True
    return _code_in(exc, _INTERNAL) and _SOCKET_CLOSED in (exc.get_error_message() or "")


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
