"""Who may call: client certificates in ``allowed_sans``, bearer tokens,
and the log of refused calls.

Under ``allowed_sans``, every call (health checks too: a client the
allow-list leaves out learns nothing, and probes do not come with a client
certificate anyway) on a connection whose certificate none of the list's
names is answered PERMISSION_DENIED naming the certificate's names; the
TLS layer (:mod:`provider_core.tls_proxy`) marks such connections.

With a token, every call but health checks must carry ``authorization: Bearer <token>``.
A refused call is answered UNAUTHENTICATED and logged at WARNING with its
method, its peer and why it was refused, never with what it sent. A client
retrying in a loop cannot flood the log: lines are rate-limited, and the
next line logged says how many were left out.

The checks wrap each method's handler when it is registered
(:class:`~provider_core.status.GuardedRegistrar`), as the other per-call
work does, rather than in a grpc.aio interceptor: with grpcio 1.85 any
server interceptor costs about 90 µs of CPU per call (a fifth of a
Describe), whatever it does. Methods the server does not know are
answered by :class:`UnknownMethods` through the same checks (and counted
and logged as every call is, :mod:`provider_core.observer`).
"""

from __future__ import annotations

import functools
import hmac
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from .status import behaviour_of, with_behaviour
from .tls_proxy import client, client_peer

log = logging.getLogger(__name__)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
SCHEME = b"bearer "


class RefusalLog:
    """WARNING lines for refused calls: ``burst`` at once, then ``burst``
    per ``period`` seconds (a token bucket)."""

    def __init__(self, burst: int = 10, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._rate = burst / period
        self._clock = clock
        self._allowance = float(burst)
        self._last = clock()
        self._dropped = 0
        self._lock = threading.Lock()

    def refused(self, method: str, peer: str, reason: str) -> None:
        with self._lock:
            now = self._clock()
            self._allowance = min(self._burst, self._allowance + (now - self._last) * self._rate)
            self._last = now
            if self._allowance < 1:
                self._dropped += 1
                return
            self._allowance -= 1
            dropped, self._dropped = self._dropped, 0
        more = f" ({dropped} more refused call(s) not logged)" if dropped else ""
        log.warning("refused %s from %s: %s%s", method, peer, reason, more)


class CallGuard:
    """Require ``authorization: Bearer <token>`` on every call but health
    checks (with a ``token``), and refuse every call of a connection whose
    client certificate is not in ``allowed_sans`` (with ``check_sans``)."""

    def __init__(self, token: str | None, refusals: RefusalLog | None = None, check_sans: bool = False) -> None:
        self._expected = token.encode() if token is not None else None
        self._check_sans = check_sans
        self.refusals = refusals or RefusalLog()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` of ``method``, running the checks before its behaviour."""
        token = self._expected is not None and not method.startswith(HEALTH_PREFIX)
        if not token and not self._check_sans:
            return handler
        check = functools.partial(self._check, method, token)
        kind, behaviour = behaviour_of(handler)
        if inspect.isasyncgenfunction(behaviour):

            async def each(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                async for response in behaviour(request, context):
                    yield response

            checked: Any = each
        else:

            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await behaviour(request, context)

            checked = call
        return with_behaviour(handler, kind, checked)

    async def _check(self, method: str, token: bool, context: grpc.aio.ServicerContext) -> None:
        """Abort the call PERMISSION_DENIED if its connection is marked
        refused (the TLS layer logged it once, when the connection was
        made), UNAUTHENTICATED if it lacks the token."""
        if self._check_sans:
            found = client(context.peer())
            if found is not None and found.refused is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, found.refused)
        if not token:
            return
        assert self._expected is not None
        given: bytes | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if given is None:
            reason = "no authorization metadata"
        elif given[: len(SCHEME)].lower() != SCHEME:
            reason = "authorization is not a bearer token"
        elif hmac.compare_digest(given[len(SCHEME) :], self._expected):
            return
        else:
            reason = "wrong token"
        self.refusals.refused(method, client_peer(context.peer()), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


async def _unknown(method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {method}")


class UnknownMethods(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    """Answers a method no service has, UNIMPLEMENTED, so that the checks
    run first: a refused client learns nothing, not even that."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(functools.partial(_unknown, details.method))
