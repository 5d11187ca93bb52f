"""Tasks: background work the core tracks, native tasks a backend owns,
and task records that survive a restart of the provider."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from provider_core import errors
from provider_core.pb import provider_pb2 as pb
from provider_core.tasks import INTERRUPTED
from provider_core.testing import ProviderHarness, TaskFailed

pytestmark = pytest.mark.needs_test_plugins

Harness = Callable[..., ProviderHarness]


def status(h: ProviderHarness, task: pb.TaskRef) -> pb.TaskStatusResponse:
    return h.stub.TaskStatus(pb.TaskStatusRequest(task=task), timeout=10)


def test_finished_operations_return_no_task(memory: ProviderHarness) -> None:
    resp = memory.stub.Create(pb.CreateRequest(name="vm"))
    assert resp.id == "vm"
    assert not resp.HasField("task")
    assert not memory.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_ON)).HasField("task")


def test_background_work_is_tracked_until_done(harness: Harness) -> None:
    h = harness("memory", {"background": True})
    h.backend.gate.clear()  # type: ignore[attr-defined]
    resp = h.stub.Create(pb.CreateRequest(name="slow-1"))
    assert resp.id == "slow-1"
    assert re.fullmatch(r"task-[0-9a-f]{32}", resp.task.id)
    assert h.backend.wait_active(1)  # type: ignore[attr-defined]
    assert status(h, resp.task) == pb.TaskStatusResponse(done=False, error="")
    assert "slow-1" not in h.backend.vms, "the work has not run yet"  # type: ignore[attr-defined]
    h.backend.gate.set()  # type: ignore[attr-defined]
    h.wait(resp.task)
    assert status(h, resp.task) == pb.TaskStatusResponse(done=True, error="")
    assert h.stub.Describe(pb.DescribeRequest(id="slow-1")).exists


def test_a_failed_task_reports_its_message(harness: Harness) -> None:
    h = harness("memory", {"background": True})
    h.wait(h.stub.Create(pb.CreateRequest(name="vm")).task)
    h.backend.fail_with = errors.FailedPrecondition("disk is locked by host b")  # type: ignore[attr-defined]
    task = h.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_ON)).task
    with pytest.raises(TaskFailed, match="disk is locked by host b"):
        h.wait(task)
    assert status(h, task) == pb.TaskStatusResponse(done=True, error="disk is locked by host b")


def test_an_unexpected_failure_in_a_task_is_reported_generically(harness: Harness) -> None:
    h = harness("memory", {"background": True})
    h.wait(h.stub.Create(pb.CreateRequest(name="vm")).task)
    h.backend.fail_with = KeyError("password")  # type: ignore[attr-defined]
    task = h.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_OFF)).task
    with pytest.raises(TaskFailed):
        h.wait(task)
    assert re.fullmatch(r"internal error \(ref [0-9a-f]{12}\)", status(h, task).error)


def test_deleting_a_vm_that_went_away_meanwhile_succeeds(harness: Harness) -> None:
    h = harness("memory", {"background": True})
    h.wait(h.stub.Delete(pb.DeleteRequest(id="never-existed")).task)


def test_native_task_ids_pass_through_to_the_backend(harness: Harness) -> None:
    h = harness("memory", {"native_tasks": True})
    h.backend.gate.clear()  # type: ignore[attr-defined]
    task = h.stub.Create(pb.CreateRequest(name="slow-native")).task
    assert task.id.startswith("mem-"), "the backend's own id, verbatim"
    assert h.backend.wait_active(1)  # type: ignore[attr-defined]
    assert not status(h, task).done
    assert h.backend.specs["task_status"] == task.id  # type: ignore[attr-defined]
    h.backend.gate.set()  # type: ignore[attr-defined]
    h.wait(task)
    assert h.stub.Describe(pb.DescribeRequest(id="slow-native")).exists


def test_a_failed_native_task(harness: Harness) -> None:
    h = harness("memory", {"native_tasks": True})
    h.wait(h.stub.Create(pb.CreateRequest(name="vm")).task)
    task = h.stub.Power(pb.PowerRequest(id="absent", op=pb.POWER_OP_ON)).task
    with pytest.raises(TaskFailed, match="VM 'absent' not found"):
        h.wait(task)


@pytest.mark.parametrize("task_id", [f"task-{uuid.uuid4().hex}", "task-", "mem-unknown", "UPID:pve:0001:whatever"])
def test_a_task_from_elsewhere_is_not_found(harness: Harness, task_id: str) -> None:
    h = harness("memory", {"native_tasks": True})
    with pytest.raises(grpc.RpcError) as info:
        status(h, pb.TaskRef(id=task_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert task_id in info.value.details()


def test_a_backend_without_native_tasks_answers_not_found(plus: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        status(plus, pb.TaskRef(id="UPID:elsewhere"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_empty_task_is_done(memory: ProviderHarness) -> None:
    assert memory.stub.TaskStatus(pb.TaskStatusRequest()) == pb.TaskStatusResponse(done=True)
    assert status(memory, pb.TaskRef(id="")) == pb.TaskStatusResponse(done=True)
    assert sum(memory.backend.calls.values()) == 0  # type: ignore[attr-defined]


def test_tasks_survive_a_restart(harness: Harness, tmp_path: Path) -> None:
    first = harness("memory", {"background": True}, state_dir=tmp_path)
    first.wait(first.stub.Create(pb.CreateRequest(name="vm")).task)
    finished = first.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_ON)).task
    first.wait(finished)
    first.backend.fail_with = errors.ResourceExhausted("pool full")  # type: ignore[attr-defined]
    failed = first.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_OFF)).task
    with pytest.raises(TaskFailed):
        first.wait(failed)
    first.backend.fail_with = None  # type: ignore[attr-defined]
    first.backend.gate.clear()  # type: ignore[attr-defined]
    running = first.stub.Create(pb.CreateRequest(name="slow-interrupted")).task
    assert first.backend.wait_active(1)  # type: ignore[attr-defined]
    assert not status(first, running).done
    first.stop(grace=0.1)  # the provider goes away while the task still runs

    second = harness("memory", {"background": True}, state_dir=tmp_path)
    assert status(second, finished) == pb.TaskStatusResponse(done=True, error="")
    assert status(second, failed) == pb.TaskStatusResponse(done=True, error="pool full")
    assert status(second, running) == pb.TaskStatusResponse(done=True, error=INTERRUPTED)
    assert INTERRUPTED.startswith("interrupted")
    first.backend.gate.set()  # type: ignore[attr-defined]
