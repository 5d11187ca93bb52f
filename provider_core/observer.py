"""Request ids, metrics and the access log of every gRPC call.

:class:`Observer` wraps every method of every service the server
registers, outside the checks of who may call (:mod:`provider_core.auth`),
so refused calls count too (:class:`~provider_core.status.GuardedRegistrar`
applies it), and methods no service has (answered UNIMPLEMENTED by
:class:`~provider_core.auth.UnknownMethods`, counted with the method label
``unknown``). For each call it makes the
call's record (:mod:`provider_core.calls`: the request id, later the VM
and the task). When the call is answered it counts it by method and
status code (:mod:`provider_core.metrics`) and logs one access line:
method, peer, code, duration, task id, VM id and request id, on the
logger ``provider_core.access`` (health checks at DEBUG, the rest at
INFO; ``[server] access_log = false`` leaves it out). A call gRPC cancels
while it is served ends DEADLINE_EXCEEDED when its deadline had passed,
else CANCELLED (the client gave up, or the server stopped).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from typing import Any

import grpc
from google.protobuf import descriptor_pool  # type: ignore[import-untyped]

from .calls import Call, enter, request_id
from .metrics import NoMetrics
from .status import behaviour_of, with_behaviour
from .tls_proxy import client_peer

log = logging.getLogger("provider_core.access")
QUIET = ("grpc.health.v1.Health",)
"""Services whose access lines are DEBUG: probes would drown the log."""


def _code(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return str(code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code).name)


def _cancelled_code(context: grpc.aio.ServicerContext) -> str:
    """The code of a call gRPC cancelled while it was served: its deadline
    had passed (gRPC cancels a call then, and the client sees
    DEADLINE_EXCEEDED), or not."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


UNKNOWN = ("", "unknown")
"""The metrics labels of a method no service defines: a client cannot
grow the metrics by calling made-up names (the access line names it)."""


def _labels(service: str, method: str) -> tuple[str, str]:
    """``(service, method)`` if a service registered in protobuf's default
    pool defines it (every service the server runs), else :data:`UNKNOWN`."""
    try:
        found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(method)
    except KeyError:
        return UNKNOWN
    return (service, method) if found is not None else UNKNOWN


class Observer:
    """Request ids, metrics and the access log of every call."""

    def __init__(self, metrics: NoMetrics, access_log: bool = True) -> None:
        self.metrics = metrics
        self.access_log = access_log

    def wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        """``handler`` of ``full_method``, observed."""
        service, _, method = full_method.lstrip("/").rpartition("/")
        kind, behaviour = behaviour_of(handler)
        labels = _labels(service, method)
        level = logging.DEBUG if service in QUIET else logging.INFO
        begin, end = functools.partial(self._begin, service, method, labels), functools.partial(self._end, labels, level)
        if inspect.isasyncgenfunction(behaviour):

            async def each(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call, started = begin(context)
                cancelled = False
                try:
                    async for response in behaviour(request, context):
                        yield response
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    end(call, started, cancelled=cancelled, context=context)

            observed: Any = each
        else:

            async def once(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call, started = begin(context)
                cancelled = False
                try:
                    return await behaviour(request, context)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    end(call, started, cancelled=cancelled, context=context)

            observed = once
        return with_behaviour(handler, kind, observed)

    def _begin(self, service: str, method: str, labels: tuple[str, str], context: grpc.aio.ServicerContext) -> tuple[Call, float]:
        call = Call(service, method, request_id(context.invocation_metadata()))
        enter(call)
        self.metrics.rpc_started(*labels)
        return call, time.perf_counter()

    def _end(
        self,
        labels: tuple[str, str],
        level: int,
        call: Call,
        started: float,
        *,
        cancelled: bool,
        context: grpc.aio.ServicerContext,
    ) -> None:
        seconds = time.perf_counter() - started
        code = _cancelled_code(context) if cancelled else _code(context)
        self.metrics.rpc_finished(*labels, code, seconds)
        if self.access_log and log.isEnabledFor(level):
            peer = client_peer(context.peer())
            log.log(
                level,
                "%s %s in %.1f ms from %s vm=%s task=%s",
                call.method,
                code,
                seconds * 1000,
                peer,
                call.vm or "-",
                call.task or "-",
                extra={
                    "method": f"/{call.service}/{call.method}",
                    "peer": peer,
                    "code": code,
                    "duration_ms": round(seconds * 1000, 3),
                    "vm_id": call.vm,
                    "task_id": call.task,
                },
            )


__all__ = ["Observer"]
