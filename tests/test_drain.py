"""SIGTERM on a real ``vm-provider`` process: in-flight calls finish, new
calls are refused, the process exits 0 within the grace period."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.tasks import INTERRUPTED

pytestmark = pytest.mark.needs_test_plugins


class Provider:
    """A vm-provider process serving a test backend (``served``), with stubs on its port."""

    def __init__(self, served: Any) -> None:
        self.served = served
        self.proc = served.proc
        started = served.started()
        self.port, self.event_loop = int(started["port"]), started["loop"]
        self.stub = pb_grpc.ProviderStub(served.channel)
        self.health = health_pb2_grpc.HealthStub(served.channel)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        return self.served.wait_for(pattern, timeout)  # type: ignore[no-any-return]


@pytest.fixture
def provider(tmp_path: Path, serve: Callable[..., Any]) -> Callable[..., Provider]:
    def start(
        backend: str = "memory", table: str = "", grace: float = 20.0, server: str = "", drain_delay: float = 0.0
    ) -> Provider:
        config = (
            f'[server]\ngrace_seconds = {grace}\ndrain_delay = {drain_delay}\nstate_dir = "{tmp_path / "state"}"\n'
            f"{server}\n\n[backends.{backend}]\n{table}\n"
        )
        return Provider(serve("--backend", backend, "--listen", "127.0.0.1:0", config=config))

    return start


def _entered(trace: Path, name: str) -> None:
    end = time.monotonic() + 20
    while not (trace / name).exists():
        assert time.monotonic() < end, f"{name} never reached the backend"
        time.sleep(0.01)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(
    provider: Callable[..., Provider], tmp_path: Path, loop: str
) -> None:
    trace = tmp_path / "trace"
    trace.mkdir()
    p = provider(table=f'delay_seconds = 2.0\ntrace_dir = "{trace}"', grace=20.0, server=f'event_loop = "{loop}"')
    assert p.event_loop == loop
    assert not p.stub.Describe(pb.DescribeRequest(id="fast"), timeout=10).exists
    in_flight = p.stub.Describe.future(pb.DescribeRequest(id="slow-1"), timeout=30)
    _entered(trace, "describe-slow-1")
    p.proc.send_signal(signal.SIGTERM)
    p.wait_for("signal received: draining")

    refused = None
    while refused is None:
        assert not in_flight.done(), "no new call was refused while the slow one still ran"
        try:
            p.stub.Describe(pb.DescribeRequest(id="fast"), timeout=5)
        except grpc.RpcError as err:
            refused = err
    # A call arriving at the very moment grpc shuts the server down is
    # cancelled by grpc itself; after that every new call is UNAVAILABLE.
    assert refused.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    with pytest.raises(grpc.RpcError) as later:
        p.stub.Describe(pb.DescribeRequest(id="fast"), timeout=5)
    assert later.value.code() == grpc.StatusCode.UNAVAILABLE
    assert in_flight.result(timeout=30) == pb.DescribeResponse(exists=False, power_state="Off")
    assert p.proc.wait(timeout=20) == 0
    p.wait_for("stopped")


def test_sigterm_waits_for_background_tasks_and_keeps_their_result(provider: Callable[..., Provider], tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.mkdir()
    table = f'background = true\ndelay_seconds = 1.0\ntrace_dir = "{trace}"'
    p = provider(table=table, grace=20.0)
    task = p.stub.Create(pb.CreateRequest(name="slow-bg"), timeout=10).task
    assert task.id
    _entered(trace, "create-slow-bg")
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(timeout=20) == 0
    p.wait_for("stopped")
    again = provider(table=table)
    assert again.stub.TaskStatus(pb.TaskStatusRequest(task=task), timeout=10) == pb.TaskStatusResponse(done=True, error="")


def test_a_task_cut_short_by_the_grace_period_is_interrupted_after_a_restart(
    provider: Callable[..., Provider], tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    trace.mkdir()
    table = f'background = true\ndelay_seconds = 600\ntrace_dir = "{trace}"'
    p = provider(table=table, grace=0.2)
    task = p.stub.Create(pb.CreateRequest(name="slow-cut"), timeout=10).task
    _entered(trace, "create-slow-cut")
    p.proc.send_signal(signal.SIGTERM)
    # The backend is stuck for ten minutes: the grace period still bounds the exit.
    assert p.proc.wait(timeout=20) == 0
    p.wait_for("abandoning 1 backend call")
    again = provider(table="background = true")
    assert again.stub.TaskStatus(pb.TaskStatusRequest(task=task), timeout=10) == pb.TaskStatusResponse(
        done=True, error=INTERRUPTED
    )


def test_calls_and_background_tasks_share_one_grace_period(provider: Callable[..., Provider], tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.mkdir()
    p = provider(table=f'background = true\ndelay_seconds = 600\ntrace_dir = "{trace}"', grace=2.0)
    task = p.stub.Create(pb.CreateRequest(name="slow-task"), timeout=10).task
    assert task.id
    _entered(trace, "create-slow-task")
    in_flight = p.stub.Describe.future(pb.DescribeRequest(id="slow-call"), timeout=60)
    _entered(trace, "describe-slow-call")
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(timeout=30) == 0
    # The stuck call used up the grace period: the task gets what is left, not a second one.
    waited = p.wait_for(r"waiting up to ([\d.]+)s for 1 background task")
    assert float(waited.group(1)) < 1.0, waited.group(0)
    p.wait_for("abandoning 2 backend call")
    with pytest.raises(grpc.RpcError):
        in_flight.result(timeout=10)


def _health(p: Provider) -> int:
    return p.health.Check(health_pb2.HealthCheckRequest(service="provider.v1.Provider"), timeout=5).status


def test_health_goes_not_serving_first_and_calls_are_served_during_the_drain_delay(provider: Callable[..., Provider]) -> None:
    p = provider(drain_delay=3.0, grace=20.0)
    assert _health(p) == health_pb2.HealthCheckResponse.SERVING
    watch = p.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    p.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # A client watching health hears NOT_SERVING at once, over the still open port...
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert time.monotonic() - signalled < 1.5
    p.wait_for(r"health is NOT_SERVING; still serving calls for 3\.0s")
    # ...and a probe polling Check sees it too, while calls are still answered.
    assert _health(p) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not p.stub.Describe(pb.DescribeRequest(id="vm"), timeout=5).exists
    assert time.monotonic() - signalled < 2.5, "the checks above took so long the delay may have ended"
    # After the delay the port closes and the process ends: the open Watch
    # stream is ended, not waited for until the grace period runs out.
    assert p.proc.wait(timeout=20) == 0
    assert 3.0 <= time.monotonic() - signalled < 10.0
    with pytest.raises(grpc.RpcError) as ended:
        next(watch)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    p.wait_for("stopped")


def test_a_second_signal_cuts_the_drain_delay_short(provider: Callable[..., Provider]) -> None:
    p = provider(drain_delay=600.0, grace=900.0)
    p.proc.send_signal(signal.SIGTERM)
    p.wait_for("health is NOT_SERVING")
    p.proc.send_signal(signal.SIGINT)
    assert p.proc.wait(timeout=20) == 0


def test_the_drain_delay_is_part_of_the_grace_period(provider: Callable[..., Provider]) -> None:
    p = provider(drain_delay=600.0, grace=1.0)
    p.proc.send_signal(signal.SIGTERM)
    p.wait_for(r"still serving calls for 1\.0s")
    assert p.proc.wait(timeout=20) == 0


def test_a_call_whose_client_left_gets_the_grace_period_too(provider: Callable[..., Provider], tmp_path: Path) -> None:
    """A Describe still running in the backend after its client's deadline
    passed is waited for, not abandoned the moment SIGTERM arrives."""
    trace = tmp_path / "trace"
    trace.mkdir()
    p = provider(table=f'delay_seconds = 3.0\ntrace_dir = "{trace}"', grace=30.0)
    with pytest.raises(grpc.RpcError) as gone:
        p.stub.Describe(pb.DescribeRequest(id="slow-left"), timeout=0.5)
    assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _entered(trace, "describe-slow-left")
    p.proc.send_signal(signal.SIGTERM)
    p.wait_for(r"waiting up to 30\.0s for 1 backend call")
    assert p.proc.wait(timeout=20) == 0
    p.wait_for("stopped")
    assert "abandoning" not in "".join(p.served.log)
