"""Reconfigure (online within the hot-plug maxima, disks only grow) and
hardware upgrades."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest

from provider_core.conformance.kit import field_violations
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def reconfigure(h: ProviderHarness, vm: str, desired: dict[str, object]) -> None:
    h.wait(h.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps(desired))).task)


def refused(h: ProviderHarness, vm: str, desired: dict[str, object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        h.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps(desired)))
    return err.value


def cpu_memory(h: ProviderHarness, vm: str) -> tuple[int, int]:
    (listed,) = [v for v in h.stub.ListVMs(pb.ListVMsRequest()).vms if v.id == vm]
    return listed.cpu, listed.memory_mib


def test_a_running_vm_grows_up_to_its_hotplug_maximum(start: Callable[..., ProviderHarness]) -> None:
    h = start(hotplug_cpus=4)
    vm = h.stub.Create(pb.CreateRequest(name="grow", class_json='{"CPU": 2, "MemoryMiB": 1024}'))
    h.wait(vm.task)
    h.wait(h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_ON)).task)
    reconfigure(h, vm.id, {"Class": {"CPU": 4, "MemoryMiB": 2048}})
    assert cpu_memory(h, vm.id) == (4, 2048)
    too_many = refused(h, vm.id, {"Class": {"CPU": 6}})
    assert too_many.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "hot-plug maximum of 4 vCPUs" in too_many.details()
    fewer = refused(h, vm.id, {"Class": {"CPU": 1}})
    assert fewer.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert cpu_memory(h, vm.id) == (4, 2048)
    h.wait(h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_OFF)).task)
    reconfigure(h, vm.id, {"Class": {"CPU": 6}})
    assert cpu_memory(h, vm.id) == (6, 2048)


@pytest.mark.parametrize(
    ("desired", "field"),
    [
        ({"Disks": [{"Name": "data", "SizeGiB": 1}]}, "desired_json.Disks[0].SizeGiB"),
        ({"Disks": [{"Name": "data", "SizeGiB": 3}, {"Name": "extra", "SizeGiB": 1}]}, "desired_json.Disks[1]"),
        ({"Name": "renamed"}, "desired_json.Name"),
        ({"Class": {"Firmware": "UEFI"}}, "desired_json.Class.Firmware"),
        ({"Networks": [{"Bridge": "br9"}]}, "desired_json.Networks"),
    ],
)
def test_what_cannot_change_is_invalid_and_nothing_changes(
    sim: ProviderHarness, create: Callable[..., str], desired: dict[str, object], field: str
) -> None:
    vm = create("fixed", disks_json='[{"Name": "data", "SizeGiB": 2}]')
    before = sim.stub.ListVMs(pb.ListVMsRequest())
    err = refused(sim, vm, desired)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err) == [field]
    assert sim.stub.ListVMs(pb.ListVMsRequest()) == before


def test_the_whole_create_description_applies_only_what_differs(sim: ProviderHarness, create: Callable[..., str]) -> None:
    spec = {
        "Name": "whole",
        "Class": {"CPU": 1, "MemoryMiB": 512},
        "Image": {"TemplateName": "debian-12"},
        "Disks": [{"SizeGiB": 2}],
    }
    vm = create(
        "whole", class_json=json.dumps(spec["Class"]), image_json=json.dumps(spec["Image"]), disks_json=json.dumps(spec["Disks"])
    )
    reconfigure(sim, vm, {**spec, "Class": {"CPU": 2, "MemoryMiB": 512}, "Tags": ["blue"]})
    assert cpu_memory(sim, vm) == (2, 512)
    assert json.loads(sim.stub.Describe(pb.DescribeRequest(id=vm)).provider_raw_json)["tags"] == ["blue"]


def test_hardware_upgrade_moves_forward_only(sim: ProviderHarness, create: Callable[..., str]) -> None:
    vm = create("hw")

    def version() -> int:
        return int(json.loads(sim.stub.Describe(pb.DescribeRequest(id=vm)).provider_raw_json)["hardware_version"])

    assert version() == 19
    sim.wait(sim.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=20)).task)
    assert version() == 20
    for target, words in ((19, "older than the machine's 20"), (22, "not offered by this host")):
        with pytest.raises(grpc.RpcError) as err:
            sim.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=target))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert words in err.value.details()
    sim.wait(sim.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=0)).task)
    assert version() == 21
