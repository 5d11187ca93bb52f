"""Reconfigure on the libvirt test driver: online changes within the
create-time maximums, refusals that change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import libvirt
import pytest
from vm_provider_libvirt import domxml
from vm_provider_libvirt.reconfigure import Change, Plan, each_side

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def reconfigure(harness: ProviderHarness, vm_id: str, desired: dict[str, Any]) -> None:
    resp = harness.stub.Reconfigure(pb.ReconfigureRequest(id=vm_id, desired_json=json.dumps(desired)))
    harness.wait(resp.task)


def refused(harness: ProviderHarness, vm_id: str, desired: dict[str, Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.Reconfigure(pb.ReconfigureRequest(id=vm_id, desired_json=json.dumps(desired)))
    return info.value


def sizes(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    return raw["vcpus"], raw["max_vcpus"], raw["memory_mib"], raw["max_memory_mib"]


@pytest.fixture
def running_vm(harness: ProviderHarness, make_vm: Callable[..., str]) -> str:
    vm_id = make_vm("web-1", class_json={"CPU": 2, "MemoryMiB": 1024}, disks_json=[{"SizeGiB": 2}], tags=["a"])
    harness.stub.Power(pb.PowerRequest(id=vm_id, op=pb.POWER_OP_ON))
    return vm_id


def test_cpu_memory_and_tags_change_online(
    harness: ProviderHarness, running_vm: str, raw: Callable[[str], dict[str, Any]]
) -> None:
    reconfigure(harness, running_vm, {"Class": {"CPU": 4, "MemoryMiB": 2048}, "Tags": ["a", "b"], "Disks": [{"SizeGiB": 2}]})
    after = raw(running_vm)
    assert sizes(after) == (4, 4, 2048, 2048)
    assert after["tags"] == ["a", "b"]
    assert after["state"] == "running"
    reconfigure(harness, running_vm, {"Class": {"CPU": 1, "MemoryMiB": 512}})
    assert sizes(raw(running_vm)) == (1, 4, 512, 2048)


def test_what_a_running_vm_cannot_take_is_refused_whole(
    harness: ProviderHarness, running_vm: str, raw: Callable[[str], dict[str, Any]]
) -> None:
    before = raw(running_vm)
    err = refused(harness, running_vm, {"Class": {"CPU": 3, "MemoryMiB": 4096}})
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "4096 MiB of memory is above this VM's maximum of 2048 MiB: power it off" in (err.details() or "")
    assert raw(running_vm) == before  # the CPU change was not made either
    err = refused(harness, running_vm, {"Class": {"CPU": 8}})
    assert "8 vCPUs is above this VM's maximum of 4" in (err.details() or "")


def test_impossible_changes_are_invalid(harness: ProviderHarness, running_vm: str, raw: Callable[[str], dict[str, Any]]) -> None:
    before = raw(running_vm)
    cases = [
        ({"Disks": [{"SizeGiB": 1}]}, "desired_json.Disks[0].SizeGiB", "disks only grow"),
        ({"Disks": [{"SizeGiB": 2}, {"SizeGiB": 1}]}, "desired_json.Disks[1]", "adding disks"),
        ({"Disks": []}, "desired_json.Disks", "removing disks"),
        ({"Networks": [{}, {}]}, "desired_json.Networks", "adding or removing NICs"),
        ({"Name": "other"}, "desired_json.Name", "renaming"),
        ({"Class": {"Firmware": "UEFI", "CPU": 3}}, "desired_json.Class.Firmware", "BIOS and UEFI"),
    ]
    for desired, path, words in cases:
        err = refused(harness, running_vm, desired)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, desired
        assert (err.details() or "").startswith(path), err.details()
        assert words in (err.details() or "")
    assert raw(running_vm) == before


def test_a_change_that_fails_midway_is_undone(harness: ProviderHarness, running_vm: str) -> None:
    """A plan's changes run in order; when one fails, those made before it
    are undone. Here the CPU change applies, then the test driver refuses
    blockResize (real libvirt calls, on the server's own connection)."""
    dom = harness.backend.session.lookup(running_vm)  # type: ignore[attr-defined]

    def vcpus() -> int:
        return domxml.vcpus(domxml.parse(dom.XMLDesc(0)))[0]

    plan = Plan()
    plan.changes.append(
        Change(
            "vCPUs 2 -> 3",
            each_side(True, lambda flags: dom.setVcpusFlags(3, flags)),
            each_side(True, lambda flags: dom.setVcpusFlags(2, flags)),
        )
    )
    grown: list[int] = []

    def grow() -> None:
        grown.append(vcpus())  # the CPU change was made
        dom.blockResize("vda", 4 * 2**30, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    plan.disk_changes.append(Change("disk vda -> 4 GiB", grow))
    with pytest.raises(libvirt.libvirtError, match="virDomainBlockResize"):
        plan.run()
    assert grown == [3]
    assert vcpus() == 2


def test_a_stopped_vm_can_go_past_its_maximums(
    harness: ProviderHarness, make_vm: Callable[..., str], raw: Callable[[str], dict[str, Any]]
) -> None:
    vm_id = make_vm("web-2", class_json={"CPU": 1, "MemoryMiB": 512})
    reconfigure(harness, vm_id, {"Class": {"CPU": 6, "MemoryMiB": 4096}})
    assert sizes(raw(vm_id)) == (6, 12, 4096, 8192)


def test_list_vms_follows_a_change_after_an_earlier_listing(harness: ProviderHarness, running_vm: str) -> None:
    def listed() -> tuple[int, int, str]:
        (vm,) = [vm for vm in harness.stub.ListVMs(pb.ListVMsRequest()).vms if vm.id == running_vm]
        return vm.cpu, vm.memory_mib, vm.provider_raw["tags"]

    assert listed() == (2, 1024, "a")
    reconfigure(harness, running_vm, {"Class": {"CPU": 4, "MemoryMiB": 2048}, "Tags": ["a", "b"], "Disks": [{"SizeGiB": 2}]})
    assert listed() == (4, 2048, "a,b")
