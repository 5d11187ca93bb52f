"""The one table from the error tree to gRPC status codes, and the one
registration wrapper that applies it to every service the server runs.

Conversion happens here and only here: :class:`GuardedRegistrar` wraps each
method of every service (provider.v1, health, reflection) so that a request
whose bytes are not a valid message is INVALID_ARGUMENT (grpc would answer
UNKNOWN), a :class:`~provider_core.errors.ProviderError` gets its code from
:data:`STATUS_CODES`, and anything else is INTERNAL with a generic message
and a log reference: no RPC ever answers UNKNOWN and no traceback reaches a
client. Invalid arguments carry ``google.rpc.BadRequest`` field violations;
a missing capability carries ``google.rpc.ErrorInfo``.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import errors

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[errors.ProviderError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

DOMAIN = "vm-provider"


def internal_error(exc: BaseException, what: str) -> str:
    """Log an unexpected exception with its traceback; return the generic
    message a client may see (a reference to find the log entry)."""
    ref = uuid.uuid4().hex[:12]
    log.error("internal error in %s (ref %s)", what, ref, exc_info=exc)
    return f"internal error (ref {ref})"


def code_for(exc: errors.ProviderError) -> grpc.StatusCode:
    """The status code of an error: its own class's, or its nearest parent's."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def code_name(exc: BaseException) -> str:
    """The name of the status code ``exc`` is answered with (INTERNAL for
    anything outside the error tree)."""
    code = code_for(exc) if isinstance(exc, errors.ProviderError) else grpc.StatusCode.INTERNAL
    return str(code.name)


def _pack(message: Any) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def to_status(exc: errors.ProviderError) -> grpc.Status:
    code = code_for(exc)
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(exc))
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations]
        )
        proto.details.append(_pack(bad))
    if isinstance(exc, errors.CapabilityMissing):
        info = error_details_pb2.ErrorInfo(reason="CAPABILITY_MISSING", domain=DOMAIN, metadata={"capability": exc.capability})
        proto.details.append(_pack(info))
    return rpc_status.to_status(proto)


class CorruptRequest:
    """Stands in for a request whose bytes are not a valid message, so the
    handler answers INVALID_ARGUMENT (grpc itself would answer UNKNOWN)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def status(self) -> grpc.Status:
        return to_status(errors.InvalidArgument(f"the request is not a valid {self.kind} message"))


def _tolerant(deserialize: Callable[[bytes], Any], name: str) -> Callable[[bytes], Any]:
    """``deserialize``, answering a :class:`CorruptRequest` instead of raising."""

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return CorruptRequest(name)

    return decode


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, what: str) -> None:
    """Answer ``exc`` as its status (a ProviderError) or INTERNAL (anything else)."""
    if isinstance(exc, errors.ProviderError):
        await context.abort_with_status(to_status(exc))  # raises: the call ends here
    else:
        await context.abort_with_status(to_status(errors.Internal(internal_error(exc, what))))


def _mapped(behaviour: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``behaviour`` (async, any call shape) with its exceptions answered
    through the table; a generator stays a generator."""
    if inspect.isasyncgenfunction(behaviour):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - the single place errors become statuses
                await _abort(context, exc, what)

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the single place errors become statuses
            await _abort(context, exc, what)

    return coroutine


def _guard_handler(handler: grpc.RpcMethodHandler, what: str = "") -> grpc.RpcMethodHandler:
    """The same handler, with requests decoded by a decoder that never
    raises and corrupt ones answered INVALID_ARGUMENT (grpc would answer
    UNKNOWN naming a Python exception), and exceptions answered through the
    table; an answer a behaviour encoded itself (bytes) is sent as it is.
    Behaviours are async (grpc.aio)."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler
    kind = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    decode = _tolerant(deserialize, kind.full_name if kind is not None else "request")
    serialize = _encoded_or(handler.response_serializer)

    async def request_checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, CorruptRequest):
            await context.abort_with_status(request.status())
        return request

    async def requests_checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async def each() -> Any:
            async for request in requests:
                yield await request_checked(request, context)

        return each()

    if handler.request_streaming:
        if handler.response_streaming:
            behaviour = _same_style(_mapped(handler.stream_stream, what), requests_checked)
            return grpc.stream_stream_rpc_method_handler(behaviour, decode, serialize)
        gather = _mapped(handler.stream_unary, what)

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await gather(await requests_checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, decode, serialize)

    if handler.response_streaming:
        behaviour = _same_style(_mapped(handler.unary_stream, what), request_checked)
        return grpc.unary_stream_rpc_method_handler(behaviour, decode, serialize)
    unary = _mapped(handler.unary_unary, what)

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await unary(await request_checked(request, context), context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, decode, serialize)


def _encoded_or(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serialize``, but an answer a behaviour encoded already (bytes, in a
    worker thread: see ProviderService.ListVMs) is passed on as it is."""
    if serialize is None:
        return None
    encode = serialize

    def encoded_or(response: Any) -> bytes:
        return response if type(response) is bytes else encode(response)

    return encoded_or


def _same_style(inner: Callable[..., Any], prepare: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Any]:
    """A response-streaming behaviour that calls ``inner`` with what
    ``prepare`` makes of its request(s), in ``inner``'s own style: an async
    generator stays one, a coroutine writing with ``context.write`` stays a
    coroutine (grpc.aio does not allow a handler to mix the two)."""
    if inspect.isasyncgenfunction(inner):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async for response in inner(await prepare(request, context), context):
                yield response

        return generator

    async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
        await inner(await prepare(request, context), context)

    return writer


Wrapper = Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]
"""Wraps a method's handler (given the method's full name) in more per-call work."""


def behaviour_of(handler: grpc.RpcMethodHandler) -> tuple[str, Callable[..., Any]]:
    """A handler's kind (``unary_unary``, ``unary_stream``...) and behaviour, for a :data:`Wrapper`."""
    kind = ("stream_" if handler.request_streaming else "unary_") + ("stream" if handler.response_streaming else "unary")
    return kind, getattr(handler, kind)


def with_behaviour(handler: grpc.RpcMethodHandler, kind: str, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """``handler`` of ``kind`` with another behaviour (the same codecs)."""
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(behaviour, handler.request_deserializer, handler.response_serializer)


class _GuardedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, inner: grpc.GenericRpcHandler, registrar: GuardedRegistrar) -> None:
        self._inner = inner
        self._registrar = registrar

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else self._registrar.guard(handler, details.method)


class GuardedRegistrar:
    """Stands in for a grpc.aio server when a generated
    ``add_*Servicer_to_server`` registers a service: every method of it
    answers corrupt requests INVALID_ARGUMENT and its errors through the
    table, inside the ``wrappers``, innermost first (who may call, then
    metrics and the access log: :mod:`provider_core.auth`,
    :mod:`provider_core.observer`). The server registers each of its
    services through one. Per-call work lives here rather than in grpc.aio
    interceptors, which cost about 90 µs of CPU per call by being there."""

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[Wrapper] = ()) -> None:
        self._server = server
        self._wrappers = tuple(wrappers)

    def guard(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        handler = _guard_handler(handler, method)
        for wrap in self._wrappers:
            handler = wrap(handler, method)
        return handler

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h, self) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        guarded = {k: self.guard(v, f"/{service}/{k}") for k, v in handlers.items()}
        self._server.add_registered_method_handlers(service, guarded)
