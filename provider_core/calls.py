"""The call being served: its request id, and the VM and task it names.

The server's :class:`~provider_core.observer.Observer` makes a :class:`Call`
for each gRPC call, current (a context variable) while the call is served
and in everything the call starts: backend calls in worker threads and
the call's background task carry it, so every line they log names the
request id (:mod:`provider_core.logs`). The runtime notes the VM and the
task (:func:`note`) for the call's access line.

The request id is the caller's ``x-request-id`` metadata when it is a
plain token (letters, digits and ``._:/+=@-``, at most 128 characters: no
log line can be forged through it), else a new random one.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

HEADER = "x-request-id"
_TOKEN = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


@dataclass(slots=True)
class Call:
    """What is known of a call being served."""

    service: str
    method: str
    request_id: str
    vm: str = ""
    task: str = ""


_current: ContextVar[Call | None] = ContextVar("vm_provider_call", default=None)


def enter(call: Call) -> None:
    """Make ``call`` current for the rest of the task (grpc.aio serves each
    call in a task of its own) and what it starts."""
    _current.set(call)


def current() -> Call | None:
    """The call being served here, or None (outside any call)."""
    return _current.get()


def note(*, vm: str | None = None, task: str | None = None) -> None:
    """Record the VM or the task of the call being served (nothing outside a call)."""
    call = _current.get()
    if call is None:
        return
    if vm is not None:
        call.vm = vm
    if task is not None:
        call.task = task


def request_id(metadata: Any) -> str:
    """The caller's ``x-request-id`` if it is a plain token, else a new one."""
    for key, value in metadata or ():
        if key == HEADER and isinstance(value, str) and _TOKEN.fullmatch(value):
            return value
    return f"{random.getrandbits(128):032x}"  # an id to grep for, not a secret


__all__ = ["HEADER", "Call", "current", "enter", "note", "request_id"]
