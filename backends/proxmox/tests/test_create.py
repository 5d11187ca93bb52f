"""Create: blank, from a template, from an image URL or Path; cloud-init;
idempotency by name and ownership tag; safe VMIDs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import pytest
from vm_provider_proxmox.tasks import parse_upid

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import TaskFailed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB+x/y= user@host"


def test_blank_vm_from_the_specs(ops: Any, pve: Any) -> None:
    resp = ops.stub.Create(
        pb.CreateRequest(
            name="web-1",
            class_json=json.dumps({"CPU": 2, "MemoryMiB": 2048, "Firmware": "UEFI", "SecurityProfile": {"SecureBoot": True}}),
            networks_json=json.dumps(
                [
                    {
                        "Bridge": "vmbr1",
                        "VLAN": 42,
                        "Model": "e1000",
                        "MacAddress": "bc:24:11:aa:bb:cc",
                        "IPPolicy": "static",
                        "StaticIP": "10.0.0.5",
                        "Prefix": 24,
                        "Gateway": "10.0.0.1",
                        "DNS": "10.0.0.2",
                    },
                    {"NetworkName": "vnet7"},
                    {"StaticIP": "2001:db8::5", "Prefix": 64, "Gateway": "2001:db8::1"},
                ]
            ),
            disks_json=json.dumps([{"SizeGiB": 8}, {"SizeGiB": 20, "Type": "thick"}]),
            tags=["team-a"],
        ),
        timeout=30,
    )
    upid = parse_upid(resp.task.id)  # one Proxmox task is the whole Create: its UPID is the task
    assert upid is not None
    assert upid.type == "qmcreate"
    ops.h.wait(resp.task)
    config = pve.vm(int(resp.id)).config
    assert (config["name"], int(config["cores"]), int(config["sockets"]), int(config["memory"])) == ("web-1", 2, 1, 2048)
    assert config["bios"] == "ovmf"
    assert config["efidisk0"].startswith("local-lvm:")
    assert "pre-enrolled-keys=1" in config["efidisk0"]
    assert config["net0"] == "e1000=BC:24:11:AA:BB:CC,bridge=vmbr1,tag=42"
    assert config["net1"].startswith("virtio=")
    assert config["net1"].endswith(",bridge=vnet7")
    assert config["ipconfig0"] == "ip=10.0.0.5/24,gw=10.0.0.1"
    assert config["ipconfig1"] == "ip=dhcp"
    assert config["ipconfig2"] == "ip6=2001:db8::5/64,gw6=2001:db8::1"
    assert config["nameserver"] == "10.0.0.2"
    assert "size=8G" in config["scsi0"]
    assert "size=20G" in config["scsi1"]
    assert "discard=on" not in config["scsi1"]
    assert config["ide2"].endswith("media=cdrom")  # the cloud-init drive
    assert set(config["tags"].split(";")) == {"vm-provider", "team-a"}
    assert config["agent"] == "enabled=1"
    assert config["boot"] == "order=scsi0;net0"


def test_defaults(ops: Any, pve: Any) -> None:
    vm = ops.create("plain-1")
    config = pve.vm(int(vm)).config
    assert (int(config["cores"]), int(config["memory"])) == (1, 1024)
    assert "size=10G" in config["scsi0"]
    assert "ide2" not in config  # nothing for cloud-init to do
    assert pve.vm(int(vm)).node == "pve1"


def test_placement(ops: Any, pve: Any) -> None:
    vm = ops.create(
        "placed-1", placement_json={"Host": "pve2", "Datastore": "cloud"}, disks_json=[{"SizeGiB": 2, "Type": "qcow2"}]
    )
    assert pve.vm(int(vm)).node == "pve2"
    assert pve.vm(int(vm)).config["scsi0"].startswith("cloud:")
    assert "qcow2" in pve.vm(int(vm)).config["scsi0"]


def test_idempotent_by_name_and_tag(ops: Any, pve: Any) -> None:
    first = ops.create("same-1")
    mark = ops.mark()
    second = ops.create("same-1", class_json={"CPU": 4})
    assert second == first
    assert ("POST", "/api2/json/nodes/pve1/qemu") not in ops.requests_since(mark)
    assert int(pve.vm(int(first)).config["cores"]) == 1  # returned as it is, not changed


def test_foreign_vm_with_the_name(ops: Any, pve: Any) -> None:
    pve.add_vm(300, "theirs", config={"scsi0": "local-lvm:vm-300-disk-0,size=4G"})
    code, message = ops.fails(lambda: ops.stub.Create(pb.CreateRequest(name="theirs"), timeout=30))
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert "300" in message


def test_bad_specs(ops: Any) -> None:
    for request, field in [
        (pb.CreateRequest(name="bad_name!"), "name"),
        (pb.CreateRequest(name="ok-1", tags=["Bad Tag"]), "tags[0]"),
        (pb.CreateRequest(name="ok-1", networks_json='[{"Model": "ne2k"}]'), "networks_json[0].Model"),
        (pb.CreateRequest(name="ok-1", disks_json='[{"SizeGiB": 1, "Type": "tape"}]'), "disks_json[0].Type"),
        (pb.CreateRequest(name="ok-1", class_json='{"ExtraConfig": {"hookscript": "x"}}'), "class_json.ExtraConfig.hookscript"),
    ]:
        code, message = ops.fails(lambda r=request: ops.stub.Create(r, timeout=30))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, message
        assert field in message
    assert list(ops.stub.ListVMs(pb.ListVMsRequest()).vms) == []


def test_cloud_init_fields_through_extra_config(ops: Any, pve: Any) -> None:
    vm = ops.create("ci-1", class_json={"ExtraConfig": {"ciuser": "ubuntu", "sshkeys": KEY}})
    config = pve.vm(int(vm)).config
    assert config["ciuser"] == "ubuntu"
    assert unquote(config["sshkeys"]) == KEY
    assert "ide2" in config


def test_user_data_goes_to_a_snippet(ops: Any, pve: Any, snippets_dir: Path) -> None:
    user_data = b"#cloud-config\nusers:\n  - name: alice\n"
    meta_data = b"instance-id: web-2\n"
    vm = ops.create("ud-1", user_data=user_data, meta_data=meta_data)
    cicustom = pve.vm(int(vm)).config["cicustom"]
    parts = dict(p.split("=", 1) for p in cicustom.split(","))
    assert parts["user"].startswith("cloud:snippets/")
    assert parts["meta"].startswith("cloud:snippets/")
    assert (snippets_dir / parts["user"].removeprefix("cloud:")).read_bytes() == user_data
    assert (snippets_dir / parts["meta"].removeprefix("cloud:")).read_bytes() == meta_data
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=vm)).task)
    assert list((snippets_dir / "snippets").iterdir()) == []


def test_user_data_without_snippet_storage_is_refused(provider: Any, ops_for: Any, settings: dict[str, Any]) -> None:
    table = {k: v for k, v in settings.items() if k not in ("snippets_storage", "snippets_dir")}
    ops = ops_for(provider(table))
    code, message = ops.fails(lambda: ops.stub.Create(pb.CreateRequest(name="ud-2", user_data=b"#cloud-config\n"), timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "snippets_storage" in message
    assert list(ops.stub.ListVMs(pb.ListVMsRequest()).vms) == []


def test_failed_create_leaves_nothing(ops: Any, pve: Any, snippets_dir: Path) -> None:
    pve.fail("POST", "/nodes/pve1/qemu", error="unable_parse_drive_interface", times=1)  # the create task fails
    resp = ops.stub.Create(pb.CreateRequest(name="broken-1", user_data=b"#cloud-config\n"), timeout=30)
    with pytest.raises(TaskFailed, match="unable to parse drive interface"):
        ops.h.wait(resp.task)
    assert pve.vm(int(resp.id)) is None
    assert list((snippets_dir / "snippets").iterdir()) == []
    again = ops.create("broken-1", user_data=b"#cloud-config\n")  # a retry starts afresh
    assert pve.vm(int(again)).config["name"] == "broken-1"


def test_from_template_by_name_and_vmid(ops: Any, pve: Any) -> None:
    pve.add_vm(
        9000,
        "debian-12",
        node="pve2",
        template=True,
        config={
            "scsi0": "local-lvm:base-9000-disk-0,size=2G",
            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
            "net1": "virtio=BC:24:11:00:00:02,bridge=vmbr0",
            "boot": "order=scsi0",
            "cores": 1,
            "memory": "512",
        },
    )
    resp = ops.stub.Create(
        pb.CreateRequest(
            name="from-tpl-1",
            image_json='{"TemplateName": "debian-12"}',
            class_json='{"CPU": 2}',
            networks_json='[{"Bridge": "vmbr9", "StaticIP": "10.1.0.9", "Prefix": 16}]',
            disks_json='[{"SizeGiB": 4}, {"SizeGiB": 3}]',
            placement_json='{"Host": "pve2"}',
        ),
        timeout=30,
    )
    assert not resp.task.id.startswith("UPID")  # clone, configure, grow: background work
    ops.h.wait(resp.task)
    vm = pve.vm(int(resp.id))
    assert vm.node == "pve2"
    assert (int(vm.config["cores"]), vm.config["memory"]) == (2, "512")  # memory kept from the template
    assert vm.config["net0"].endswith("bridge=vmbr9")
    assert "net1" not in vm.config  # networks_json says what the NICs are
    assert vm.config["ipconfig0"] == "ip=10.1.0.9/16"
    assert vm.config["scsi1"] == "local-lvm:3,discard=on"  # the simulator stores a new disk as asked, unallocated
    assert "vm-provider" in vm.config["tags"]
    resizes = [p for m, p in ops.requests_since(0) if p.endswith("/resize")]
    assert resizes == [f"/api2/json/nodes/pve2/qemu/{resp.id}/resize"]
    by_vmid = ops.create("from-tpl-2", image_json={"TemplateName": "9000"}, placement_json={"Host": "pve2"})
    assert pve.vm(int(by_vmid)).config["net1"]  # template NICs kept when networks_json is empty


def test_template_disk_never_shrinks(ops: Any, pve: Any) -> None:
    pve.add_vm(9001, "big", template=True, config={"scsi0": "local-lvm:base-9001-disk-0,size=20G"})
    code, message = ops.fails(
        lambda: ops.stub.Create(
            pb.CreateRequest(name="small-1", image_json='{"TemplateName": "big"}', disks_json='[{"SizeGiB": 5}]'), timeout=30
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "disks_json[0].SizeGiB" in message


def test_missing_template(ops: Any, pve: Any) -> None:
    code, _ = ops.fails(lambda: ops.stub.Create(pb.CreateRequest(name="x-1", image_json='{"TemplateName": "nope"}'), timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND
    pve.add_vm(400, "not-a-template", config={"scsi0": "local-lvm:vm-400-disk-0,size=2G"})
    code, message = ops.fails(
        lambda: ops.stub.Create(pb.CreateRequest(name="x-1", image_json='{"TemplateName": "not-a-template"}'), timeout=30)
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "not a template" in message


def test_from_an_image_url(ops: Any, pve: Any) -> None:
    image = {"URL": "https://images.example.invalid/noble.qcow2", "Checksum": "a" * 64, "ChecksumType": "sha256"}
    vm = ops.create("url-1", image_json=image, disks_json=[{"SizeGiB": 12}])
    downloads = [body for m, p, body in pve.requests if p.endswith("/download-url")]
    assert len(downloads) == 1
    assert b"checksum=" + b"a" * 64 in downloads[0]
    assert b"checksum-algorithm=sha256" in downloads[0]
    assert b"content=import" in downloads[0]
    scsi0 = pve.vm(int(vm)).config["scsi0"]
    assert "import-from=cloud:import/vm-provider-" in scsi0
    assert pve.vm(int(vm)).config["boot"] == "order=scsi0"
    again = ops.create("url-2", image_json=image)  # the same image: Proxmox verifies the file it has
    verify = [body for m, p, body in pve.requests if p.endswith("/download-url")][1:]
    assert len(verify) == 1
    assert b"checksum=" + b"a" * 64 in verify[0]
    assert pve.vm(int(again)).config["scsi0"].split(",")[1] == scsi0.split(",")[1]  # the same import-from


def test_from_an_image_path(ops: Any, pve: Any) -> None:
    pve.store_file("cloud", "debian-12.qcow2", 2 * 2**30, content="import")
    resp = ops.stub.Create(pb.CreateRequest(name="path-1", image_json='{"Path": "cloud:import/debian-12.qcow2"}'), timeout=30)
    assert resp.task.id.startswith("UPID:")  # one task
    ops.h.wait(resp.task)
    assert "import-from=cloud:import/debian-12.qcow2" in pve.vm(int(resp.id)).config["scsi0"]
    code, message = ops.fails(
        lambda: ops.stub.Create(pb.CreateRequest(name="path-2", image_json='{"Path": "missing.qcow2"}'), timeout=30)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "image_json.Path" in message


def test_from_an_iso(ops: Any, pve: Any) -> None:
    pve.store_file("cloud", "installer.iso", 123456)
    vm = ops.create("iso-1", image_json={"Path": "cloud:iso/installer.iso"}, disks_json=[{"SizeGiB": 5}])
    config = pve.vm(int(vm)).config
    assert config["ide2"].startswith("cloud:iso/installer.iso,media=cdrom")
    assert config["boot"] == "order=ide2;scsi0"
    assert "size=5G" in config["scsi0"]


def test_from_an_iso_url(ops: Any, pve: Any) -> None:
    vm = ops.create("iso-2", image_json={"URL": "https://images.example.invalid/netinst.iso"}, networks_json=[{}])
    config = pve.vm(int(vm)).config
    assert config["ide2"].startswith("cloud:iso/vm-provider-")
    assert "media=cdrom" in config["ide2"]
    assert config["ide0"].endswith("media=cdrom")  # cloud-init moved out of the installer's way
    assert config["boot"] == "order=ide2;scsi0"
    downloads = [body for m, p, body in pve.requests if p.endswith("/download-url")]
    assert len(downloads) == 1
    assert b"content=iso" in downloads[0]


def test_lost_vmid_race_retries_with_another(ops: Any, pve: Any) -> None:
    pve.fail("POST", "/nodes/pve1/qemu", 500, "unable to create VM 100 - VM 100 already exists on node 'pve2'", times=2)
    vm = ops.create("race-1")
    assert pve.vm(int(vm)) is not None
    asked = [p for m, p in ops.requests_since(0) if p.endswith("/cluster/nextid")]
    assert len(asked) == 3
