"""Snapshots with and without RAM, revert, delete."""

from __future__ import annotations

from typing import Any

import grpc
from vm_provider_proxmox.snapshots import snapshot_name
from vm_provider_proxmox.tasks import parse_upid

from provider_core.pb import provider_pb2 as pb


def snap(ops: Any, vm: str, hint: str, memory: bool = False) -> str:
    resp = ops.stub.SnapshotCreate(
        pb.SnapshotCreateRequest(vm_id=vm, name_hint=hint, include_memory=memory, description="before"), timeout=30
    )
    assert parse_upid(resp.task.id).type == "qmsnapshot"  # type: ignore[union-attr]
    ops.h.wait(resp.task)
    return str(resp.snapshot_id)


def test_snapshot_revert_delete(ops: Any, pve: Any) -> None:
    vm = ops.create("sn-1", class_json={"CPU": 1})
    sid = snap(ops, vm, "before-upgrade")
    assert sid == "before-upgrade"
    assert pve.vm(int(vm)).snapshots[sid]["description"] == "before"
    ops.h.wait(ops.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json='{"Class": {"CPU": 3}}')).task)
    assert int(pve.vm(int(vm)).config["cores"]) == 3
    revert = ops.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=sid), timeout=30)
    assert parse_upid(revert.task.id).type == "qmrollback"  # type: ignore[union-attr]
    ops.h.wait(revert.task)
    assert int(pve.vm(int(vm)).config["cores"]) == 1
    ops.h.wait(ops.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id=sid), timeout=30).task)
    assert sid not in pve.vm(int(vm)).snapshots
    again = ops.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id=sid), timeout=30)
    assert not again.task.id  # already gone: success
    code, _ = ops.fails(lambda: ops.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=sid), timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND


def test_memory_snapshot_of_a_running_vm(ops: Any, pve: Any) -> None:
    vm = ops.create("sn-2")
    ops.power(vm, pb.POWER_OP_ON)
    sid = snap(ops, vm, "with-ram", memory=True)
    assert pve.vm(int(vm)).snapshots[sid].get("vmstate")
    ops.power(vm, pb.POWER_OP_OFF)
    ops.h.wait(ops.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=sid), timeout=30).task)
    assert ops.state(vm) == "On"  # back to the running VM the RAM was saved from


def test_memory_of_a_stopped_vm_is_a_disk_snapshot(ops: Any, pve: Any) -> None:
    vm = ops.create("sn-3")
    sid = snap(ops, vm, "stopped", memory=True)
    assert not pve.vm(int(vm)).snapshots[sid].get("vmstate")
    ops.h.wait(ops.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=sid), timeout=30).task)
    assert ops.state(vm) == "Off"


def test_names(ops: Any) -> None:
    vm = ops.create("sn-4")
    assert snap(ops, vm, "").startswith("snap-")
    assert snap(ops, vm, "nightly 2024/05/01") == "nightly-2024-05-01"
    assert snap(ops, vm, "1st") == "s-1st"
    code, message = ops.fails(lambda: ops.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint="1st"), timeout=30))
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert "s-1st" in message


def test_snapshot_name_rules() -> None:
    assert snapshot_name("ok-name_1") == "ok-name_1"
    assert snapshot_name("a") == "s-a"
    assert snapshot_name("current") == "s-current"
    assert len(snapshot_name("x" * 100)) == 40


def test_missing_vm(ops: Any) -> None:
    code, _ = ops.fails(lambda: ops.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id="555"), timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND
    assert not ops.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id="555", snapshot_id="x"), timeout=30).task.id
