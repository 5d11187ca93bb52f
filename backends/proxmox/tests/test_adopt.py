"""VMs made through the Proxmox API without the owner tag (adopted VMs),
and ImagePrepare's answer used by Create, on fakepve."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc

from provider_core.pb import provider_pb2 as pb

SHA = "c" * 64


def made_elsewhere(ops: Any, api: Any, vmid: int, name: str) -> str:
    """A VM someone made through the API (the web UI, Terraform): no owner tag."""
    api.nodes("pve1").qemu.post(vmid=vmid, name=name, memory=512, cores=1, scsi0="local-lvm:4")
    end = time.monotonic() + 10
    while not ops.describe(str(vmid)).exists:
        assert time.monotonic() < end, f"VM {vmid} did not appear"
        time.sleep(0.05)
    return str(vmid)


def test_a_foreign_vm_is_listed_and_read_but_not_changed_by_default(
    provider: Any, ops_for: Any, settings: dict[str, Any], api: Any, pve: Any
) -> None:
    ops = ops_for(provider(settings, manage_foreign_vms=False))
    vm = made_elsewhere(ops, api, 400, "legacy")
    (listed,) = [v for v in ops.stub.ListVMs(pb.ListVMsRequest()).vms if v.id == vm]
    assert (listed.name, listed.provider_raw["managed"]) == ("legacy", "false")
    assert (ops.raw(vm)["status"], ops.raw(vm)["managed"]) == ("stopped", False)
    assert ops.raw(ops.create("mine"))["managed"] is True
    assert ops.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm)).disk_id == "scsi0"
    for rpc, request in [
        ("Power", pb.PowerRequest(id=vm, op=pb.POWER_OP_ON)),
        ("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=json.dumps({"Class": {"CPU": 2}}))),
        ("SnapshotCreate", pb.SnapshotCreateRequest(vm_id=vm, name_hint="s")),
        ("Clone", pb.CloneRequest(source_vm_id=vm, target_name="copy")),
        ("Delete", pb.DeleteRequest(id=vm)),
    ]:
        code, message = ops.fails(lambda r=rpc, q=request: getattr(ops.stub, r)(q, timeout=30))
        assert code is grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert "manage_foreign_vms" in message, rpc
    assert pve.vm(400).status == "stopped"
    assert "copy" not in [v.name for v in ops.stub.ListVMs(pb.ListVMsRequest()).vms]


def test_a_foreign_vm_is_managed_when_allowed_and_deleted_without_unreferenced_disks(
    provider: Any, ops_for: Any, settings: dict[str, Any], api: Any, pve: Any
) -> None:
    ops = ops_for(provider(settings, manage_foreign_vms=True))
    vm = made_elsewhere(ops, api, 401, "legacy")
    ops.h.wait(ops.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps({"Class": {"CPU": 2}}))).task)
    assert str(pve.vm(401).config["cores"]) == "2"
    snap = ops.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint="before"), timeout=30)
    ops.h.wait(snap.task)
    ops.h.wait(ops.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=snap.snapshot_id)).task)
    ops.h.wait(ops.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id=snap.snapshot_id)).task)
    copy = ops.clone(vm, "legacy-copy")
    ops.power(vm, pb.POWER_OP_ON)
    assert pve.vm(401).status == "running"
    (listed,) = [v for v in ops.stub.ListVMs(pb.ListVMsRequest()).vms if v.id == vm]
    assert listed.provider_raw["managed"] == "false"  # managed, still not made by the provider
    volumes = pve.storages["local-lvm"].setdefault("volumes", {})
    detached = {"content": "images", "format": "raw", "size": 2**30, "vmid": 401, "ctime": 0}
    volumes["vm-401-disk-9"] = detached  # a disk of its VMID kept out of its config (detached on purpose)
    own = [name for name, vol in volumes.items() if vol.get("vmid") == 401 and name != "vm-401-disk-9"]
    assert own  # its configured disk
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=vm), timeout=30).task)
    assert not ops.describe(vm).exists
    assert "vm-401-disk-9" in volumes
    assert not [name for name in own if name in volumes]  # the disks of its config went with it
    volumes[f"vm-{copy}-disk-9"] = {**detached, "vmid": int(copy)}
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=copy), timeout=30).task)
    assert f"vm-{copy}-disk-9" not in volumes  # the provider's own VM: everything of its VMID goes


def test_a_template_it_did_not_make_is_used_as_an_image_and_changed_only_when_allowed(
    provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any
) -> None:
    pve.add_vm(9002, "golden", template=True, config={"scsi0": "local-lvm:base-9002-disk-0,size=2G"})
    ops = ops_for(provider(settings, manage_foreign_vms=False))
    made = ops.create("from-golden", image_json={"TemplateName": "9002"})  # an image: no permission needed
    assert pve.vm(int(made)).config["name"] == "from-golden"
    copy = ops.clone("9002", "copy")  # a template is there to be copied: no permission needed
    assert pve.vm(int(copy)).config["name"] == "copy"
    for rpc, request in [
        ("Power", pb.PowerRequest(id="9002", op=pb.POWER_OP_ON)),
        ("SnapshotCreate", pb.SnapshotCreateRequest(vm_id="9002", name_hint="s")),
        ("Reconfigure", pb.ReconfigureRequest(id="9002", desired_json=json.dumps({"Class": {"CPU": 2}}))),
    ]:
        code, message = ops.fails(lambda r=rpc, q=request: getattr(ops.stub, r)(q, timeout=30))
        assert code is grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert "manage_foreign_vms" in message, rpc
    assert pve.vm(9002).status == "stopped"


def test_a_template_it_did_not_make_is_cloned_but_never_deleted(ops: Any, pve: Any) -> None:
    pve.add_vm(9000, "tmpl", template=True, config={"scsi0": "local-lvm:base-9000-disk-0,size=2G"})
    assert "9000" not in [v.id for v in ops.stub.ListVMs(pb.ListVMsRequest()).vms]  # not a VM to adopt
    ops.clone("9000", "from-tmpl")
    code, message = ops.fails(lambda: ops.stub.Delete(pb.DeleteRequest(id="9000"), timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "template" in message
    assert pve.vm(9000).template


# -- ImagePrepare -> Create ------------------------------------------------------------


def prepare(ops: Any, image: dict[str, str], target: str) -> Any:
    return ops.stub.ImagePrepare(pb.ImagePrepareRequest(image_json=json.dumps(image), target_name=target), timeout=30)


def test_a_prepared_url_image_is_named_at_once_and_created_from(ops: Any, pve: Any) -> None:
    resp = prepare(ops, {"URL": "https://images.example.invalid/noble.qcow2", "Checksum": SHA}, "noble")
    assert resp.task.id  # the download runs on
    assert (resp.prepared_image_id, resp.prepared_image_path) == ("cloud:import/noble.qcow2", "cloud:import/noble.qcow2")
    ops.h.wait(resp.task)
    by_id = ops.create("by-id", image_json={"TemplateName": resp.prepared_image_id})
    by_path = ops.create("by-path", image_json={"Path": resp.prepared_image_path})
    for vm in (by_id, by_path):
        assert "import-from=cloud:import/noble.qcow2" in pve.vm(int(vm)).config["scsi0"]
    assert len([p for m, p, _ in pve.requests if p.endswith("/download-url")]) == 1  # Create fetched nothing


def test_a_prepared_template_is_named_by_its_vmid(ops: Any, pve: Any) -> None:
    pve.add_vm(9001, "golden", template=True, config={"scsi0": "local-lvm:base-9001-disk-0,size=2G"})
    resp = prepare(ops, {"TemplateName": "golden"}, "golden")
    assert (resp.task.id, resp.prepared_image_id, resp.prepared_image_path) == ("", "9001", "")
    vm = ops.create("from-golden", image_json={"TemplateName": resp.prepared_image_id})
    assert pve.vm(int(vm)).config["name"] == "from-golden"


def test_a_prepared_path_is_named_by_its_volume(ops: Any, pve: Any) -> None:
    pve.store_file("cloud", "debian.qcow2", 2**30, content="import")
    resp = prepare(ops, {"Path": "debian.qcow2"}, "debian")
    assert (resp.prepared_image_id, resp.prepared_image_path) == ("cloud:import/debian.qcow2", "cloud:import/debian.qcow2")
    vm = ops.create("from-debian", image_json={"TemplateName": resp.prepared_image_id})
    assert "import-from=cloud:import/debian.qcow2" in pve.vm(int(vm)).config["scsi0"]
