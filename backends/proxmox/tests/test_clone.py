"""Clone: full and linked (templates only), target node and storage,
class_json overrides and customize_json applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import TaskFailed

TEMPLATE = {
    "scsi0": "local-lvm:base-9000-disk-0,size=4G",
    "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
    "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
    "boot": "order=scsi0",
    "cores": 1,
    "memory": "1024",
}


@pytest.fixture
def template(pve: Any) -> str:
    pve.add_vm(9000, "tmpl", template=True, config=dict(TEMPLATE))
    return "9000"


def test_full_clone_with_overrides_and_customization(ops: Any, pve: Any, snippets_dir: Path) -> None:
    source = ops.create("src-1", disks_json=[{"SizeGiB": 2}], networks_json=[{}])
    customize = {
        "hostname": "copy-1",
        "domain": "example.org",
        "networks": [{"ipAddress": "10.2.0.7", "subnetMask": "255.255.0.0", "gateway": "10.2.0.1", "dns": ["10.2.0.2"]}],
        "userData": "#cloud-config\npackages: [nginx]\n",
        "tags": ["web"],
    }
    target = ops.clone(source, "copy-1", class_json={"CPU": 4, "MemoryMiB": 4096}, customize_json=customize)
    assert target != source
    vm = pve.vm(int(target))
    assert vm.config["name"] == "copy-1"
    assert (int(vm.config["cores"]), int(vm.config["memory"])) == (4, 4096)
    assert vm.config["ipconfig0"] == "ip=10.2.0.7/16,gw=10.2.0.1"
    assert vm.config["nameserver"] == "10.2.0.2"
    assert vm.config["searchdomain"] == "example.org"
    assert set(vm.config["tags"].split(";")) == {"vm-provider", "web"}
    user = vm.config["cicustom"].removeprefix("user=cloud:")
    assert (snippets_dir / user).read_text() == customize["userData"]
    assert vm.config["net0"] != pve.vm(int(source)).config["net0"]  # its own MAC
    again = ops.clone(source, "copy-1")
    assert again == target
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=source)).task)
    ops.power(target, pb.POWER_OP_ON)
    assert ops.state(target) == "On"


def test_clone_to_another_node_and_storage(ops: Any, pve: Any) -> None:
    source = ops.create("src-2", placement_json={"Datastore": "cloud"})
    mark = ops.mark()
    target = ops.clone(source, "copy-2", placement_json={"Host": "pve2", "Datastore": "cloud"})
    assert pve.vm(int(target)).node == "pve2"
    clone_body = next(body for m, p, body in pve.requests[mark:] if p.endswith("/clone"))
    assert b"target=pve2" in clone_body
    assert b"storage=cloud" in clone_body
    assert b"full=1" in clone_body


def test_linked_clone_of_a_template(ops: Any, pve: Any, template: str) -> None:
    mark = ops.mark()
    target = ops.clone(template, "linked-1", linked=True)
    clone_body = next(body for m, p, body in pve.requests[mark:] if p.endswith("/clone"))
    assert b"full=0" in clone_body
    assert pve.vm(int(target)).config["name"] == "linked-1"
    assert "ide2" in pve.vm(int(target)).config  # the template's cloud-init drive is used, not a second one
    assert "ide0" not in pve.vm(int(target)).config


def test_linked_clone_needs_a_template(ops: Any) -> None:
    source = ops.create("src-3")
    code, message = ops.fails(
        lambda: ops.stub.Clone(pb.CloneRequest(source_vm_id=source, target_name="linked-2", linked=True), timeout=30)
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "template" in message
    assert [vm.name for vm in ops.stub.ListVMs(pb.ListVMsRequest()).vms] == ["src-3"]


def test_linked_clone_stays_on_the_template_storage(ops: Any, template: str) -> None:
    code, message = ops.fails(
        lambda: ops.stub.Clone(
            pb.CloneRequest(source_vm_id=template, target_name="linked-3", linked=True, placement_json='{"Datastore": "cloud"}'),
            timeout=30,
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "placement_json.Datastore" in message


@pytest.mark.parametrize(
    ("customize", "field"),
    [({"hostname": "other-name"}, "customize_json.hostname"), ({"timeZone": "Europe/Berlin"}, "customize_json.timeZone")],
)
def test_customizations_proxmox_cannot_apply(ops: Any, template: str, customize: dict[str, str], field: str) -> None:
    code, message = ops.fails(
        lambda: ops.stub.Clone(
            pb.CloneRequest(source_vm_id=template, target_name="cust-1", customize_json=json.dumps(customize)), timeout=30
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in message


def test_failed_configuration_removes_the_clone(ops: Any, pve: Any, template: str) -> None:
    resp = ops.stub.Clone(
        pb.CloneRequest(source_vm_id=template, target_name="bad-1", class_json='{"ExtraConfig": {"cores": "many"}}'), timeout=30
    )
    with pytest.raises(TaskFailed, match=r"class_json\.ExtraConfig\.cores"):
        ops.h.wait(resp.task)
    assert pve.vm(int(resp.target_vm_id)) is None


def test_missing_source(ops: Any) -> None:
    code, _ = ops.fails(lambda: ops.stub.Clone(pb.CloneRequest(source_vm_id="555", target_name="x-1"), timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND
