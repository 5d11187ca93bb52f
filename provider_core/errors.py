"""The one exception tree of vm-provider.

Backends raise these (translating native errors through one table of their
own, ``raise ... from exc``); the gRPC layer maps each class to exactly one
status code (``provider_core.status``). Any other exception reaching the core
is an internal error: the client sees a generic message with a reference, the
traceback goes to the log only.

Messages are shown to clients verbatim, so they must never contain secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ProviderError(Exception):
    """Root of every error a backend or the core reports to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(ProviderError):
    """The VM, snapshot, disk, image or task named by the request does not exist."""


class AlreadyExists(ProviderError):
    """The name is taken by something this provider did not make (not idempotent)."""


class InvalidArgument(ProviderError):
    """The request itself is wrong; retrying it unchanged cannot succeed.

    ``violations`` maps a field path (``class_json.MemoryMiB``) to what is
    wrong with it; the gRPC layer sends them as ``google.rpc.BadRequest``.
    """

    def __init__(self, message: str, violations: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        items = violations.items() if isinstance(violations, Mapping) else violations
        self.violations: tuple[tuple[str, str], ...] = tuple(items)

    @classmethod
    def field(cls, path: str, problem: str) -> InvalidArgument:
        """One bad field: the message names it."""
        return cls(f"{path}: {problem}", [(path, problem)])


class FailedPrecondition(ProviderError):
    """The request is valid but the VM's state does not allow it now
    (running when it must be stopped, a change that needs a reboot, ...)."""


class Unavailable(ProviderError):
    """The hypervisor cannot be reached right now; the client should retry."""


class DeadlineExceeded(ProviderError):
    """The operation did not finish within the caller's deadline."""


class Unimplemented(ProviderError):
    """The backend does not offer this operation or option."""


class CapabilityMissing(Unimplemented):
    """The backend does not declare the capability the request needs."""

    def __init__(self, capability: str, backend: str) -> None:
        super().__init__(f"backend {backend!r} does not support capability {capability!r}")
        self.capability = capability


class PermissionDenied(ProviderError):
    """The provider's credentials lack a privilege on the hypervisor."""


class Unauthenticated(ProviderError):
    """The caller (or the provider towards the hypervisor) is not authenticated."""


class ResourceExhausted(ProviderError):
    """Out of a resource: storage space, memory, ids, quota."""


class Aborted(ProviderError):
    """A concurrent operation got in the way (a lock held too long); retry later."""


class Internal(ProviderError):
    """An unexpected failure the core already logged with a reference.

    Backends do not raise this: any exception outside this tree becomes one.
    """


class ConfigError(Exception):
    """Bad configuration or plugin at start-up (never sent to a client)."""
