"""The contract every backend keeps, whatever it offers.

Create is idempotent by name and ListVMs shows what it made; Delete of a
missing VM succeeds and Describe of one says ``exists=false``; power
operations are idempotent and use the four power words; bad JSON is
INVALID_ARGUMENT naming the field; no RPC answers UNKNOWN or INTERNAL for a
bad or stale request; GetCapabilities offers no more than the backend
declares, consistently.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import grpc

from ..capabilities import REFINES, STAGING_BACKENDS, TRANSFER_MODES, Capability, Offer
from ..pb import provider_pb2 as pb
from . import offered
from .kit import Code, Kit, expect, fail, field_violations, json_object, valid_ips
from .registry import check


def missing_id() -> str:
    return f"conformance-missing-{uuid.uuid4().hex[:12]}"


@check("capabilities")
def capabilities(kit: Kit) -> None:
    """GetCapabilities offers no more than the class declares, consistently, and what the run started with."""
    answer = offered.read(kit)
    offer, cls = answer.offer, kit.backend_cls.__qualname__
    beyond = offer.beyond(kit.declared)
    expect(not beyond, f"the endpoint offers more than {cls} declares: {', '.join(beyond)}")
    for cap, parent in REFINES.items():
        expect(
            cap not in offer.capabilities or parent in offer.capabilities,
            f"the endpoint offers {cap.value!r} but not {parent.value!r}, which it refines ({answer.why_not.get(parent)})",
        )
    for cap, field in ((Capability.DISK_EXPORT, "export_formats"), (Capability.DISK_IMPORT, "import_formats")):
        formats = list(getattr(offer, field))
        if cap in offer.capabilities:
            expect(formats, f"the endpoint offers {cap.value!r} but GetCapabilities.supported_{field} is empty")
        else:
            expect(not formats, f"GetCapabilities.supported_{field} is {formats}, but {cap.value!r} is not offered")
    staging(offer)
    expect(
        offer == kit.offer,
        f"GetCapabilities answers {offer}, but at the start of this run it answered {kit.offer}: what an endpoint offers"
        " changes only when the backend reconnects",
    )


def staging(offer: Offer) -> None:
    """The staging backends and transfer modes: known words, each list only
    with its capability, and never empty with it (VirtRigaud's manager reads
    an empty list as pvc only, relay only)."""
    moving = {Capability.DISK_EXPORT, Capability.DISK_IMPORT} & offer.capabilities
    for cap, field in ((Capability.DISK_EXPORT, "export_backends"), (Capability.DISK_IMPORT, "import_backends")):
        listed = list(getattr(offer, field))
        unknown = [b for b in listed if b not in STAGING_BACKENDS]
        expect(not unknown, f"GetCapabilities.supported_{field} names unknown backends {unknown}; use {list(STAGING_BACKENDS)}")
        if cap in offer.capabilities:
            expect(listed, f"the endpoint offers {cap.value!r} but GetCapabilities.supported_{field} is empty (read as pvc only)")
        else:
            expect(not listed, f"GetCapabilities.supported_{field} is {listed}, but {cap.value!r} is not offered")
    modes = list(offer.transfer_modes)
    unknown = [m for m in modes if m not in TRANSFER_MODES]
    expect(not unknown, f"GetCapabilities.supported_transfer_modes names unknown modes {unknown}; use {list(TRANSFER_MODES)}")
    if moving:
        expect(modes, "the endpoint offers disk transfers but GetCapabilities.supported_transfer_modes is empty (read as relay)")
    else:
        expect(not modes, f"GetCapabilities.supported_transfer_modes is {modes}, but neither export nor import is offered")


@check("validate")
def validate(kit: Kit) -> None:
    """Validate answers ok for the configured backend."""
    resp = kit.ok("Validate", pb.ValidateRequest())
    expect(resp.ok, f"Validate says not ok: {resp.message!r} (check [backends.{kit.name}])")
    expect(resp.message.strip(), "Validate gives no message; say what was checked")


@check("create_listed")
def create_listed(kit: Kit) -> None:
    """ListVMs and Describe show what Create made, with the class asked for."""
    name = kit.vm_name("listed")
    resp = kit.ok("Create", kit.create_request(name))
    expect(resp.id, "Create returned an empty id")
    kit.track(resp.id)
    kit.wait(resp.task, f"Create({name})")
    listed = kit.listed(resp.id)
    expect(listed is not None, f"ListVMs does not list the VM Create made ({resp.id})")
    assert listed is not None
    expect(listed.name == name, f"ListVMs names VM {resp.id} {listed.name!r}, Create asked for {name!r}")
    wanted = kit.fixtures.json_object("class_json")
    expect(listed.cpu == wanted["CPU"], f"ListVMs gives {listed.cpu} CPUs, class_json asked for {wanted['CPU']}")
    expect(
        listed.memory_mib == wanted["MemoryMiB"],
        f"ListVMs gives {listed.memory_mib} MiB, class_json asked for {wanted['MemoryMiB']}",
    )
    described = kit.describe(resp.id)
    expect(described.exists, f"Describe({resp.id}) says exists=false right after Create")
    expect(
        described.power_state == listed.power_state,
        f"Describe says {described.power_state!r}, ListVMs says {listed.power_state!r}",
    )
    json_object(described.provider_raw_json, "Describe.provider_raw_json")
    valid_ips(described.ips, "Describe.ips")
    valid_ips(listed.ips, "ListVMs ips")


@check("create_idempotent")
def create_idempotent(kit: Kit) -> None:
    """A second Create with the same name returns the same VM, no duplicate."""
    name = kit.vm_name("idem")
    first = kit.ok("Create", kit.create_request(name))
    kit.track(first.id)
    kit.wait(first.task, f"Create({name})")
    second = kit.ok("Create", kit.create_request(name))
    kit.track(second.id)
    kit.wait(second.task, f"second Create({name})")
    expect(second.id == first.id, f"a second Create({name}) returned id {second.id!r}, the first {first.id!r}")
    same_name = [vm.id for vm in kit.list_vms() if vm.name == name]
    expect(same_name == [first.id], f"ListVMs has {len(same_name)} VMs named {name!r}: {same_name}")


@check("delete")
def delete(kit: Kit) -> None:
    """Delete removes the VM; deleting it again succeeds."""
    vm = kit.create_vm("delete")
    kit.wait(kit.ok("Delete", pb.DeleteRequest(id=vm)).task, f"Delete({vm})")
    expect(not kit.describe(vm).exists, f"Describe({vm}) says exists=true after Delete finished")
    expect(kit.listed(vm) is None, f"ListVMs still lists VM {vm} after Delete finished")
    kit.wait(kit.ok("Delete", pb.DeleteRequest(id=vm)).task, f"second Delete({vm})")
    kit.forget(vm)


@check("delete_running")
def delete_running(kit: Kit) -> None:
    """Delete stops and removes a running VM."""
    vm = kit.create_vm("delete-on")
    kit.power(vm, pb.POWER_OP_ON)
    kit.wait(kit.ok("Delete", pb.DeleteRequest(id=vm)).task, f"Delete({vm})")
    expect(not kit.describe(vm).exists, f"Describe({vm}) says exists=true after Delete of a running VM finished")
    kit.forget(vm)


@check("delete_missing")
def delete_missing(kit: Kit) -> None:
    """Delete of a VM that does not exist succeeds."""
    gone = missing_id()
    kit.wait(kit.ok("Delete", pb.DeleteRequest(id=gone)).task, f"Delete({gone})")


@check("describe_missing")
def describe_missing(kit: Kit) -> None:
    """Describe of a VM that does not exist says exists=false."""
    resp = kit.ok("Describe", pb.DescribeRequest(id=missing_id()))
    expect(not resp.exists, "Describe of a missing VM says exists=true")


@check("power_cycle")
def power_cycle(kit: Kit) -> None:
    """On, on again, reboot, graceful shutdown, off, off again: each lands in the right state."""
    vm = kit.create_vm("power")
    kit.power(vm, pb.POWER_OP_ON)
    kit.expect_power(vm, "On", "POWER_OP_ON")
    kit.power(vm, pb.POWER_OP_ON)
    kit.expect_power(vm, "On", "a second POWER_OP_ON")
    kit.power(vm, pb.POWER_OP_REBOOT)
    kit.expect_power(vm, "On", "POWER_OP_REBOOT")
    kit.power(vm, pb.POWER_OP_SHUTDOWN_GRACEFUL)
    kit.expect_power(vm, "Off", "POWER_OP_SHUTDOWN_GRACEFUL")
    kit.power(vm, pb.POWER_OP_SHUTDOWN_GRACEFUL)
    kit.expect_power(vm, "Off", "POWER_OP_SHUTDOWN_GRACEFUL of a stopped VM")
    kit.power(vm, pb.POWER_OP_ON)
    kit.power(vm, pb.POWER_OP_OFF)
    kit.expect_power(vm, "Off", "POWER_OP_OFF")
    kit.power(vm, pb.POWER_OP_OFF)
    kit.expect_power(vm, "Off", "a second POWER_OP_OFF")


@check("power_words")
def power_words(kit: Kit) -> None:
    """Every VM in ListVMs, and Describe of each, uses the server's power words:
    On and Off (the default, what deployed clients accept), or On, Off,
    Suspended and Unknown with ``power_states = "detailed"``. A missing VM's
    word is one of them too."""
    for vm in kit.list_vms():
        kit.describe(vm.id)
    gone = kit.ok("Describe", pb.DescribeRequest(id=kit.vm_name("never-made")))
    expect(not gone.exists, "Describe of a VM never made says it exists")
    expect(
        gone.power_state in kit.power_words,
        f"Describe of a missing VM says power_state {gone.power_state!r}, not one of {kit.power_words}",
    )


@check("adoption_list")
def adoption_list(kit: Kit) -> None:
    """ListVMs says which VMs the provider made (``provider_raw["managed"]``
    ``"true"``, others ``"false"``), so that clients adopt the others."""
    vm = kit.create_vm("adopt")
    for listed in kit.list_vms():
        managed = listed.provider_raw.get("managed")
        expect(
            managed in ("true", "false"),
            f'ListVMs gives VM {listed.id} provider_raw managed={managed!r}, not "true" or "false"',
        )
        if listed.id == vm:
            expect(managed == "true", f"ListVMs says the VM {vm} the kit made is not the provider's (managed={managed!r})")
    expect(kit.listed(vm) is not None, f"ListVMs does not list the VM {vm} the kit made")


def _bad_payloads(field: str) -> list[tuple[str, str]]:
    listy = field in ("networks_json", "disks_json")
    unknown = '[{"NoSuchKey": 1}]' if listy else '{"NoSuchKey": 1}'
    wrong_type = {
        "class_json": '{"CPU": "two"}',
        "image_json": '{"URL": 5}',
        "networks_json": '[{"VLAN": "ten"}]',
        "disks_json": '[{"SizeGiB": "big"}]',
        "placement_json": '{"Datastore": ["a"]}',
    }[field]
    return [("malformed JSON", "{not json"), ("an unknown key", unknown), ("a wrong type", wrong_type)]


@check("bad_json")
def bad_json(kit: Kit) -> None:
    """Malformed JSON, unknown keys and wrong types get INVALID_ARGUMENT naming the field; nothing is created."""
    for field in ("class_json", "image_json", "networks_json", "disks_json", "placement_json"):
        for what, payload in _bad_payloads(field):
            name = kit.vm_name("badjson")
            with kit.unchanged(f"Create with {what} in {field}"):
                err = kit.refused("Create", kit.create_request(name, **{field: payload}), Code.INVALID_ARGUMENT)
            fields = field_violations(err)
            expect(fields, f"Create with {what} in {field}: INVALID_ARGUMENT carries no google.rpc.BadRequest field violation")
            expect(
                any(f.startswith(field) for f in fields),
                f"Create with {what} in {field}: the field violations name {fields}, not {field}",
            )


@check("task_unknown")
def task_unknown(kit: Kit) -> None:
    """TaskStatus of an id nobody issued is NOT_FOUND; an empty id is a finished task."""
    for task_id in (f"task-{uuid.uuid4().hex}", f"no-such-task-{secrets.token_hex(4)}"):
        kit.refused("TaskStatus", pb.TaskStatusRequest(task=pb.TaskRef(id=task_id)), Code.NOT_FOUND)
    empty = kit.ok("TaskStatus", pb.TaskStatusRequest(task=pb.TaskRef(id="")))
    expect(
        empty.done and not empty.error,
        f"TaskStatus of an empty id says done={empty.done} error={empty.error!r}; clients treat it as finished",
    )


#: Every RPC with an empty request.
EMPTY: dict[str, Any] = {
    "Clone": pb.CloneRequest(),
    "Create": pb.CreateRequest(),
    "Delete": pb.DeleteRequest(),
    "Describe": pb.DescribeRequest(),
    "ExportDisk": pb.ExportDiskRequest(),
    "GetCapabilities": pb.GetCapabilitiesRequest(),
    "GetDiskInfo": pb.GetDiskInfoRequest(),
    "HardwareUpgrade": pb.HardwareUpgradeRequest(),
    "ImagePrepare": pb.ImagePrepareRequest(),
    "ImportDisk": pb.ImportDiskRequest(),
    "ListVMs": pb.ListVMsRequest(),
    "Power": pb.PowerRequest(),
    "Reconfigure": pb.ReconfigureRequest(),
    "SnapshotCreate": pb.SnapshotCreateRequest(),
    "SnapshotDelete": pb.SnapshotDeleteRequest(),
    "SnapshotRevert": pb.SnapshotRevertRequest(),
    "TaskStatus": pb.TaskStatusRequest(),
    "Validate": pb.ValidateRequest(),
}


@check("no_unknown")
def no_unknown(kit: Kit) -> None:
    """No RPC answers UNKNOWN or INTERNAL to an empty request."""
    for rpc, request in EMPTY.items():
        try:
            resp = kit.call(rpc, request)
        except grpc.RpcError as err:
            expect(err.code() is not Code.INTERNAL, f"{rpc} with an empty request answered INTERNAL ({err.details()})")
            continue
        kit.wait(getattr(resp, "task", None), f"{rpc} with an empty request")


@check("missing_vm")
def missing_vm(kit: Kit) -> None:
    """Every RPC naming a VM that does not exist answers NOT_FOUND (Delete and SnapshotDelete succeed).

    RPCs of a capability the fixtures skip as a whole are left out."""
    gone = missing_id()
    cases: list[tuple[str, Any, Capability | None]] = [
        ("Power", pb.PowerRequest(id=gone, op=pb.POWER_OP_ON), None),
        (
            "Reconfigure",
            pb.ReconfigureRequest(id=gone, desired_json=f'{{"Class": {kit.fixtures.bigger_class_json}}}'),
            Capability.RECONFIGURE,
        ),
        ("SnapshotCreate", pb.SnapshotCreateRequest(vm_id=gone, name_hint="kit"), Capability.SNAPSHOTS),
        ("SnapshotRevert", pb.SnapshotRevertRequest(vm_id=gone, snapshot_id="kit"), Capability.SNAPSHOTS),
        ("Clone", pb.CloneRequest(source_vm_id=gone, target_name=kit.vm_name("clone-of-missing")), Capability.CLONE),
        ("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=gone), Capability.DISK_INFO),
        (
            "HardwareUpgrade",
            pb.HardwareUpgradeRequest(id=gone, target_version=kit.fixtures.hardware_version),
            Capability.HARDWARE_UPGRADE,
        ),
    ]
    if kit.exercises(Capability.DISK_EXPORT):
        fmt = kit.offer.export_formats[0]
        url = kit.sink.url(f"missing.{fmt}")
        cases.append(("ExportDisk", pb.ExportDiskRequest(vm_id=gone, destination_url=url, format=fmt), Capability.DISK_EXPORT))
    for rpc, request, cap in cases:
        if cap is not None and not kit.exercises(cap):
            continue
        with kit.unchanged(f"{rpc} of a missing VM"):
            kit.refused(rpc, request, Code.NOT_FOUND)
    if kit.exercises(Capability.SNAPSHOTS):
        resp = kit.ok("SnapshotDelete", pb.SnapshotDeleteRequest(vm_id=gone, snapshot_id="kit"))
        kit.wait(resp.task, "SnapshotDelete of a missing VM")
    if kit.offers(Capability.CLONE) and any(
        vm.name.startswith(kit.fixtures.name_prefix + "clone-of-missing") for vm in kit.list_vms()
    ):
        raise fail("Clone of a missing VM left a VM behind")
