"""The one table from the error tree to gRPC status codes.

Conversion happens here and only here (the service wraps every RPC with
:func:`rpc`). Invalid arguments carry ``google.rpc.BadRequest`` field
violations; a missing capability carries ``google.rpc.ErrorInfo``. Anything
outside the tree is INTERNAL with a generic message and a log reference, so
no RPC ever answers UNKNOWN and no traceback reaches a client.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import errors
from .runtime import internal_error

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


def code_for(exc: errors.ProviderError) -> grpc.StatusCode:
    """The status code of an error: its own class's, or its nearest parent's."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


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


H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class CorruptRequest:
    """Stands in for a request whose bytes are not a valid message, so the
    handler answers INVALID_ARGUMENT (grpc itself would answer UNKNOWN)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def status(self) -> grpc.Status:
        return to_status(errors.InvalidArgument(f"the request is not a valid {self.kind} message"))


def tolerant_decoder(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer of ``message_type`` that never raises."""
    return _tolerant(message_type.FromString, message_type.DESCRIPTOR.full_name)


def _tolerant(deserialize: Callable[[bytes], Any], name: str) -> Callable[[bytes], Any]:
    """``deserialize``, answering a :class:`CorruptRequest` instead of raising."""

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return CorruptRequest(name)

    return decode


def rpc(handler: H) -> H:
    """Wrap a servicer method: every exception becomes a proper status."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, CorruptRequest):
            await context.abort_with_status(request.status())
        try:
            return await handler(self, request, context)
        except errors.ProviderError as exc:
            await context.abort_with_status(to_status(exc))
        except Exception as exc:  # noqa: BLE001 - the single place unexpected errors become INTERNAL
            message = internal_error(exc, handler.__name__)
            await context.abort_with_status(to_status(errors.Internal(message)))

    return wrapper  # type: ignore[return-value]


def _guard_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, with requests decoded by a decoder that never
    raises and corrupt ones answered INVALID_ARGUMENT (grpc would answer
    UNKNOWN naming a Python exception). For services vm-provider registers
    but does not write (health, reflection); their behaviours are async."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler
    kind = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    decode = _tolerant(deserialize, kind.full_name if kind is not None else "request")
    serialize = handler.response_serializer

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
            behaviour = _same_style(handler.stream_stream, requests_checked)
            return grpc.stream_stream_rpc_method_handler(behaviour, decode, serialize)
        gather = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await gather(await requests_checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, decode, serialize)

    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_same_style(handler.unary_stream, request_checked), decode, serialize)
    unary = handler.unary_unary

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await unary(await request_checked(request, context), context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, decode, serialize)


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


class _GuardedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else _guard_handler(handler)


class GuardedRegistrar:
    """Stands in for a grpc.aio server when a generated
    ``add_*Servicer_to_server`` registers a service vm-provider did not
    write, so that its methods answer corrupt requests INVALID_ARGUMENT."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service, {k: _guard_handler(v) for k, v in handlers.items()})
