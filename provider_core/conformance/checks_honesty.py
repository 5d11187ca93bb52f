"""Capability honesty: what an endpoint does not offer, it does not do.

For every capability the endpoint under test does not offer (its class does
not declare it, or this endpoint cannot do it: GetCapabilities says which),
the kit makes the call a client would make and expects UNIMPLEMENTED naming
the capability (google.rpc.ErrorInfo CAPABILITY_MISSING), with nothing
changed (ListVMs and Describe compared before and after). Two refinements
are options the core cannot gate, so the backend must refuse them itself:
without RECONFIGURE_ONLINE a running VM's CPU and memory, and without
DISK_EXPANSION_ONLINE its disks, do not change: Reconfigure answers
FAILED_PRECONDITION (a power-off is needed), or UNIMPLEMENTED where the
endpoint cannot make the change at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..capabilities import REFINES, Capability
from ..pb import provider_pb2 as pb
from .checks_lifecycle import desired_class, grown_disks
from .kit import Code, Kit, expect, missing_capability
from .registry import CheckFailed, check

UNREACHABLE = "http://127.0.0.1:9/conformance-never-fetched"
"""A URL for calls that must be refused before anything is fetched (the discard port)."""


def _requests(kit: Kit, cap: Capability, vm: str) -> list[tuple[str, Any]]:
    bigger = desired_class(kit)
    target = kit.vm_name("not-offered")
    table: dict[Capability, Callable[[], list[tuple[str, Any]]]] = {
        Capability.RECONFIGURE: lambda: [("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=bigger))],
        Capability.SNAPSHOTS: lambda: [
            ("SnapshotCreate", pb.SnapshotCreateRequest(vm_id=vm, name_hint="kit")),
            ("SnapshotRevert", pb.SnapshotRevertRequest(vm_id=vm, snapshot_id="kit")),
            ("SnapshotDelete", pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id="kit")),
        ],
        Capability.MEMORY_SNAPSHOTS: lambda: [
            ("SnapshotCreate", pb.SnapshotCreateRequest(vm_id=vm, name_hint="kit-mem", include_memory=True))
        ],
        Capability.CLONE: lambda: [("Clone", pb.CloneRequest(source_vm_id=vm, target_name=target))],
        Capability.LINKED_CLONES: lambda: [("Clone", pb.CloneRequest(source_vm_id=vm, target_name=target, linked=True))],
        Capability.IMAGE_PREPARE: lambda: [
            ("ImagePrepare", pb.ImagePrepareRequest(image_json=json.dumps({"URL": UNREACHABLE + ".raw"}), target_name=target))
        ],
        Capability.DISK_INFO: lambda: [("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=vm))],
        Capability.DISK_EXPORT: lambda: [
            ("ExportDisk", pb.ExportDiskRequest(vm_id=vm, destination_url=UNREACHABLE, format="qcow2"))
        ],
        Capability.EXPORT_COMPRESSION: lambda: [
            (
                "ExportDisk",
                pb.ExportDiskRequest(
                    vm_id=vm,
                    destination_url=UNREACHABLE,
                    format=(kit.offer.export_formats or ("qcow2",))[0],
                    compress=True,
                ),
            )
        ],
        Capability.DISK_IMPORT: lambda: [
            ("ImportDisk", pb.ImportDiskRequest(source_url=UNREACHABLE, format="qcow2", target_name=target))
        ],
        Capability.HARDWARE_UPGRADE: lambda: [
            ("HardwareUpgrade", pb.HardwareUpgradeRequest(id=vm, target_version=kit.fixtures.hardware_version))
        ],
    }
    return table[cap]()


def _gated_by(kit: Kit, cap: Capability) -> Capability:
    """The capability the core names when refusing ``cap``: its parent when
    that is not offered either."""
    parent = REFINES.get(cap)
    return parent if parent is not None and not kit.offers(parent) else cap


def refuses(cap: Capability) -> Callable[[Kit], None]:
    def run(kit: Kit) -> None:
        vm = kit.create_vm("honesty")
        if cap is Capability.MEMORY_SNAPSHOTS:
            kit.power(vm, pb.POWER_OP_ON)
        named = _gated_by(kit, cap)
        for rpc, request in _requests(kit, cap, vm):
            with kit.unchanged(f"{rpc} (capability {cap.value!r} not offered)"):
                err = kit.refused(rpc, request, Code.UNIMPLEMENTED)
            said = missing_capability(err)
            expect(
                said == named.value,
                f"{rpc} answered UNIMPLEMENTED but its ErrorInfo names capability {said!r}, not {named.value!r}",
            )

    run.__doc__ = f"Where {cap.value!r} is not offered, its calls answer UNIMPLEMENTED and change nothing."
    return run


for _cap in Capability:
    if _cap not in (Capability.RECONFIGURE_ONLINE, Capability.DISK_EXPANSION_ONLINE):
        check("not_offered", absent=_cap)(refuses(_cap))


def _online_refused(kit: Kit, cap: Capability, desired: str, what: str) -> None:
    vm = kit.create_vm("offline-only")
    kit.power(vm, pb.POWER_OP_ON)
    # FAILED_PRECONDITION: power off first; UNIMPLEMENTED: this endpoint cannot at all.
    # Without reconfigure, the core refuses the RPC itself.
    codes = (Code.FAILED_PRECONDITION, Code.UNIMPLEMENTED) if kit.offers(Capability.RECONFIGURE) else (Code.UNIMPLEMENTED,)
    try:
        with kit.unchanged(f"Reconfigure of {what} of a running VM"):
            kit.refused("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=desired), *codes)
    except CheckFailed as exc:
        raise CheckFailed(f"{cap.value!r} is not offered, so changing {what} of a running VM must be refused: {exc}") from None


@check("not_offered", absent=Capability.RECONFIGURE_ONLINE)
def cpu_memory_offline_only(kit: Kit) -> None:
    """Where 'reconfigure_online' is not offered, a running VM's CPU and memory do not change: refused, nothing changed."""
    _online_refused(kit, Capability.RECONFIGURE_ONLINE, desired_class(kit), "CPU and memory")


@check("not_offered", absent=Capability.DISK_EXPANSION_ONLINE)
def disks_offline_only(kit: Kit) -> None:
    """Where 'disk_expansion_online' is not offered, a running VM's disks do not grow: refused, nothing changed."""
    desired, _ = grown_disks(kit)
    _online_refused(kit, Capability.DISK_EXPANSION_ONLINE, desired, "the disk sizes")
