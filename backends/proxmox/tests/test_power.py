"""Power and Delete: each a Proxmox task (its UPID) or background work,
idempotent, and on the VM's own node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from vm_provider_proxmox.tasks import parse_upid

from provider_core.pb import provider_pb2 as pb


def power_request(ops: Any, vm: str, op: pb.PowerOp, graceful: int = 0) -> Any:
    return ops.stub.Power(pb.PowerRequest(id=vm, op=op, graceful_timeout_seconds=graceful), timeout=30)


def test_on_off_are_native_tasks_and_idempotent(ops: Any) -> None:
    vm = ops.create("pw-1")
    resp = power_request(ops, vm, pb.POWER_OP_ON)
    upid = parse_upid(resp.task.id)
    assert upid is not None
    assert upid.type == "qmstart"
    ops.h.wait(resp.task)
    assert ops.state(vm) == "On"
    assert not power_request(ops, vm, pb.POWER_OP_ON).task.id  # already on: nothing to do
    ops.power(vm, pb.POWER_OP_OFF)
    assert ops.state(vm) == "Off"
    assert not power_request(ops, vm, pb.POWER_OP_OFF).task.id
    assert not power_request(ops, vm, pb.POWER_OP_SHUTDOWN_GRACEFUL).task.id


def test_paused_vm_is_suspended_and_on_resumes_it(ops: Any, api: Any) -> None:
    vm = ops.create("pw-2")
    ops.power(vm, pb.POWER_OP_ON)
    api.nodes("pve1").qemu(vm).status.suspend.post()  # paused by someone else (the web UI)
    assert ops.state(vm) == "Suspended"
    resp = power_request(ops, vm, pb.POWER_OP_ON)
    assert parse_upid(resp.task.id).type == "qmresume"  # type: ignore[union-attr]
    ops.h.wait(resp.task)
    assert ops.state(vm) == "On"


def test_graceful_shutdown_forces_off_after_the_timeout(ops: Any, pve: Any) -> None:
    vm = ops.create("pw-3")
    ops.power(vm, pb.POWER_OP_ON)
    pve.vm(int(vm)).acpi = False  # the guest ignores the ACPI button
    mark = ops.mark()
    ops.power(vm, pb.POWER_OP_SHUTDOWN_GRACEFUL, graceful=7)
    assert ops.state(vm) == "Off"
    bodies = [body for m, p, body in pve.requests[mark:] if p.endswith("/status/shutdown")]
    assert bodies == [b"timeout=7&forceStop=1"]


def test_reboot(ops: Any, pve: Any, api: Any) -> None:
    vm = ops.create("pw-4")
    ops.power(vm, pb.POWER_OP_REBOOT)  # a stopped VM is started
    assert ops.state(vm) == "On"
    api.nodes("pve1").qemu(vm).config.put(cores=2)  # a change waiting for the reboot
    assert int(pve.vm(int(vm)).config["cores"]) == 1
    ops.power(vm, pb.POWER_OP_REBOOT)
    assert ops.state(vm) == "On"
    assert int(pve.vm(int(vm)).config["cores"]) == 2


def test_vm_on_another_node(ops: Any, pve: Any) -> None:
    pve.add_vm(200, "elsewhere", node="pve2", config={"scsi0": "local-lvm:vm-200-disk-0,size=4G", "tags": "vm-provider"})
    mark = ops.mark()
    ops.power("200", pb.POWER_OP_ON)
    assert ops.state("200") == "On"
    assert all("/nodes/pve1/" not in p for m, p in ops.requests_since(mark))


def test_vm_that_migrated(ops: Any, pve: Any) -> None:
    vm = ops.create("pw-5")
    pve.vm(int(vm)).node = "pve2"  # migrated since the provider learnt its node
    ops.power(vm, pb.POWER_OP_ON)
    assert pve.vm(int(vm)).status == "running"


def test_missing_vm(ops: Any) -> None:
    for vm_id in ("555", "not-a-vmid", "99"):
        code, _ = ops.fails(lambda v=vm_id: power_request(ops, v, pb.POWER_OP_ON))
        assert code is grpc.StatusCode.NOT_FOUND


def test_delete_stopped_and_running(ops: Any, pve: Any) -> None:
    stopped = ops.create("del-1")
    resp = ops.stub.Delete(pb.DeleteRequest(id=stopped), timeout=30)
    assert parse_upid(resp.task.id).type == "qmdestroy"  # type: ignore[union-attr]
    ops.h.wait(resp.task)
    assert pve.vm(int(stopped)) is None
    running = ops.create("del-2")
    ops.power(running, pb.POWER_OP_ON)
    mark = ops.mark()
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=running), timeout=30).task)
    assert pve.vm(int(running)) is None
    sent = ops.requests_since(mark)
    assert ("POST", f"/api2/json/nodes/pve1/qemu/{running}/status/stop") in sent
    assert ("DELETE", f"/api2/json/nodes/pve1/qemu/{running}") in sent
    assert not ops.describe(running).exists


def test_delete_purges(ops: Any) -> None:
    vm = ops.create("del-3")
    resp = ops.stub.Delete(pb.DeleteRequest(id=vm), timeout=30)
    ops.h.wait(resp.task)
    upid = parse_upid(resp.task.id)
    assert upid is not None
    log = ops.h.backend.client.get(f"{upid.path}/log")
    assert any("purging VM" in line["t"] for line in log)


def test_delete_missing_succeeds(ops: Any) -> None:
    resp = ops.stub.Delete(pb.DeleteRequest(id="555"), timeout=30)
    assert not resp.task.id


def test_delete_protected_vm(ops: Any, api: Any) -> None:
    vm = ops.create("del-4")
    api.nodes("pve1").qemu(vm).config.put(protection=1)
    code, message = ops.fails(lambda: ops.stub.Delete(pb.DeleteRequest(id=vm), timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "protect" in message


def test_delete_removes_snippets(ops: Any, snippets_dir: Path) -> None:
    vm = ops.create("del-5", user_data=b"#cloud-config\n")
    ops.power(vm, pb.POWER_OP_ON)
    assert len(list((snippets_dir / "snippets").iterdir())) == 1
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=vm), timeout=30).task)
    assert list((snippets_dir / "snippets").iterdir()) == []
