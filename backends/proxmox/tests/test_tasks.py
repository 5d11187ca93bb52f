"""TaskStatus of Proxmox tasks (UPIDs): asked on the task's own node; a
passing API error is retried, never a failed task; a failed task reports
its exit status and the last lines of its log."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb


def status(ops: Any, task_id: str, timeout: float = 10) -> Any:
    return ops.stub.TaskStatus(pb.TaskStatusRequest(task=pb.TaskRef(id=task_id)), timeout=timeout)


@pytest.mark.fakepve(time_scale=0.01)
def test_running_then_done(ops: Any, pve: Any) -> None:
    vm = ops.create("t-1")
    pve.vm(int(vm)).start_secs = 50  # half a second
    task = ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=30).task
    assert task.id.startswith("UPID:pve1:")
    assert not status(ops, task.id).done
    ops.h.wait(task)
    assert status(ops, task.id).error == ""


def test_failed_task_reports_exit_status_and_log(ops: Any, pve: Any) -> None:
    vm = ops.create("t-2")
    pve.vm(int(vm)).start_error = "kvm: -drive file=/dev/pve/vm-100-disk-0: Could not open"
    task = ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=30).task
    st = status(ops, task.id)
    assert st.done
    assert "qmstart" in st.error
    assert "Could not open" in st.error
    assert "last log lines" in st.error


def test_task_on_another_node(ops: Any, pve: Any) -> None:
    pve.add_vm(200, "far", node="pve2", config={"scsi0": "local-lvm:vm-200-disk-0,size=4G"})
    task = ops.stub.Power(pb.PowerRequest(id="200", op=pb.POWER_OP_ON), timeout=30).task
    assert task.id.startswith("UPID:pve2:")
    mark = ops.mark()
    assert status(ops, task.id).done
    assert ops.requests_since(mark) == [("GET", f"/api2/json/nodes/pve2/tasks/{task.id}/status")]


def test_passing_api_error_is_retried(ops: Any, pve: Any) -> None:
    vm = ops.create("t-3")
    task = ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=30).task
    pve.fail("GET", "/nodes/{node}/tasks/{upid}/status", 500, "pveproxy worker busy", times=2)
    st = status(ops, task.id)
    assert st.done
    assert st.error == ""


def test_lasting_api_error_is_unavailable_not_a_failed_task(ops: Any, pve: Any) -> None:
    vm = ops.create("t-4")
    task = ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=30).task
    pve.fail("GET", "/nodes/{node}/tasks/{upid}/status", 595, "No route to host")
    code, _ = ops.fails(lambda: status(ops, task.id, timeout=3))
    assert code is grpc.StatusCode.UNAVAILABLE
    pve.failures.clear()  # the node is back
    assert status(ops, task.id).done


def test_unknown_tasks(ops: Any) -> None:
    for task_id in (
        "no-such-task",
        "UPID:pve1:000FFFFF:00001B58:6B087DA8:qmstart:100:root@pam:",
        "UPID:pve9:000003E8:00001B58:6B087DA8:qmstart:100:root@pam:",
        "UPID:nope:bad",
    ):
        code, _ = ops.fails(lambda t=task_id: status(ops, t))
        assert code is grpc.StatusCode.NOT_FOUND
