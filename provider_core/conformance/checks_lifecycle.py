"""Offered capabilities exercised end to end: reconfigure, snapshots, clones,
hardware upgrades. Each check drives real VMs through the server and polls
every task to completion, then looks at the result the way a client would
(ListVMs, Describe, GetDiskInfo)."""

from __future__ import annotations

import json
from typing import Any

import grpc

from ..capabilities import Capability
from ..pb import provider_pb2 as pb
from .kit import Code, Kit, describe_error, expect, fail, missing_capability, skip
from .registry import check


def desired_class(kit: Kit) -> str:
    return json.dumps({"Class": kit.fixtures.json_object("bigger_class_json")})


def grown_disks(kit: Kit, by: int = 1) -> tuple[str, int]:
    """desired_json growing every fixture disk by ``by`` GiB, and the total growth."""
    disks = kit.fixtures.json_list("disks_json")
    if not disks:
        raise skip("the disks_json fixture gives no disk to grow")
    grown = [{**d, "SizeGiB": d["SizeGiB"] + by} for d in disks]
    return json.dumps({"Disks": grown}), by * len(disks)


def expect_class(kit: Kit, vm: str, fixture: str, after: str) -> None:
    want = kit.fixtures.json_object(fixture)
    listed = kit.listed(vm)
    expect(listed is not None, f"after {after}, ListVMs does not list VM {vm}")
    assert listed is not None
    got = (listed.cpu, listed.memory_mib)
    expect(
        got == (want["CPU"], want["MemoryMiB"]),
        f"after {after}, ListVMs gives {got[0]} CPUs / {got[1]} MiB, expected {want['CPU']} / {want['MemoryMiB']}",
    )


def reconfigure(kit: Kit, vm: str, desired: str, what: str) -> None:
    resp = kit.ok("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=desired))
    kit.wait(resp.task, what)


# -- reconfigure ---------------------------------------------------------------------------


@check("stopped", needs=Capability.RECONFIGURE)
def reconfigure_stopped(kit: Kit) -> None:
    """Reconfigure of a stopped VM applies CPU and memory; repeating it changes nothing."""
    vm = kit.create_vm("reconf")
    kit.power(vm, pb.POWER_OP_OFF)
    reconfigure(kit, vm, desired_class(kit), "Reconfigure to bigger_class_json")
    expect_class(kit, vm, "bigger_class_json", "Reconfigure")
    with kit.unchanged("a repeated Reconfigure"):
        reconfigure(kit, vm, desired_class(kit), "a repeated Reconfigure")


@check("grow_disk_stopped", needs=Capability.RECONFIGURE)
def grow_disk_stopped(kit: Kit) -> None:
    """Reconfigure grows the disks of a stopped VM (or, where the endpoint cannot, refuses: UNIMPLEMENTED)."""
    grow_disks(kit, "grow", pb.POWER_OP_OFF, "Reconfigure growing the disks", refusable=True)


def grow_disks(kit: Kit, name: str, power_op: pb.PowerOp, what: str, *, refusable: bool = False) -> str:
    """Grow a new VM's disks by the fixture's growth, in the power state
    ``power_op`` leaves it in; ListVMs must show the new sizes.

    ``refusable``: growing disks is no capability of its own, so an endpoint
    that cannot (a storage that does not resize) says so with UNIMPLEMENTED
    from the backend, as for any option it cannot do. That answer, with
    nothing changed, ends the check skipped, quoting it."""
    desired, growth = grown_disks(kit)
    vm = kit.create_vm(name)
    kit.power(vm, power_op)
    before = sum(kit.disk_sizes(vm))
    if refusable:
        state = kit.fingerprint()
        try:
            resp = kit.call("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=desired))
        except grpc.RpcError as err:
            if err.code() is not Code.UNIMPLEMENTED or missing_capability(err):
                raise fail(f"Reconfigure failed: {describe_error(err)}") from None
            expect(kit.fingerprint() == state, f"{what} answered UNIMPLEMENTED, yet changed the VM")
            raise skip(f"this endpoint does not grow disks: Reconfigure answered {describe_error(err)}") from None
        kit.wait(resp.task, what)
    else:
        reconfigure(kit, vm, desired, what)
    after = sum(kit.disk_sizes(vm))
    expect(after == before + growth, f"after {what} by {growth} GiB, ListVMs sizes add up to {after} GiB, was {before}")
    return vm


@check("shrink_refused", needs=Capability.RECONFIGURE)
def shrink_refused(kit: Kit) -> None:
    """Reconfigure asked to shrink a disk answers INVALID_ARGUMENT and changes nothing."""
    disks = kit.fixtures.json_list("disks_json")
    if not any(d["SizeGiB"] > 1 for d in disks):
        raise skip("no disk of the disks_json fixture is bigger than 1 GiB")
    vm = kit.create_vm("shrink")
    kit.power(vm, pb.POWER_OP_OFF)
    smaller = json.dumps({"Disks": [{**d, "SizeGiB": max(1, d["SizeGiB"] - 1)} for d in disks]})
    with kit.unchanged("a Reconfigure shrinking a disk"):
        kit.refused("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=smaller), Code.INVALID_ARGUMENT)


@check("running", needs=Capability.RECONFIGURE_ONLINE)
def reconfigure_running(kit: Kit) -> None:
    """Reconfigure adds CPU and memory to a running VM, which keeps running."""
    vm = kit.create_vm("hotplug")
    kit.power(vm, pb.POWER_OP_ON)
    reconfigure(kit, vm, desired_class(kit), "Reconfigure of a running VM")
    expect_class(kit, vm, "bigger_class_json", "Reconfigure of a running VM")
    kit.expect_power(vm, "On", "Reconfigure of a running VM")


@check("grow_disk_running", needs=Capability.DISK_EXPANSION_ONLINE)
def grow_disk_running(kit: Kit) -> None:
    """Reconfigure grows the disks of a running VM, which keeps running."""
    vm = grow_disks(kit, "grow-on", pb.POWER_OP_ON, "Reconfigure growing the disks of a running VM")
    kit.expect_power(vm, "On", "growing the disks of a running VM")


# -- snapshots ---------------------------------------------------------------------------------


def snapshot(kit: Kit, vm: str, label: str, memory: bool = False) -> str:
    resp = kit.ok(
        "SnapshotCreate",
        pb.SnapshotCreateRequest(vm_id=vm, name_hint=label, include_memory=memory, description="conformance kit"),
    )
    expect(resp.snapshot_id, "SnapshotCreate returned an empty snapshot_id")
    kit.wait(resp.task, f"SnapshotCreate({vm}, {label})")
    return str(resp.snapshot_id)


def revert(kit: Kit, vm: str, snap: str) -> None:
    kit.wait(kit.ok("SnapshotRevert", pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=snap)).task, f"SnapshotRevert({vm}, {snap})")


def snapshots_on_disk(kit: Kit, vm: str) -> list[str] | None:
    if not kit.offers(Capability.DISK_INFO):
        return None
    return list(kit.ok("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=vm)).snapshots)


@check("revert", needs=Capability.SNAPSHOTS)
def snapshot_revert(kit: Kit) -> None:
    """A snapshot of a stopped VM, reverted after power-on (and a Reconfigure), brings back the stopped VM as it was."""
    vm = kit.create_vm("snap")
    kit.power(vm, pb.POWER_OP_OFF)
    snap = snapshot(kit, vm, "kit-before")
    listed = snapshots_on_disk(kit, vm)
    expect(
        listed is None or any(s in listed for s in (snap, "kit-before")),
        f"GetDiskInfo.snapshots {listed} does not list snapshot {snap}",
    )
    if kit.offers(Capability.RECONFIGURE):
        reconfigure(kit, vm, desired_class(kit), "Reconfigure after the snapshot")
    kit.power(vm, pb.POWER_OP_ON)
    revert(kit, vm, snap)
    kit.expect_power(vm, "Off", "reverting to a snapshot taken while the VM was off")
    if kit.offers(Capability.RECONFIGURE):
        expect_class(kit, vm, "class_json", "reverting to a snapshot taken before a Reconfigure")


@check("delete", needs=Capability.SNAPSHOTS)
def snapshot_delete(kit: Kit) -> None:
    """SnapshotDelete removes a snapshot; deleting it again, or one that never existed, succeeds."""
    vm = kit.create_vm("snapdel")
    snap = snapshot(kit, vm, "kit-delete")
    kit.wait(kit.ok("SnapshotDelete", pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id=snap)).task, "SnapshotDelete")
    listed = snapshots_on_disk(kit, vm)
    expect(listed is None or snap not in listed, f"GetDiskInfo.snapshots still lists {snap} after SnapshotDelete")
    kit.refused("SnapshotRevert", pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=snap), Code.NOT_FOUND)
    for gone in (snap, "conformance-no-such-snapshot"):
        with kit.unchanged(f"SnapshotDelete of missing snapshot {gone}"):
            kit.wait(
                kit.ok("SnapshotDelete", pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id=gone)).task, f"SnapshotDelete({gone})"
            )


@check("delete_vm", needs=Capability.SNAPSHOTS)
def delete_vm_with_snapshots(kit: Kit) -> None:
    """Delete removes a VM that has snapshots."""
    vm = kit.create_vm("snapvm")
    snapshot(kit, vm, "kit-1")
    snapshot(kit, vm, "kit-2")
    kit.wait(kit.ok("Delete", pb.DeleteRequest(id=vm)).task, f"Delete({vm}) with snapshots")
    expect(not kit.describe(vm).exists, f"Describe({vm}) says exists=true after deleting a VM with snapshots")
    kit.forget(vm)


@check("running", needs=Capability.MEMORY_SNAPSHOTS)
def memory_snapshot(kit: Kit) -> None:
    """A snapshot with memory of a running VM, reverted after power-off, brings the VM back running."""
    vm = kit.create_vm("memsnap")
    kit.power(vm, pb.POWER_OP_ON)
    snap = snapshot(kit, vm, "kit-memory", memory=True)
    kit.power(vm, pb.POWER_OP_OFF)
    revert(kit, vm, snap)
    kit.expect_power(vm, "On", "reverting to a snapshot with memory")


# -- clones ---------------------------------------------------------------------------------------


def clone(kit: Kit, source: str, label: str, *, linked: bool = False, **fields: Any) -> tuple[str, str]:
    name = kit.vm_name(label)
    resp = kit.ok(
        "Clone",
        pb.CloneRequest(
            source_vm_id=source, target_name=name, linked=linked, placement_json=kit.fixtures.placement_json, **fields
        ),
    )
    expect(resp.target_vm_id, "Clone returned an empty target_vm_id")
    kit.track(resp.target_vm_id)
    kit.wait(resp.task, f"Clone({source} -> {name})")
    return str(resp.target_vm_id), name


def expect_clone(kit: Kit, source: str, target: str, name: str, what: str) -> None:
    expect(target != source, f"{what} returned the source's id")
    expect(kit.describe(target).exists, f"Describe says exists=false for the id {what} returned ({target})")
    listed = kit.listed(target)
    expect(listed is not None and listed.name == name, f"ListVMs does not list the {what} {target} named {name!r}")
    expect(kit.describe(source).exists, f"the source VM is gone after {what}")


@check("full", needs=Capability.CLONE)
def clone_full(kit: Kit) -> None:
    """Clone makes a new VM with its own id and the class asked for; it is idempotent by name and outlives its source."""
    source = kit.create_vm("source")
    kit.power(source, pb.POWER_OP_OFF)
    target, name = clone(kit, source, "clone", class_json=kit.fixtures.bigger_class_json)
    expect_clone(kit, source, target, name, "Clone")
    expect_class(kit, target, "bigger_class_json", "Clone with class_json")
    again = kit.ok("Clone", pb.CloneRequest(source_vm_id=source, target_name=name, placement_json=kit.fixtures.placement_json))
    kit.wait(again.task, f"a second Clone to {name}")
    expect(again.target_vm_id == target, f"a second Clone to {name!r} returned {again.target_vm_id!r}, the first {target!r}")
    same_name = [vm.id for vm in kit.list_vms() if vm.name == name]
    expect(same_name == [target], f"ListVMs has {len(same_name)} VMs named {name!r}")
    kit.wait(kit.ok("Delete", pb.DeleteRequest(id=source)).task, f"Delete of the source {source}")
    kit.forget(source)
    expect(kit.describe(target).exists, "a full clone is gone after its source was deleted")
    kit.power(target, pb.POWER_OP_ON)
    kit.expect_power(target, "On", "powering on a full clone whose source is deleted")


@check("missing_source", needs=Capability.CLONE)
def clone_missing_source(kit: Kit) -> None:
    """Clone of a VM that does not exist answers NOT_FOUND and makes nothing."""
    name = kit.vm_name("orphan")
    with kit.unchanged("Clone of a missing VM"):
        kit.refused("Clone", pb.CloneRequest(source_vm_id="conformance-missing-source", target_name=name), Code.NOT_FOUND)


@check("linked", needs=Capability.LINKED_CLONES)
def clone_linked(kit: Kit) -> None:
    """A linked clone is a new VM whose disk is backed by the source's (the
    ``linked_clone_source`` fixture, else a VM the kit makes)."""
    given = kit.fixtures.linked_clone_source
    if given:
        clone_linked_from(kit, given)
        return
    source = kit.create_vm("lsource")
    kit.power(source, pb.POWER_OP_OFF)
    target, name = clone(kit, source, "linked", linked=True)
    expect_clone(kit, source, target, name, "linked Clone")
    backed = expect_backed(kit, source, target)
    kit.power(target, pb.POWER_OP_ON)
    kit.expect_power(target, "On", "powering on a linked clone")
    if not backed:
        raise skip(UNSEEN_BACKING)


UNSEEN_BACKING = (
    "the linked clone is a VM of its own that powers on, but whether its disk is backed by its source's"
    " was not checked: this endpoint does not offer 'disk_info' (GetDiskInfo)"
)


def expect_backed(kit: Kit, source: str, target: str) -> bool:
    """GetDiskInfo shows the clone's disk backed by another file, not the
    source's disk itself. False when it cannot be seen (no GetDiskInfo):
    the check then ends skipped, saying so (:data:`UNSEEN_BACKING`)."""
    if not kit.offers(Capability.DISK_INFO):
        return False
    disk = kit.ok("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=target))
    expect(disk.backing_file, "GetDiskInfo of a linked clone's disk gives no backing_file: was it copied in full?")
    full = kit.ok("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=source))
    expect(disk.path != full.path, "the linked clone's disk is the source's disk itself")
    return True


def source_state(kit: Kit, source: str) -> tuple[Any, ...]:
    """What a linked clone may not change about its source: Describe, the
    ListVMs entry (when listed) and GetDiskInfo (when offered)."""
    described = kit.describe(source)
    expect(described.exists, f"Describe({source}) says exists=false for the linked_clone_source fixture's VM")
    listed = kit.listed(source)
    entry = None
    if listed is not None:
        disks = tuple(sorted((d.id, d.size_gib) for d in listed.disks))
        entry = (listed.name, listed.power_state, listed.cpu, listed.memory_mib, disks)
    disk = None
    if kit.offers(Capability.DISK_INFO):
        d = kit.ok("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=source))
        disk = (d.disk_id, d.format, d.virtual_size_bytes, d.path, d.backing_file, tuple(sorted(d.snapshots)))
    return described.power_state, entry, disk


def clone_linked_from(kit: Kit, source: str) -> None:
    """Linked-clone the backend's own source VM (a template, say): the clone
    is its own VM, powers on and is deleted cleanly; the source is untouched."""
    before = source_state(kit, source)
    target, name = clone(kit, source, "linked", linked=True)
    expect_clone(kit, source, target, name, "linked Clone")
    backed = expect_backed(kit, source, target)
    kit.power(target, pb.POWER_OP_ON)
    kit.expect_power(target, "On", "powering on a linked clone")
    kit.wait(kit.ok("Delete", pb.DeleteRequest(id=target)).task, f"Delete of the linked clone {target}")
    kit.forget(target)
    expect(not kit.describe(target).exists, f"Describe({target}) says exists=true after deleting the linked clone")
    expect(kit.listed(target) is None, f"ListVMs still lists the linked clone {target} after Delete")
    after = source_state(kit, source)
    expect(after == before, f"the linked clone changed its source {source}: before {before}, after {after}")
    if not backed:
        raise skip(UNSEEN_BACKING)


# -- hardware upgrade ----------------------------------------------------------------------------------


@check("upgrade", needs=Capability.HARDWARE_UPGRADE)
def hardware_upgrade(kit: Kit) -> None:
    """HardwareUpgrade works on a stopped VM, is refused (FAILED_PRECONDITION) on a running one and for an unknown version."""
    vm = kit.create_vm("hwup")
    kit.power(vm, pb.POWER_OP_ON)
    target = kit.fixtures.hardware_version
    with kit.unchanged("HardwareUpgrade of a running VM"):
        kit.refused("HardwareUpgrade", pb.HardwareUpgradeRequest(id=vm, target_version=target), Code.FAILED_PRECONDITION)
    kit.power(vm, pb.POWER_OP_OFF)
    with kit.unchanged("HardwareUpgrade to version 99999"):
        kit.refused("HardwareUpgrade", pb.HardwareUpgradeRequest(id=vm, target_version=99999), Code.INVALID_ARGUMENT)
    kit.wait(kit.ok("HardwareUpgrade", pb.HardwareUpgradeRequest(id=vm, target_version=target)).task, "HardwareUpgrade")
    kit.wait(
        kit.ok("HardwareUpgrade", pb.HardwareUpgradeRequest(id=vm, target_version=target)).task, "a repeated HardwareUpgrade"
    )
    kit.power(vm, pb.POWER_OP_ON)
    kit.expect_power(vm, "On", "powering on an upgraded VM")
