"""The one table from Proxmox VE failures to the core's errors.

Proxmox reports failures in three ways, and all go through :data:`RULES`
(the node's shell has its own rows: :func:`from_ssh` for the connection,
:data:`CURL_EXITS` for a transfer a node makes itself):

- an HTTP error, which proxmoxer raises as ``ResourceException`` with the
  status code, PVE's message (``content``) and, for 400, the per-parameter
  ``errors``;
- a task that ends with an exit status other than ``OK`` (the same PVE
  messages, without a status code);
- no answer at all (``requests`` connection, TLS and timeout errors), and a
  refused login (proxmoxer's ``AuthenticationError``).

Rules are tried in order, most specific first; the first whose status (None:
any) and pattern match builds the error. Messages carry PVE's own words and
never a secret: parameter errors about secret parameters are masked.

Proxmox answers HTTP 500 for every plain ``die`` of its API (pve-manager
PVE/HTTPServer.pm:221-231): "storage 'X' is not available on node 'Y'" is a
500 as much as a lost quorum. So a 500 no row matches is a refusal
(FAILED_PRECONDITION), which clients do not retry; only failures that pass
with time are UNAVAILABLE (no quorum, an unreachable node or storage, the
proxy's 5xx, timeouts, no answer at all).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paramiko
import requests
from proxmoxer import ResourceException
from proxmoxer.core import AuthenticationError

from provider_core import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from provider_core.transfer import http_error

#: Parameters whose values must never be echoed back.
SECRET_PARAMS = frozenset({"cipassword", "password", "token_secret", "new-password"})


class Locked(Aborted):
    """The VM (or its configuration file) is locked by another operation.

    The client retries after backing off; ``lock`` names the lock
    (``backup``, ``clone``, ``snapshot``, ... or the config file lock)."""

    def __init__(self, message: str, lock: str) -> None:
        super().__init__(message)
        self.lock = lock


class VmidTaken(AlreadyExists):
    """The VMID we picked was taken by someone else meanwhile (``nextid``
    reserves nothing); the caller retries with a fresh one."""


@dataclass(frozen=True)
class Rule:
    status: int | None
    pattern: re.Pattern[str]
    build: Callable[[str, re.Match[str]], ProviderError]


def _rule(status: int | None, pattern: str, build: Callable[[str, re.Match[str]], ProviderError]) -> Rule:
    return Rule(status, re.compile(pattern, re.IGNORECASE), build)


def _missing_vm(text: str, m: re.Match[str]) -> ProviderError:
    return NotFound(f"VM {m.group(1)} does not exist (Proxmox: {text})")


def _locked(text: str, m: re.Match[str]) -> ProviderError:
    return Locked(f"VM is locked by a running Proxmox operation ({m.group(1)}); retry later (Proxmox: {text})", m.group(1))


def _file_lock(text: str, m: re.Match[str]) -> ProviderError:
    return Locked(f"the VM's configuration is locked by another Proxmox operation; retry later (Proxmox: {text})", "config")


def _as(cls: type[ProviderError], prefix: str = "") -> Callable[[str, re.Match[str]], ProviderError]:
    return lambda text, _m: cls(f"{prefix}{text}" if prefix else f"Proxmox: {text}")


#: The table. Status None matches any status and task exit statuses.
RULES: tuple[Rule, ...] = (
    _rule(None, r"Configuration file 'nodes/[^/]+/qemu-server/(\d+)\.conf' does not exist", _missing_vm),
    _rule(None, r"unable to find configuration file for VM (\d+)", _missing_vm),
    _rule(None, r"VM is locked \(([\w-]+)\)", _locked),
    _rule(None, r"can't lock file '[^']*' - got timeout", _file_lock),
    _rule(
        None,
        r"unable to create VM \d+ - VM \d+ already exists|unable to create VM \d+: config file already exists|"
        r"close \(rename\) atomic file '[^']*/qemu-server/\d+\.conf' failed: File exists",
        _as(VmidTaken),
    ),
    _rule(None, r"unable to parse worker upid|no such task", _as(NotFound)),
    _rule(None, r"snapshot '[^']*' does not exist", _as(NotFound)),
    _rule(None, r"volume '?[^' ]+'? does not exist", _as(NotFound)),
    _rule(None, r"snapshot name '[^']*' already used", _as(AlreadyExists)),
    _rule(None, r"Permission check failed|only root can", _as(PermissionDenied)),
    _rule(None, r"checksum mismatch \(file change by other user\?\)", _as(Aborted)),
    _rule(None, r"cluster not ready - no quorum", _as(Unavailable)),
    _rule(None, r"qmp command '[^']*' failed - got timeout|unable to connect to VM \d+ (qmp|qga) socket", _as(Unavailable)),
    _rule(None, r"storage '[^']*' is not online|No route to host|Connection (refused|timed out)", _as(Unavailable)),
    _rule(None, r"storage '[^']*' is not available on node|storage '[^']*' is disabled", _as(FailedPrecondition)),
    _rule(None, r"can't clone VM to node '[^']*' \(VM uses local storage\)", _as(FailedPrecondition)),
    _rule(None, r"no such cluster node", _as(InvalidArgument)),
    _rule(None, r"checksum mismatch: got", _as(InvalidArgument, "the image does not match its checksum: ")),
    _rule(None, r"(Linked|Full) clone feature is not supported", _as(FailedPrecondition)),
    _rule(None, r"not allowed for linked clones|can't clone to non-shared storage", _as(InvalidArgument)),
    _rule(None, r"^storage '[^']*' does not exist|hostname lookup '[^']*' failed", _as(InvalidArgument)),
    _rule(
        None,
        r"not configured for content-type|does not support vm images|not a file based storage|does not support '\w+' content",
        _as(InvalidArgument),
    ),
    _rule(None, r"VM quit/powerdown failed - got timeout", _as(DeadlineExceeded)),
    _rule(
        None,
        r"not running|is running - destroy failed|protection mode enabled|guest agent is not running|"
        r"template|snapshot feature is not available|VM is paused|contains snapshots|already running",
        _as(FailedPrecondition),
    ),
    _rule(401, r"", _as(Unauthenticated, "Proxmox refused the provider's credentials: ")),
    _rule(403, r"", _as(PermissionDenied)),
    _rule(404, r"", _as(Unimplemented, "this Proxmox VE API has no such call: ")),
    _rule(501, r"", _as(Unimplemented)),
)


def _violations(errors: object) -> list[tuple[str, str]]:
    if not isinstance(errors, Mapping):
        return []
    out = []
    for key, problem in errors.items():
        text = "invalid value (hidden)" if str(key) in SECRET_PARAMS else " ".join(str(problem).split())
        out.append((str(key), text))
    return out


def from_message(text: str, status: int | None = None) -> ProviderError | None:
    """The error for a PVE message (an HTTP error's or a task's exit
    status), or None when no rule matches."""
    text = text.strip()
    for rule in RULES:
        if (rule.status is None or rule.status == status) and (m := rule.pattern.search(text)):
            return rule.build(text, m)
    return None


def from_task(exitstatus: str, log_tail: list[str] | None = None) -> ProviderError:
    """The error for a failed Proxmox task."""
    detail = f" (task log: {' | '.join(log_tail)})" if log_tail else ""
    err = from_message(exitstatus)
    if err is None:
        return FailedPrecondition(f"Proxmox task failed: {exitstatus}{detail}")
    if detail:
        err.message += detail
        err.args = (err.message,)
    return err


def from_resource(exc: ResourceException) -> ProviderError:
    status = int(exc.status_code)
    text = str(exc.content or exc.status_message or "").strip()
    if status == 400:
        violations = _violations(exc.errors)
        if any(k == "vmid" and "already exists" in v for k, v in violations):
            return VmidTaken(f"Proxmox: {violations[0][1]}")
        listed = "; ".join(f"{k}: {v}" for k, v in violations) or text
        return InvalidArgument(f"Proxmox refused the request: {listed}", violations)
    err = from_message(text, status)
    if err is not None:
        return err
    if 400 <= status < 500:
        return InvalidArgument(f"Proxmox refused the request ({status}): {text}")
    if status == 500 and text:
        return FailedPrecondition(f"Proxmox refused the request: {text}")
    return Unavailable(f"Proxmox VE answered {status}: {text}")


#: Failures without an answer from Proxmox, most specific first.
TRANSPORT: tuple[tuple[type[requests.exceptions.RequestException], str], ...] = (
    (requests.exceptions.SSLError, "TLS with the Proxmox API failed (check ca_file / the certificate)"),
    (requests.exceptions.Timeout, "the Proxmox API did not answer in time"),
    (requests.exceptions.ConnectionError, "cannot reach the Proxmox API"),
    (requests.exceptions.RequestException, "request to the Proxmox API failed"),
)


def translate(exc: BaseException) -> ProviderError:
    """Map anything proxmoxer or requests raise to the core's error tree."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ResourceException):
        return from_resource(exc)
    if isinstance(exc, AuthenticationError):
        return Unauthenticated(f"Proxmox login failed: {_first_line(exc)}")
    for cls, what in TRANSPORT:
        if isinstance(exc, cls):
            return Unavailable(f"{what}: {_reason(exc)}")
    raise TypeError(f"not a Proxmox error: {type(exc).__name__}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _reason(exc: requests.exceptions.RequestException) -> str:
    """The innermost reason of a requests failure, without the URL's query."""
    inner: Any = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = _first_line(inner) if inner is not exc else _first_line(exc)
    return re.sub(r"\?[^ )'\"]*", "", text)[:300]


#: Status codes the client retries on its own (the call may pass): PVE's 5xx
#: other than plain 500 errors from a handler, and the proxy's 595-599.
TRANSIENT_STATUS = frozenset({502, 503, 504, 595, 596, 597, 598, 599})


def is_transient(exc: BaseException) -> bool:
    """A failure that is likely to pass (connection trouble, a busy or
    restarting node), as opposed to PVE refusing the request."""
    if isinstance(exc, ResourceException):
        return int(exc.status_code) in TRANSIENT_STATUS or "no quorum" in str(exc.content)
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate does not fix itself
    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout)


def from_ssh(exc: BaseException, where: str) -> ProviderError:  # noqa: PLR0911 - one row per failure
    """A failure of the SSH connection to a node (``where`` names it): a host
    key the known_hosts file does not hold or holds otherwise, and a refused
    login, are FAILED_PRECONDITION (the operator's files must change); no
    connection, UNAVAILABLE. Never the key or passphrase."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return FailedPrecondition(f"SSH host key of {where} differs from the one in ssh_known_hosts_file; refused")
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return FailedPrecondition(
            f"SSH host key of {where} is not in ssh_known_hosts_file; add it there (unknown hosts are refused)"
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return FailedPrecondition(f"ssh_key_file is encrypted: set ssh_key_passphrase (for {where})")
    if isinstance(exc, paramiko.SSHException) and "private key" in str(exc).lower():
        return FailedPrecondition(f"ssh_key_file is not a private key paramiko can read (for {where})")
    if isinstance(exc, paramiko.AuthenticationException):
        return FailedPrecondition(f"SSH login to {where} refused with ssh_key_file")
    return Unavailable(f"SSH connection to {where} failed: {_first_line(exc)[:300]}")


#: Exit statuses of curl on a node (a ``direct`` transfer) -> core errors;
#: 22 (an HTTP error) goes by the HTTP status, others not listed are UNAVAILABLE.
CURL_EXITS: dict[int, tuple[type[ProviderError], str]] = {
    3: (InvalidArgument, "refused the URL as malformed"),
    5: (Unavailable, "could not resolve a proxy"),
    6: (Unavailable, "could not resolve the host"),
    7: (Unavailable, "could not connect (does the node reach it?)"),
    18: (Unavailable, "the transfer ended early"),
    23: (FailedPrecondition, "could not write the file on the node"),
    26: (FailedPrecondition, "could not read the file on the node"),
    28: (Unavailable, "timed out (connect timeout, or slower than 1 byte/s for task_timeout_seconds)"),
    35: (FailedPrecondition, "TLS handshake failed"),
    52: (Unavailable, "the server answered nothing"),
    55: (Unavailable, "sending failed"),
    56: (Unavailable, "receiving failed"),
    60: (FailedPrecondition, "the node does not trust the server's TLS certificate"),
    77: (FailedPrecondition, "the node's CA certificates cannot be read"),
    127: (FailedPrecondition, "curl is not installed on the node"),
}


def from_curl(status: int, http_status: int, what: str, detail: str = "") -> ProviderError:
    """A curl that exited with ``status`` (and, for 22, the answer's HTTP
    status) during ``what``, which names the URL redacted; ``detail``: curl's
    own message, without any query string."""
    if status == 22 and http_status:
        return http_error(http_status, what)
    cls, text = CURL_EXITS.get(status, (Unavailable, "failed"))
    return cls(f"{what}: curl {text} (exit status {status}{'; ' + detail if detail else ''})")
