"""Snapshots (with memory only when running) and clones (linked ones keep a
reference to their source's disks)."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest
from vm_provider_sim.hypervisor import Hypervisor
from vm_provider_sim.machines import SHUTOFF, Machine

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def snapshot(h: ProviderHarness, vm: str, name: str, memory: bool = False) -> str:
    resp = h.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint=name, include_memory=memory))
    h.wait(resp.task)
    return str(resp.snapshot_id)


def power(h: ProviderHarness, vm: str, op: pb.PowerOp) -> None:
    h.wait(h.stub.Power(pb.PowerRequest(id=vm, op=op)).task)


def test_memory_is_saved_only_from_a_running_vm(sim: ProviderHarness, create: Callable[..., str]) -> None:
    vm = create("mem")
    stopped = snapshot(sim, vm, "cold", memory=True)
    power(sim, vm, pb.POWER_OP_ON)
    running = snapshot(sim, vm, "warm", memory=True)
    sim.wait(sim.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=stopped)).task)
    assert sim.stub.Describe(pb.DescribeRequest(id=vm)).power_state == "Off"
    sim.wait(sim.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=running)).task)
    assert sim.stub.Describe(pb.DescribeRequest(id=vm)).power_state == "On"


def test_snapshot_names_are_unique_per_vm_and_revert_accepts_them(sim: ProviderHarness, create: Callable[..., str]) -> None:
    vm = create("named")
    snapshot(sim, vm, "nightly")
    with pytest.raises(grpc.RpcError) as err:
        sim.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint="nightly"))
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    sim.wait(sim.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id="nightly")).task)


def test_disk_info_of_a_snapshot_shows_the_size_it_had(sim: ProviderHarness, create: Callable[..., str]) -> None:
    vm = create("sized", disks_json='[{"Name": "data", "SizeGiB": 2}]')
    snap = snapshot(sim, vm, "small")
    sim.wait(sim.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json='{"Disks": [{"Name": "data", "SizeGiB": 8}]}')).task)
    now = sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm, disk_id="data"))
    then = sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm, disk_id="data", snapshot_id=snap))
    assert (now.virtual_size_bytes, then.virtual_size_bytes) == (8 * 2**30, 2 * 2**30)
    assert list(now.snapshots) == [snap]


def test_a_linked_clone_holds_on_to_its_source(sim: ProviderHarness, create: Callable[..., str]) -> None:
    source = create("golden", image_json='{"TemplateName": "alpine-3.20"}')
    linked = sim.stub.Clone(pb.CloneRequest(source_vm_id=source, target_name="thin", linked=True))
    full = sim.stub.Clone(pb.CloneRequest(source_vm_id=source, target_name="thick"))
    sim.wait(linked.task)
    sim.wait(full.task)
    source_disk = sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=source))
    assert sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=linked.target_vm_id)).backing_file == source_disk.path
    assert sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=full.target_vm_id)).backing_file == ""
    with pytest.raises(grpc.RpcError) as err:
        sim.stub.Delete(pb.DeleteRequest(id=source))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "linked clones use this machine's disks: thin" in err.value.details()
    sim.wait(sim.stub.Delete(pb.DeleteRequest(id=linked.target_vm_id)).task)
    sim.wait(sim.stub.Delete(pb.DeleteRequest(id=source)).task)
    assert sim.stub.Describe(pb.DescribeRequest(id=full.target_vm_id)).exists


def test_a_clone_gets_new_macs_and_its_customization(sim: ProviderHarness, create: Callable[..., str]) -> None:
    source = create("tmpl", networks_json='[{"NetworkName": "default", "MacAddress": "52:54:00:aa:bb:cc"}]')
    customize = {"hostname": "web-2", "networks": [{"ipAddress": "198.51.100.7", "subnetMask": "255.255.255.0"}]}
    resp = sim.stub.Clone(pb.CloneRequest(source_vm_id=source, target_name="web-2", customize_json=json.dumps(customize)))
    sim.wait(resp.task)
    vms = {v.name: v for v in sim.stub.ListVMs(pb.ListVMsRequest()).vms}
    assert vms["tmpl"].networks[0].mac == "52:54:00:aa:bb:cc"
    assert vms["web-2"].networks[0].mac != "52:54:00:aa:bb:cc"
    power(sim, resp.target_vm_id, pb.POWER_OP_ON)
    described = sim.stub.Describe(pb.DescribeRequest(id=resp.target_vm_id))
    assert list(described.ips) == ["198.51.100.7"]
    assert json.loads(described.provider_raw_json)["customization"] == {"hostname": "web-2"}


def test_a_guest_is_paused_while_its_memory_is_saved(start: Callable[..., ProviderHarness]) -> None:
    h = start(task_seconds=0.3)
    vm = h.stub.Create(pb.CreateRequest(name="busy"))
    h.wait(vm.task)
    power(h, vm.id, pb.POWER_OP_ON)
    resp = h.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm.id, name_hint="live", include_memory=True))
    during = h.stub.Describe(pb.DescribeRequest(id=vm.id))
    # Off in the words clients accept by default; the native state says paused
    assert (during.power_state, json.loads(during.provider_raw_json)["state"]) == ("Off", "paused")
    h.wait(resp.task)
    assert h.stub.Describe(pb.DescribeRequest(id=vm.id)).power_state == "On"


def test_powering_on_a_paused_guest_resumes_it() -> None:
    host = Hypervisor(None, storage_gib=100, shutdown_seconds=0, hardware_versions=[1])
    host.define(Machine("vm-1", "paused", True, SHUTOFF, 1, 512, 1, 512, 1))
    host.start("vm-1")
    host.snapshot_create("vm-1", "live", "", memory=True)
    assert host.get("vm-1").state == "paused"
    host.start("vm-1")
    assert host.get("vm-1").state == "running"
