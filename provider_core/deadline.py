"""The caller's deadline, visible to backend code running in worker threads.

The core sets it from the gRPC context before calling a backend; backends
that retry (a locked VM, a busy API) read :func:`remaining` to stop in time.
Background task work runs without a deadline (``remaining()`` is None).
"""

from __future__ import annotations

import time
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("vm_provider_deadline", default=None)


def set_remaining(seconds: float | None) -> None:
    """Set the deadline of the current context to ``seconds`` from now."""
    _deadline.set(None if seconds is None else time.monotonic() + seconds)


def remaining() -> float | None:
    """Seconds left before the caller gives up, or None when unbounded."""
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


def expired() -> bool:
    left = remaining()
    return left is not None and left <= 0
