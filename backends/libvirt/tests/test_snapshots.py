"""Snapshots on the libvirt test driver."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def snapshot(harness: ProviderHarness, vm_id: str, hint: str = "", memory: bool = False) -> str:
    resp = harness.stub.SnapshotCreate(
        pb.SnapshotCreateRequest(vm_id=vm_id, name_hint=hint, include_memory=memory, description="d")
    )
    harness.wait(resp.task)
    return str(resp.snapshot_id)


def listed(harness: ProviderHarness, vm_id: str) -> list[str]:
    return list(harness.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id)).snapshots)


def test_snapshot_revert_and_delete(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    stub = harness.stub
    vm_id = make_vm("web-1", disks_json=[{"SizeGiB": 1}])
    stopped = snapshot(harness, vm_id, "before boot")
    assert stopped == "before-boot"
    stub.Power(pb.PowerRequest(id=vm_id, op=pb.POWER_OP_ON))
    running = snapshot(harness, vm_id, "before boot", memory=True)
    assert running == "before-boot-2"  # ids are unique
    dated = snapshot(harness, vm_id)
    assert dated.startswith("snap-")
    assert set(listed(harness, vm_id)) == {stopped, running, dated}

    harness.wait(stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm_id, snapshot_id=stopped)).task)
    assert stub.Describe(pb.DescribeRequest(id=vm_id)).power_state == "Off"
    harness.wait(stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm_id, snapshot_id=running)).task)
    assert stub.Describe(pb.DescribeRequest(id=vm_id)).power_state == "On"

    harness.wait(stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id=vm_id, snapshot_id=dated)).task)
    assert dated not in listed(harness, vm_id)
    stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id=vm_id, snapshot_id=dated))  # already gone: fine


def test_reverting_to_a_missing_snapshot_is_not_found(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("web-1")
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm_id, snapshot_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_snapshots_of_a_missing_vm_are_not_found(harness: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id="ghost"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
