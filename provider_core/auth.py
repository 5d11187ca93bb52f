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
"""

from __future__ import annotations

import functools
import hmac
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

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


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Require ``authorization: Bearer <token>`` on every call but health
    checks (with a ``token``), and refuse every call of a connection whose
    client certificate is not in ``allowed_sans`` (with ``check_sans``)."""

    def __init__(self, token: str | None, refusals: RefusalLog | None = None, check_sans: bool = False) -> None:
        self._expected = token.encode() if token is not None else None
        self._check_sans = check_sans
        self.refusals = refusals or RefusalLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await self._token(continuation, details)
        if not self._check_sans:
            return handler
        if handler is None:  # no such method: not even that is told to a refused client
            handler = grpc.unary_unary_rpc_method_handler(functools.partial(_unknown, details.method))
        return _certificate_checked(handler)

    async def _token(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self._expected is None or details.method.startswith(HEALTH_PREFIX):
            return await continuation(details)
        given: bytes | None = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if given is None:
            reason = "no authorization metadata"
        elif given[: len(SCHEME)].lower() != SCHEME:
            reason = "authorization is not a bearer token"
        elif hmac.compare_digest(given[len(SCHEME) :], self._expected):
            return await continuation(details)
        else:
            reason = "wrong token"
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._deny, details.method, reason))

    async def _deny(self, method: str, reason: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.refusals.refused(method, client_peer(context.peer()), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


async def _check_certificate(context: grpc.aio.ServicerContext) -> None:
    """Answer PERMISSION_DENIED if the call's connection is marked refused
    (the TLS layer logged it once, when the connection was made)."""
    found = client(context.peer())
    if found is not None and found.refused is not None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, found.refused)


async def _unknown(method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {method}")


def _certificate_checked(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler``, checking the connection's certificate before its behaviour runs."""
    kind = ("stream_" if handler.request_streaming else "unary_") + ("stream" if handler.response_streaming else "unary")
    behaviour = getattr(handler, kind)
    if inspect.isasyncgenfunction(behaviour):

        async def each(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _check_certificate(context)
            async for response in behaviour(request, context):
                yield response

        checked: Any = each
    else:

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _check_certificate(context)
            return await behaviour(request, context)

        checked = call
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(checked, handler.request_deserializer, handler.response_serializer)
