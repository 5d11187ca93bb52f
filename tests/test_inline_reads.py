"""Backends whose reads never block have Describe and TaskStatus called on
the event loop; everything else, and every other backend, uses workers."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from provider_core import Unavailable
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins

HarnessFactory = Callable[..., ProviderHarness]
LOOP = "vm-provider-harness"  # the harness's event-loop thread


def test_reads_of_a_nonblocking_backend_run_on_the_event_loop(harness: HarnessFactory) -> None:
    h = harness("memory", {"nonblocking_reads": True, "native_tasks": True})
    stub, backend = h.stub, h.backend
    task = stub.Create(pb.CreateRequest(name="vm")).task
    h.wait(task)
    assert stub.Describe(pb.DescribeRequest(id="vm")).exists
    assert not stub.Describe(pb.DescribeRequest(id="missing")).exists
    stub.ListVMs(pb.ListVMsRequest())
    stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_ON))
    threads = backend.threads  # type: ignore[attr-defined]
    assert threads["describe"] == LOOP
    assert threads["task_status"] == LOOP
    for op in ("create", "list_vms", "power"):
        assert threads[op].startswith("memory-call-"), (op, threads[op])
    # Inline, the backend sees no deadline: it never waits for anything.
    assert backend.deadlines["describe"] is None  # type: ignore[attr-defined]


def test_reads_of_other_backends_run_in_workers(memory: ProviderHarness) -> None:
    memory.stub.Create(pb.CreateRequest(name="vm"))
    assert memory.stub.Describe(pb.DescribeRequest(id="vm"), timeout=10).exists
    assert memory.backend.threads["describe"].startswith("memory-call-")  # type: ignore[attr-defined]
    assert memory.backend.deadlines["describe"] is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (Unavailable("memory hypervisor unreachable"), grpc.StatusCode.UNAVAILABLE),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
        (SystemExit(3), grpc.StatusCode.INTERNAL),
        (KeyboardInterrupt(), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_an_inline_failure_maps_like_any_other_and_the_server_carries_on(
    harness: HarnessFactory, failure: BaseException, code: grpc.StatusCode
) -> None:
    h = harness("memory", {"nonblocking_reads": True})
    h.stub.Create(pb.CreateRequest(name="vm"))
    h.backend.fail_with = failure  # type: ignore[attr-defined]
    try:
        with pytest.raises(grpc.RpcError) as info:
            h.stub.Describe(pb.DescribeRequest(id="vm"), timeout=10)
    finally:
        h.backend.fail_with = None  # type: ignore[attr-defined]
    assert info.value.code() == code
    assert "Traceback" not in (info.value.details() or "")
    assert h.stub.Describe(pb.DescribeRequest(id="vm"), timeout=10).exists
    check = health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
