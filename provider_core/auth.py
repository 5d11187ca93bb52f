"""Bearer-token authentication, and the log of refused calls.

Every call but health checks must carry ``authorization: Bearer <token>``.
A refused call is answered UNAUTHENTICATED and logged at WARNING with its
method, its peer and why it was refused, never with what it sent. A client
retrying in a loop cannot flood the log: lines are rate-limited, and the
next line logged says how many were left out.
"""

from __future__ import annotations

import functools
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .tls_proxy import client_peer

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
    """Require ``authorization: Bearer <token>`` on every call but health checks."""

    def __init__(self, token: str, refusals: RefusalLog | None = None) -> None:
        self._expected = token.encode()
        self.refusals = refusals or RefusalLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(HEALTH_PREFIX):
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
