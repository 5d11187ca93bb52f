"""What the endpoint under test offers, as its server answers.

The kit chooses its checks from this answer, not from the backend class:
a class declares the most it can offer, and one endpoint may offer less
(``Backend.offer``).

GetCapabilities answers with nine capabilities as flags, and the disk type,
network type, format, staging backend and transfer mode lists. Four capabilities have no flag (reconfigure,
clone, disk_info, hardware_upgrade): for those the kit calls their RPC on a
VM that does not exist. The core refuses a capability the endpoint does not
offer before anything else, with UNIMPLEMENTED and an ErrorInfo
CAPABILITY_MISSING naming it; any other answer (NOT_FOUND, as the contract
wants) means the call got through, so the endpoint offers it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..capabilities import Capability, Offer
from ..pb import provider_pb2 as pb
from .kit import Code, Kit, missing_capability
from .registry import CheckFailed

#: GetCapabilities flag -> the capability it reports.
FLAGS: dict[str, Capability] = {
    "supports_reconfigure_online": Capability.RECONFIGURE_ONLINE,
    "supports_disk_expansion_online": Capability.DISK_EXPANSION_ONLINE,
    "supports_snapshots": Capability.SNAPSHOTS,
    "supports_memory_snapshots": Capability.MEMORY_SNAPSHOTS,
    "supports_linked_clones": Capability.LINKED_CLONES,
    "supports_image_import": Capability.IMAGE_PREPARE,
    "supports_disk_export": Capability.DISK_EXPORT,
    "supports_disk_import": Capability.DISK_IMPORT,
    "supports_export_compression": Capability.EXPORT_COMPRESSION,
}

#: GetCapabilities list -> the field of :class:`~provider_core.capabilities.Offer` it fills.
LISTS: dict[str, str] = {
    "supported_disk_types": "disk_types",
    "supported_network_types": "network_types",
    "supported_export_formats": "export_formats",
    "supported_import_formats": "import_formats",
    "supported_export_backends": "export_backends",
    "supported_import_backends": "import_backends",
    "supported_transfer_modes": "transfer_modes",
}


def _probes(kit: Kit) -> dict[Capability, Callable[[str], tuple[str, Any]]]:
    """The capabilities GetCapabilities has no flag for -> the call that asks
    about each, given a VM id that does not exist."""
    bigger = json.dumps({"Class": kit.fixtures.json_object("bigger_class_json")})
    return {
        Capability.RECONFIGURE: lambda vm: ("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=bigger)),
        Capability.CLONE: lambda vm: ("Clone", pb.CloneRequest(source_vm_id=vm, target_name=kit.vm_name("probe"))),
        Capability.DISK_INFO: lambda vm: ("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=vm)),
        Capability.HARDWARE_UPGRADE: lambda vm: (
            "HardwareUpgrade",
            pb.HardwareUpgradeRequest(id=vm, target_version=kit.fixtures.hardware_version),
        ),
    }


@dataclass(frozen=True)
class Answer:
    """What the server says its endpoint offers."""

    offer: Offer
    why_not: Mapping[Capability, str] = field(default_factory=dict)
    """Every capability not offered -> how the server said so."""


def read(kit: Kit) -> Answer:
    """Ask the server under test what its endpoint offers (GetCapabilities,
    then a call on a missing VM for each capability without a flag).

    Raises grpc.RpcError when GetCapabilities fails."""
    resp = kit.call("GetCapabilities", pb.GetCapabilitiesRequest())
    offered: set[Capability] = set()
    why_not: dict[Capability, str] = {}
    for flag, cap in FLAGS.items():
        if getattr(resp, flag):
            offered.add(cap)
        else:
            why_not[cap] = f"GetCapabilities.{flag} is false"
    missing = f"conformance-probe-{uuid.uuid4().hex[:12]}"
    for cap, make in _probes(kit).items():
        rpc, request = make(missing)
        refusal = _refusal(kit, rpc, request, cap)
        if refusal:
            why_not[cap] = refusal
        else:
            offered.add(cap)
    lists = {attr: tuple(getattr(resp, name)) for name, attr in LISTS.items()}
    return Answer(Offer(capabilities=frozenset(offered), **lists), why_not)


def _refusal(kit: Kit, rpc: str, request: Any, cap: Capability) -> str:
    """How the server refused ``rpc`` as not offered ("" when the call got through)."""
    try:
        resp = kit.call(rpc, request)
    except grpc.RpcError as err:
        if err.code() is Code.UNIMPLEMENTED and missing_capability(err) == cap.value:
            return f"{rpc} answered UNIMPLEMENTED naming it"
        return ""
    except CheckFailed:  # UNKNOWN: it got past the gate, and broke beyond it
        return ""
    made = getattr(resp, "target_vm_id", "")
    if made:  # a Clone of a missing VM made something (core.missing_vm fails for it): remove it
        try:
            kit.task_error(kit.call("Delete", pb.DeleteRequest(id=made)).task)
        except (grpc.RpcError, CheckFailed):
            pass
    return ""
