"""Describe, ListVMs, Power and Delete on the libvirt test driver."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

ON, OFF, REBOOT, SHUTDOWN = pb.POWER_OP_ON, pb.POWER_OP_OFF, pb.POWER_OP_REBOOT, pb.POWER_OP_SHUTDOWN_GRACEFUL


def power(harness: ProviderHarness, vm_id: str, op: int, graceful: int = 0) -> str:
    resp = harness.stub.Power(pb.PowerRequest(id=vm_id, op=op, graceful_timeout_seconds=graceful))
    harness.wait(resp.task)
    return str(harness.stub.Describe(pb.DescribeRequest(id=vm_id)).power_state)


def test_describe_a_missing_vm_says_it_does_not_exist(harness: ProviderHarness) -> None:
    for vm_id in ("no-such-vm", "7f1c4b1e-0000-4000-8000-000000000000"):
        resp = harness.stub.Describe(pb.DescribeRequest(id=vm_id))
        assert not resp.exists
        assert resp.power_state == "Unknown"


def test_describe_reports_state_ips_and_raw_details(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("web-1", class_json={"CPU": 2, "MemoryMiB": 768}, tags=["a"], disks_json=[{"SizeGiB": 2}])
    off = harness.stub.Describe(pb.DescribeRequest(id=vm_id))
    assert (off.power_state, list(off.ips), off.console_url) == ("Off", [], "")
    raw = json.loads(off.provider_raw_json)
    assert raw["state"] == "shutoff"
    assert raw["uuid"] == vm_id
    assert raw["name"] == "web-1"
    assert raw["id"] == -1
    assert (raw["vcpus"], raw["max_vcpus"], raw["memory_mib"], raw["max_memory_mib"]) == (2, 4, 768, 1536)
    assert raw["managed"] is True
    assert raw["tags"] == ["a"]
    assert raw["domain_type"] == "test"
    assert raw["firmware"] == "bios"
    assert raw["disks"][0]["target"] == "vda"
    assert raw["disks"][0]["format"] == "qcow2"
    assert raw["nics"][0]["source"] == "default"
    assert raw["nics"][0]["mac"].startswith("52:54:00:")
    assert len(raw["spec_hash"]) == 64

    assert power(harness, vm_id, ON) == "On"
    on = harness.stub.Describe(pb.DescribeRequest(id="web-1"))
    raw = json.loads(on.provider_raw_json)
    assert raw["state"] == "running"
    assert raw["id"] > 0
    assert list(on.ips) == ["192.168.122.23"]  # the test driver's made-up lease answer


def test_list_vms_shows_our_vms_with_their_facts(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    a = make_vm("vm-a", class_json={"CPU": 2, "MemoryMiB": 1024}, disks_json=[{"SizeGiB": 3, "Name": "data"}], tags=["x", "y"])
    b = make_vm(
        "vm-b",
        networks_json=[
            {"NetworkName": "default", "MacAddress": "52:54:00:00:00:0b"},
            {"NetworkName": "default", "IPPolicy": "static", "StaticIP": "10.1.2.3", "Prefix": 24},
        ],
    )
    power(harness, b, ON)
    vms = {vm.name: vm for vm in harness.stub.ListVMs(pb.ListVMsRequest()).vms}
    assert set(vms) == {"vm-a", "vm-b", "foreign-vm"}  # every domain, for adoption
    vm_a, vm_b = vms["vm-a"], vms["vm-b"]
    assert (vm_a.id, vm_a.power_state, vm_a.cpu, vm_a.memory_mib) == (a, "Off", 2, 1024)
    assert [(d.id, d.path, d.format) for d in vm_a.disks] == [("vda", "/vmpt-pool/vm-a-data.qcow2", "qcow2")]
    assert dict(vm_a.provider_raw) == {
        "state": "shutoff",
        "reason": "unknown",
        "uuid": a,
        "domain_type": "test",
        "machine": "",
        "managed": "true",
        "tags": "x,y",
    }
    assert (vm_b.id, vm_b.power_state) == (b, "On")
    first = vm_b.networks[0]
    assert (first.name, first.mac, first.ip_address) == ("default", "52:54:00:00:00:0b", "")
    assert vm_b.networks[1].ip_address == "10.1.2.3"
    assert list(vm_b.ips) == ["192.168.122.23", "192.168.122.24"]  # the test driver makes them up


def test_list_scope_all_includes_foreign_domains(test_uri: str) -> None:
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri, "list_scope": "all"}) as h:
        names = {vm.name: vm for vm in h.stub.ListVMs(pb.ListVMsRequest()).vms}
    assert names["foreign-vm"].provider_raw["managed"] == "false"


def test_list_scope_managed_narrows_the_list_to_vm_providers_own(test_uri: str) -> None:
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri, "list_scope": "managed"}) as h:
        h.wait(h.stub.Create(pb.CreateRequest(name="mine")).task)
        names = {vm.name: vm for vm in h.stub.ListVMs(pb.ListVMsRequest()).vms}
    assert set(names) == {"mine"}
    assert names["mine"].provider_raw["managed"] == "true"


def test_power_ops_are_idempotent_and_follow_the_table(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("web-1")
    assert power(harness, vm_id, OFF) == "Off"  # already off
    assert power(harness, vm_id, REBOOT) == "On"  # a stopped VM rebooted is started
    assert power(harness, vm_id, ON) == "On"  # already on
    assert power(harness, vm_id, REBOOT) == "On"
    harness.backend.session.lookup(vm_id).suspend()  # type: ignore[attr-defined]
    assert harness.stub.Describe(pb.DescribeRequest(id=vm_id)).power_state == "Suspended"
    assert power(harness, vm_id, ON) == "On"  # resumed
    assert power(harness, vm_id, SHUTDOWN, graceful=5) == "Off"
    assert power(harness, vm_id, SHUTDOWN, graceful=5) == "Off"
    assert power(harness, vm_id, ON) == "On"
    assert power(harness, vm_id, OFF) == "Off"


def test_graceful_shutdown_returns_a_task(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("web-1")
    power(harness, vm_id, ON)
    resp = harness.stub.Power(pb.PowerRequest(id=vm_id, op=SHUTDOWN, graceful_timeout_seconds=30))
    assert resp.task.id
    harness.wait(resp.task)
    status = harness.stub.TaskStatus(pb.TaskStatusRequest(task=resp.task))
    assert status.done
    assert not status.error


def test_power_of_a_missing_vm_is_not_found(harness: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.Power(pb.PowerRequest(id="ghost", op=ON))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_delete_removes_the_vm_its_volumes_and_snapshots(
    harness: ProviderHarness, make_vm: Callable[..., str], raw: Callable[[str], dict[str, Any]]
) -> None:
    vm_id = make_vm("web-1", disks_json=[{"SizeGiB": 1}, {"SizeGiB": 2}], user_data=b"#cloud-config\n")
    power(harness, vm_id, ON)
    harness.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm_id, name_hint="s1", include_memory=True))
    pool = harness.backend.session.conn().storagePoolLookupByName("default")  # type: ignore[attr-defined]
    assert len(pool.listAllVolumes(0)) == 4
    resp = harness.stub.Delete(pb.DeleteRequest(id=vm_id))
    harness.wait(resp.task)
    assert not harness.stub.Describe(pb.DescribeRequest(id=vm_id)).exists
    assert [v.name() for v in pool.listAllVolumes(0)] == ["base.qcow2"]
    # Deleting it again succeeds.
    harness.stub.Delete(pb.DeleteRequest(id=vm_id))
    harness.stub.Delete(pb.DeleteRequest(id="web-1"))


def test_delete_refuses_a_vm_vm_provider_did_not_make(harness: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.Delete(pb.DeleteRequest(id="foreign-vm"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "manage_foreign_vms" in (info.value.details() or "")
    assert harness.stub.Describe(pb.DescribeRequest(id="foreign-vm")).exists


def test_validate_reports_what_is_missing(test_uri: str) -> None:
    settings = {"uri": test_uri, "pool": "nope", "network": "gone"}
    with ProviderHarness.for_backend("libvirt", settings) as h:
        report = h.stub.Validate(pb.ValidateRequest())
    assert not report.ok
    assert "storage pool 'nope' not found (setting 'pool')" in report.message
    assert "network 'gone' (setting 'network')" in report.message
    assert "libvirt 9." in report.message  # versions are still reported


def test_validate_without_a_daemon_says_so() -> None:
    settings = {"uri": "qemu+unix:///system?socket=/nonexistent/libvirt-sock", "reconnect_attempts": 1}
    with ProviderHarness.for_backend("libvirt", settings) as h:
        report = h.stub.Validate(pb.ValidateRequest())
        assert not report.ok
        assert report.message.startswith("cannot use libvirt at qemu+unix:///system")
        assert "socket=" not in report.message  # the query part of URIs is not echoed
        with pytest.raises(grpc.RpcError) as info:
            h.stub.Describe(pb.DescribeRequest(id="web-1"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_vm_named_by_uuid_or_name_has_one_lock_key(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("lockkey")
    backend = harness.backend
    assert backend.lock_key(vm_id) == vm_id
    assert backend.lock_key(vm_id.upper()) == vm_id
    name = json.loads(harness.stub.Describe(pb.DescribeRequest(id=vm_id)).provider_raw_json)["name"]
    assert backend.lock_key(name) == vm_id
    assert backend.lock_key("no-such-vm") == "no-such-vm"
