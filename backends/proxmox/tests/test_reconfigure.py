"""Reconfigure from desired_json: config changes, disk growth, and what
waits for a reboot on a running VM."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import TaskFailed


def reconfigure(ops: Any, vm: str, desired: dict[str, Any]) -> Any:
    return ops.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps(desired)), timeout=30)


def apply(ops: Any, vm: str, desired: dict[str, Any]) -> None:
    ops.h.wait(reconfigure(ops, vm, desired).task)


def test_stopped_vm(ops: Any, pve: Any) -> None:
    vm = ops.create("rc-1", disks_json=[{"SizeGiB": 2}], networks_json=[{"Bridge": "vmbr0"}, {"Bridge": "vmbr1"}])
    mark = ops.mark()
    apply(
        ops,
        vm,
        {
            "Name": "rc-1b",
            "Class": {"CPU": 4, "MemoryMiB": 4096},
            "Tags": ["blue"],
            "Disks": [{"SizeGiB": 5}, {"SizeGiB": 1}],
            "Networks": [{"Bridge": "vmbr2", "VLAN": 5}],
        },
    )
    config = pve.vm(int(vm)).config
    assert (config["name"], int(config["cores"]), int(config["memory"])) == ("rc-1b", 4, 4096)
    assert set(config["tags"].split(";")) == {"vm-provider", "blue"}
    assert config["net0"].endswith("bridge=vmbr2,tag=5")
    assert "net1" not in config
    assert "ipconfig1" not in config
    assert config["scsi1"].startswith("local-lvm:1")
    sent = ops.requests_since(mark)
    assert ("PUT", f"/api2/json/nodes/pve1/qemu/{vm}/resize") in sent
    resize = [body for m, p, body in pve.requests[mark:] if p.endswith("/resize")]
    assert resize == [b"disk=scsi0&size=5G"]
    listed = {v.id: v for v in ops.stub.ListVMs(pb.ListVMsRequest()).vms}[vm]
    assert (listed.cpu, listed.memory_mib) == (4, 4096)


def test_nothing_to_change(ops: Any) -> None:
    vm = ops.create("rc-2", class_json={"CPU": 2, "MemoryMiB": 512}, disks_json=[{"SizeGiB": 2}])
    mark = ops.mark()
    resp = reconfigure(
        ops,
        vm,
        {
            "Class": {"CPU": 2, "MemoryMiB": 512},
            "Disks": [{"SizeGiB": 2}],
            "Name": "rc-2",
            "Image": {"URL": "https://example.invalid/ignored.qcow2"},
        },
    )
    assert not resp.task.id
    assert all(m == "GET" for m, _ in ops.requests_since(mark))


def test_refused_changes(ops: Any, pve: Any) -> None:
    vm = ops.create("rc-3", disks_json=[{"SizeGiB": 4}, {"SizeGiB": 4}])
    for desired, code, field in [
        ({"Disks": [{"SizeGiB": 3}, {"SizeGiB": 4}]}, grpc.StatusCode.INVALID_ARGUMENT, "Disks[0].SizeGiB"),
        ({"Disks": [{"SizeGiB": 4}]}, grpc.StatusCode.INVALID_ARGUMENT, "does not remove disks"),
        ({"Class": {"Firmware": "UEFI"}}, grpc.StatusCode.INVALID_ARGUMENT, "Firmware"),
        ({"Placement": {"Host": "pve2"}}, grpc.StatusCode.FAILED_PRECONDITION, "migration"),
        ({"UserData": {"CloudInitData": "#cloud-config\n"}}, grpc.StatusCode.INVALID_ARGUMENT, "UserData"),
    ]:
        got, message = ops.fails(lambda d=desired: reconfigure(ops, vm, d))
        assert got is code, message
        assert field in message
    assert "size=4G" in pve.vm(int(vm)).config["scsi0"]


def test_running_vm_change_needing_a_reboot_is_refused(ops: Any, pve: Any) -> None:
    vm = ops.create("rc-4")
    ops.power(vm, pb.POWER_OP_ON)
    mark = ops.mark()
    code, message = ops.fails(lambda: reconfigure(ops, vm, {"Class": {"CPU": 2, "MemoryMiB": 2048}}))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "cores" in message
    assert "memory" in message
    assert "reboot" in message
    assert all(m == "GET" for m, _ in ops.requests_since(mark))  # nothing applied
    assert not pve.vm(int(vm)).pending


def test_running_vm_live_changes(ops: Any, pve: Any) -> None:
    vm = ops.create("rc-5", disks_json=[{"SizeGiB": 2}])
    ops.power(vm, pb.POWER_OP_ON)
    apply(ops, vm, {"Name": "rc-5b", "Tags": ["x"], "Disks": [{"SizeGiB": 3}]})  # applied at once; disks grow online
    assert pve.vm(int(vm)).config["name"] == "rc-5b"
    assert ops.state(vm) == "On"


def test_running_vm_change_left_pending_is_reported(ops: Any, pve: Any) -> None:
    vm = ops.create("rc-6", networks_json=[{"Bridge": "vmbr0"}])
    ops.power(vm, pb.POWER_OP_ON)
    resp = reconfigure(ops, vm, {"Networks": [{"Bridge": "vmbr0", "VLAN": 9}]})  # network hotplug: expected live
    with pytest.raises(TaskFailed, match="wait for a reboot: net0"):  # the simulator, like a VM without hotplug, keeps it pending
        ops.h.wait(resp.task)
    assert "net0" in ops.raw(vm)["pending"]


def test_pending_mode(provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any) -> None:
    ops = ops_for(provider({**settings, "reconfigure_running": "pending"}))
    vm = ops.create("rc-7")
    ops.power(vm, pb.POWER_OP_ON)
    apply(ops, vm, {"Class": {"CPU": 2}})
    assert ops.raw(vm)["pending"] == {"cores": {"pending": "2"}}
    ops.power(vm, pb.POWER_OP_REBOOT)
    assert ops.raw(vm)["pending"] == {}
    assert int(pve.vm(int(vm)).config["cores"]) == 2


def test_missing_vm(ops: Any) -> None:
    code, _ = ops.fails(lambda: reconfigure(ops, "555", {"Class": {"CPU": 2}}))
    assert code is grpc.StatusCode.NOT_FOUND


def test_agent_is_not_a_live_change(ops: Any, pve: Any) -> None:
    """qemu-server leaves an ``agent`` change pending on a running VM
    (PVE/QemuServer.pm:4594-4607, 5207-5227; pvesim.agent)."""
    vm = ops.create("rc-8")
    ops.power(vm, pb.POWER_OP_ON)
    code, message = ops.fails(lambda: reconfigure(ops, vm, {"Class": {"ExtraConfig": {"agent": "enabled=1,type=isa"}}}))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "agent" in message
    assert not pve.vm(int(vm)).pending
    ops.power(vm, pb.POWER_OP_OFF)
    apply(ops, vm, {"Class": {"ExtraConfig": {"agent": "enabled=1,type=isa"}}})  # stopped: written at once
    assert pve.vm(int(vm)).config["agent"] == "enabled=1,type=isa"


# -- CPU and memory hotplug (vm_provider_proxmox.hotplug; pvesim.hotplug) --------


def online(ops: Any) -> bool:
    return bool(ops.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30).supports_reconfigure_online)


def test_hotplug_vm_grows_while_running(provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any) -> None:
    ops = ops_for(provider({**settings, "cpu_memory_hotplug": True}))
    assert online(ops)
    vm = ops.create("hp-1", class_json={"CPU": 2, "MemoryMiB": 2048})
    config = pve.vm(int(vm)).config
    assert (int(config["cores"]), int(config["sockets"]), int(config["vcpus"])) == (4, 1, 2)
    assert set(config["hotplug"].split(",")) >= {"cpu", "memory"}
    assert int(config["numa"]) == 1
    listed = {v.id: v for v in ops.stub.ListVMs(pb.ListVMsRequest()).vms}[vm]
    assert (listed.cpu, listed.memory_mib) == (2, 2048)
    ops.power(vm, pb.POWER_OP_ON)
    apply(ops, vm, {"Class": {"CPU": 4, "MemoryMiB": 3072}})
    assert not pve.vm(int(vm)).pending
    assert (int(config["cores"]), int(config["vcpus"]), int(config["memory"])) == (4, 4, 3072)
    listed = {v.id: v for v in ops.stub.ListVMs(pb.ListVMsRequest()).vms}[vm]
    assert (listed.cpu, listed.memory_mib) == (4, 3072)
    assert ops.state(vm) == "On"


def test_what_a_running_hotplug_vm_cannot_take(provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any) -> None:
    ops = ops_for(provider({**settings, "cpu_memory_hotplug": True, "max_vcpus": 3}))
    vm = ops.create("hp-2", class_json={"CPU": 2, "MemoryMiB": 2048})
    ops.power(vm, pb.POWER_OP_ON)
    before = dict(pve.vm(int(vm)).config)
    mark = ops.mark()
    for desired, said in [
        ({"CPU": 4}, "4 vCPUs is above this VM's maximum of 3"),
        ({"CPU": 1}, "removing vCPUs (2 -> 1)"),
        ({"MemoryMiB": 1024}, "shrinking memory of a running VM (2048 -> 1024 MiB)"),
        ({"MemoryMiB": 2100}, "2100 MiB is not reachable online, 2048 or 2560 MiB are"),
    ]:
        code, message = ops.fails(lambda d=desired: reconfigure(ops, vm, {"Class": d}))
        assert code is grpc.StatusCode.FAILED_PRECONDITION, message
        assert said in message
    assert all(m == "GET" for m, _ in ops.requests_since(mark))  # nothing applied
    assert pve.vm(int(vm)).config == before
    ops.power(vm, pb.POWER_OP_OFF)
    apply(ops, vm, {"Class": {"CPU": 5, "MemoryMiB": 2100}})  # stopped: a new maximum
    config = pve.vm(int(vm)).config
    assert (int(config["cores"]), int(config["vcpus"]), int(config["memory"])) == (5, 5, 2100)


def test_a_hugepages_vm_grows_by_its_own_dimms(provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any) -> None:
    """With 1 GiB hugepages qemu-server plugs DIMMs of 1024 MiB above 1024
    MiB per socket (Memory.pm): 2560 MiB is not reachable online there."""
    ops = ops_for(provider({**settings, "cpu_memory_hotplug": True}))
    vm = ops.create("hp-4", class_json={"CPU": 2, "MemoryMiB": 2048})
    config = pve.vm(int(vm)).config
    config["hugepages"] = "1024"
    ops.power(vm, pb.POWER_OP_ON)
    code, message = ops.fails(lambda: reconfigure(ops, vm, {"Class": {"MemoryMiB": 2560}}))
    assert code is grpc.StatusCode.FAILED_PRECONDITION, message
    assert "2560 MiB is not reachable online, 2048 or 3072 MiB are" in message
    apply(ops, vm, {"Class": {"MemoryMiB": 3072}})
    assert int(config["memory"]) == 3072
    assert not pve.vm(int(vm)).pending


def test_without_hotplug_cpu_and_memory_wait(ops: Any, pve: Any) -> None:
    assert not online(ops)
    vm = ops.create("hp-3", class_json={"CPU": 1, "MemoryMiB": 2048})
    assert "vcpus" not in pve.vm(int(vm)).config
    ops.power(vm, pb.POWER_OP_ON)
    code, message = ops.fails(lambda: reconfigure(ops, vm, {"Class": {"CPU": 2, "MemoryMiB": 4096}}))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "CPU hotplug needs the VM created with hotplug=cpu" in message
    assert "memory hotplug needs the VM created with hotplug=memory and numa=1" in message
    assert not pve.vm(int(vm)).pending


def test_hotplug_from_the_class(ops: Any, pve: Any) -> None:
    """PerformanceProfile asks for hotplug per VM; memory hotplug needs
    Proxmox's 1024 MiB of static memory (Memory.pm ``config``)."""
    profile = {"CPUHotAddEnabled": True, "MemoryHotAddEnabled": True}
    code, message = ops.fails(
        lambda: ops.stub.Create(
            pb.CreateRequest(name="hp-4", class_json=json.dumps({"CPU": 1, "MemoryMiB": 512, "PerformanceProfile": profile})),
            timeout=30,
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "class_json.MemoryMiB" in message
    vm = ops.create("hp-4", class_json={"CPU": 1, "MemoryMiB": 1024, "PerformanceProfile": profile})
    ops.power(vm, pb.POWER_OP_ON)
    apply(ops, vm, {"Class": {"CPU": 3, "MemoryMiB": 1536}})
    config = pve.vm(int(vm)).config
    assert (int(config["cores"]), int(config["vcpus"]), int(config["memory"])) == (4, 3, 1536)
