"""A client that calls a provider the way VirtRigaud's manager does.

From internal/transport/grpc/client.go: one deadline per RPC, every call
with WaitForReady and without retries, TaskStatus polled until ``done``
(``error`` non-empty means failed), NOT_FOUND from Delete taken as "already
deleted", graceful shutdown asked with 60 s, Validate before a client is
reused. Its circuit breaker counts UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL
and UNKNOWN; 10 of them open it for 60 s. :class:`Breaker` keeps every
counted failure so a test can fail when a run would have opened it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from provider_core.conformance.kit import DEADLINES  # the manager's deadline of each RPC
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

#: What the manager's circuit breaker counts as an infrastructure failure.
COUNTED = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)
THRESHOLD = 10
WINDOW = 60.0


@dataclass
class Breaker:
    """Every counted failure, with when and where it happened."""

    failures: list[tuple[float, str, grpc.StatusCode, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, rpc: str, code: grpc.StatusCode, details: str) -> None:
        if code in COUNTED:
            with self.lock:
                self.failures.append((time.monotonic(), rpc, code, details))

    def would_open(self) -> bool:
        """10 or more counted failures within any 60 s."""
        times = sorted(t for t, *_ in self.failures)
        return any(times[i + THRESHOLD - 1] - times[i] <= WINDOW for i in range(len(times) - THRESHOLD + 1))

    def report(self) -> str:
        return "\n".join(f"  {rpc}: {code.name}: {details}" for _, rpc, code, details in self.failures[-THRESHOLD:])


def dial(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel as the manager opens it: no retries; with its client
    certificate when the provider serves TLS (the test CA's server
    certificate names localhost, where the manager's names the Service)."""
    options: list[tuple[str, object]] = [("grpc.enable_retries", 0)]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    options.append(("grpc.ssl_target_name_override", "localhost"))
    return grpc.secure_channel(target, credentials, options=options)


class TaskFailed(AssertionError):
    pass


class Manager:
    """The manager's gRPC client for one provider."""

    def __init__(
        self, target: str, breaker: Breaker, poll_interval: float = 0.2, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.target = target
        self.breaker = breaker
        self.poll_interval = poll_interval  # the manager requeues every 5 s; shortened here
        self.credentials = credentials
        self.calls: list[tuple[str, grpc.StatusCode]] = []
        self._channel = self._dial()

    def _dial(self) -> grpc.Channel:
        return dial(self.target, self.credentials)

    def close(self) -> None:
        self._channel.close()

    def call(self, rpc: str, request: Any) -> Any:
        method: Callable[..., Any] = getattr(pb_grpc.ProviderStub(self._channel), rpc)
        try:
            answer = method(request, timeout=DEADLINES[rpc], wait_for_ready=True)
        except grpc.RpcError as err:
            self.calls.append((rpc, err.code()))
            self.breaker.record(rpc, err.code(), err.details() or "")
            raise
        self.calls.append((rpc, grpc.StatusCode.OK))
        return answer

    # -- what the controllers do -------------------------------------------------------------

    def reuse(self) -> None:
        """Before reusing a cached client: Validate; on failure dial again."""
        try:
            self.call("Validate", pb.ValidateRequest())
        except grpc.RpcError:
            self._channel.close()
            self._channel = self._dial()
            raise

    def wait(self, task: pb.TaskRef | str, timeout: float = 300) -> None:
        """Poll TaskStatus until done; an error fails."""
        task_id = task if isinstance(task, str) else task.id
        if not task_id:
            return
        end = time.monotonic() + timeout
        while True:
            status = self.call("TaskStatus", pb.TaskStatusRequest(task=pb.TaskRef(id=task_id)))
            if status.done:
                if status.error:
                    raise TaskFailed(status.error)
                return
            assert time.monotonic() < end, f"task {task_id} not done within {timeout}s"
            time.sleep(self.poll_interval)

    def create(self, request: pb.CreateRequest) -> str:
        answer = self.call("Create", request)
        self.wait(answer.task)
        return str(answer.id)

    def power(self, vm_id: str, op: int) -> None:
        graceful = 60 if op == pb.POWER_OP_SHUTDOWN_GRACEFUL else 0
        self.wait(self.call("Power", pb.PowerRequest(id=vm_id, op=op, graceful_timeout_seconds=graceful)).task)

    def reconfigure(self, vm_id: str, desired_json: str) -> None:
        self.wait(self.call("Reconfigure", pb.ReconfigureRequest(id=vm_id, desired_json=desired_json)).task)

    def delete(self, vm_id: str) -> None:
        try:
            answer = self.call("Delete", pb.DeleteRequest(id=vm_id))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return  # already deleted
            raise
        self.wait(answer.task)

    def describe(self, vm_id: str) -> pb.DescribeResponse:
        return self.call("Describe", pb.DescribeRequest(id=vm_id))

    def list_vms(self) -> list[pb.VMInfo]:
        return list(self.call("ListVMs", pb.ListVMsRequest()).vms)

    def image_prepare(self, image_json: str, target_name: str) -> pb.ImagePrepareResponse:
        return self.call("ImagePrepare", pb.ImagePrepareRequest(image_json=image_json, target_name=target_name))
