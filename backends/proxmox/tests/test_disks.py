"""GetDiskInfo and HardwareUpgrade."""

from __future__ import annotations

from typing import Any

import grpc

from provider_core.pb import provider_pb2 as pb


def info(ops: Any, vm: str, disk: str = "", snapshot: str = "") -> Any:
    return ops.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm, disk_id=disk, snapshot_id=snapshot), timeout=30)


def test_disk_info(ops: Any, pve: Any) -> None:
    vm = ops.create("di-1", disks_json=[{"SizeGiB": 3}, {"SizeGiB": 5, "Type": "qcow2"}], placement_json={"Datastore": "cloud"})
    primary = info(ops, vm)
    assert primary.disk_id == "scsi0"
    assert primary.virtual_size_bytes == 3 * 2**30
    assert primary.format == "raw"
    assert primary.is_bootable
    assert primary.path.startswith("cloud:")
    assert primary.metadata["node"] == "pve1"
    assert primary.metadata["storage"] == "cloud"
    second = info(ops, vm, "scsi1")
    assert (second.format, second.virtual_size_bytes, second.is_bootable) == ("qcow2", 5 * 2**30, False)
    assert info(ops, vm, second.path).disk_id == "scsi1"
    code, _ = ops.fails(lambda: info(ops, vm, "scsi9"))
    assert code is grpc.StatusCode.NOT_FOUND


def test_disk_info_of_a_snapshot(ops: Any) -> None:
    vm = ops.create("di-2", disks_json=[{"SizeGiB": 3}])
    ops.h.wait(ops.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint="s1")).task)
    ops.h.wait(
        ops.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json='{"Disks": [{"SizeGiB": 3}, {"SizeGiB": 1}]}')).task
    )
    assert list(info(ops, vm).snapshots) == ["s1"]
    code, _ = ops.fails(lambda: info(ops, vm, "scsi1", "s1"))  # added after the snapshot
    assert code is grpc.StatusCode.NOT_FOUND
    assert info(ops, vm, "scsi0", "s1").virtual_size_bytes == 3 * 2**30
    code, _ = ops.fails(lambda: info(ops, vm, "", "nope"))
    assert code is grpc.StatusCode.NOT_FOUND


def test_linked_clone_backing_volume(ops: Any, pve: Any) -> None:
    pve.add_vm(9000, "tmpl", template=True, config={"scsi0": "cloud:9000/base-9000-disk-0.qcow2,size=2G"})
    pve.add_vm(101, "linked", config={"scsi0": "cloud:9000/base-9000-disk-0.qcow2/101/vm-101-disk-0.qcow2,size=2G"})
    assert info(ops, "101").backing_file == "cloud:base-9000-disk-0.qcow2"


def test_hardware_upgrade(ops: Any, pve: Any) -> None:
    vm = ops.create("hw-1", class_json={"Firmware": "UEFI"})
    ops.power(vm, pb.POWER_OP_ON)
    code, message = ops.fails(lambda: ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=9), timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "stopped" in message
    ops.power(vm, pb.POWER_OP_OFF)
    ops.h.wait(ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=9), timeout=30).task)
    assert pve.vm(int(vm)).config["machine"] == "pc-q35-9.0"  # the family is kept
    ops.h.wait(ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=9), timeout=30).task)
    for target in (8, 99999):
        code, message = ops.fails(
            lambda t=target: ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=t), timeout=30)
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "target_version" in message
    assert pve.vm(int(vm)).config["machine"] == "pc-q35-9.0"


def test_hardware_upgrade_keeps_options_and_i440fx(ops: Any, pve: Any, api: Any) -> None:
    vm = ops.create("hw-2")
    api.nodes("pve1").qemu(vm).config.put(machine="pc-i440fx-8.1,viommu=virtio")
    ops.h.wait(ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=10), timeout=30).task)
    assert pve.vm(int(vm)).config["machine"] == "pc-i440fx-10.0,viommu=virtio"
    ops.h.wait(ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=0), timeout=30).task)
    assert pve.vm(int(vm)).config["machine"] == "pc,viommu=virtio"  # the newest at every start
