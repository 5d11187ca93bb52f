"""The error tree reaches clients as the right status code, through a real server."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from provider_core import errors
from provider_core.pb import provider_pb2 as pb
from provider_core.status import STATUS_CODES, code_for
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins

#: Written out independently of provider_core.status: what clients expect.
EXPECTED: dict[type[errors.ProviderError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.CapabilityMissing: grpc.StatusCode.UNIMPLEMENTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}
REF = re.compile(r"^internal error \(ref [0-9a-f]{12}\)$")


def _tree(root: type[errors.ProviderError]) -> set[type[errors.ProviderError]]:
    found = set()
    for sub in root.__subclasses__():
        found |= {sub} | _tree(sub)
    return found


def _instance(cls: type[errors.ProviderError]) -> errors.ProviderError:
    if cls is errors.CapabilityMissing:
        return errors.CapabilityMissing("snapshots", "memory")
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument.field("class_json.CPU", "must be 1 or more")
    return cls(f"the backend says {cls.__name__}")


def test_every_class_of_the_tree_is_mapped() -> None:
    """Fails when a class is added to provider_core.errors without a code."""
    defined = {obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, errors.ProviderError)}
    defined.discard(errors.ProviderError)
    assert defined == set(EXPECTED), "a new error class needs a row in provider_core.status.STATUS_CODES and in EXPECTED here"
    for cls in defined:
        # Each class is in the table itself, or refines a class that is.
        assert cls in STATUS_CODES or any(base in STATUS_CODES for base in cls.__bases__), cls
        assert code_for(_instance(cls)) == EXPECTED[cls], cls
    assert set(STATUS_CODES) <= defined


def test_every_subclass_anywhere_maps_through_its_parent() -> None:
    # Including subclasses other packages (backends, the kit) defined.
    for cls in _tree(errors.ProviderError):
        if cls.__module__ == errors.__name__:
            continue
        parent = next(c for c in cls.__mro__ if c in EXPECTED)
        assert code_for(cls.__new__(cls)) == EXPECTED[parent], cls


@pytest.fixture(scope="module")
def server() -> Any:
    with ProviderHarness.for_backend("memory") as h:
        h.stub.Create(pb.CreateRequest(name="vm"))
        yield h
        h.backend.fail_with = None


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_class_raised_by_a_backend_reaches_the_client(
    server: ProviderHarness, status_details: Callable[..., list[Any]], cls: type[errors.ProviderError]
) -> None:
    exc = _instance(cls)
    server.backend.fail_with = exc  # type: ignore[attr-defined]
    try:
        with pytest.raises(grpc.RpcError) as info:
            server.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_ON), timeout=10)
    finally:
        server.backend.fail_with = None  # type: ignore[attr-defined]
    assert info.value.code() == EXPECTED[cls]
    assert info.value.details() == str(exc)
    if cls is errors.InvalidArgument:
        (bad,) = status_details(info.value, error_details_pb2.BadRequest)
        assert [(v.field, v.description) for v in bad.field_violations] == [("class_json.CPU", "must be 1 or more")]
    if cls is errors.CapabilityMissing:
        (about,) = status_details(info.value, error_details_pb2.ErrorInfo)
        assert (about.reason, about.metadata["capability"]) == ("CAPABILITY_MISSING", "snapshots")


@pytest.mark.parametrize(
    "exc",
    [KeyError("token=hunter2"), RuntimeError("libvirt: password hunter2 rejected"), ZeroDivisionError(), SystemExit(3)],
    ids=lambda e: type(e).__name__,
)
def test_an_unexpected_exception_is_internal_with_a_reference(
    server: ProviderHarness, caplog: pytest.LogCaptureFixture, exc: BaseException
) -> None:
    caplog.set_level(logging.ERROR, logger="provider_core")
    server.backend.fail_with = exc  # type: ignore[attr-defined]
    try:
        with pytest.raises(grpc.RpcError) as info:
            server.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_OFF), timeout=10)
    finally:
        server.backend.fail_with = None  # type: ignore[attr-defined]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    message = info.value.details()
    assert REF.match(message), message
    assert "hunter2" not in message
    assert type(exc).__name__ not in message
    ref = message.removeprefix("internal error (ref ").removesuffix(")")
    (record,) = [r for r in caplog.records if ref in r.getMessage()]
    assert record.exc_info is not None
    assert record.exc_info[0] is type(exc) or record.exc_info[1].__cause__ is exc  # type: ignore[union-attr]
    # The server carries on.
    assert server.stub.Describe(pb.DescribeRequest(id="vm"), timeout=10).exists


ALL_RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["Provider"].methods]


def _empty_call(h: ProviderHarness, rpc: str) -> Any:
    method = pb.DESCRIPTOR.services_by_name["Provider"].methods_by_name[rpc]
    request = getattr(pb, method.input_type.name)()
    return getattr(h.stub, rpc)(request, timeout=10)


@pytest.mark.parametrize("backend", ["memory", "memory-plus"])
@pytest.mark.parametrize("failure", [None, RuntimeError("boom")], ids=["empty-request", "backend-crashes"])
def test_no_rpc_ever_answers_unknown(harness: Callable[..., ProviderHarness], backend: str, failure: Exception | None) -> None:
    h = harness(backend)
    h.stub.Create(pb.CreateRequest(name="vm"))
    h.backend.fail_with = failure  # type: ignore[attr-defined]
    codes = {}
    for rpc in ALL_RPCS:
        try:
            _empty_call(h, rpc)
            codes[rpc] = grpc.StatusCode.OK
        except grpc.RpcError as err:
            codes[rpc] = err.code()
    assert grpc.StatusCode.UNKNOWN not in codes.values(), codes
    if failure is None:
        # Empty requests are the client's mistake, never an infrastructure failure.
        assert grpc.StatusCode.INTERNAL not in codes.values(), codes


@pytest.mark.parametrize("rpc", ALL_RPCS)
def test_a_corrupt_request_is_invalid_argument(memory: ProviderHarness, rpc: str) -> None:
    raw = memory.channel.unary_unary(f"/provider.v1.Provider/{rpc}")  # type: ignore[union-attr]
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid" in info.value.details()
