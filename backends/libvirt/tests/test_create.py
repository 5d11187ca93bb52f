"""Create on the libvirt test driver, through a real vm-provider server."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from vm_provider_libvirt import marks

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness, TaskFailed

NS = {"vmp": marks.NS}


def domain_xml(harness: ProviderHarness, vm_id: str) -> ET.Element:
    return ET.fromstring(harness.backend.session.lookup(vm_id).XMLDesc(0))  # type: ignore[attr-defined]


def volumes(harness: ProviderHarness, pool: str = "default") -> set[str]:
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    return {v.name() for v in conn.storagePoolLookupByName(pool).listAllVolumes(0)}


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_default_settings_serve_on_the_builtin_test_host() -> None:
    with ProviderHarness.for_backend("libvirt", {}) as h:
        report = h.stub.Validate(pb.ValidateRequest())
        assert report.ok, report.message
        assert "pool 'default-pool'" in report.message
        vm = h.stub.Create(pb.CreateRequest(name="vmpt-default"))
        assert h.stub.Describe(pb.DescribeRequest(id=vm.id)).power_state == "Off"
        h.stub.Delete(pb.DeleteRequest(id=vm.id))


def test_domain_xml_has_what_the_spec_asks(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm(
        "web-1",
        class_json={
            "CPU": 2,
            "MemoryMiB": 1024,
            "ExtraConfig": {"libvirt.kernel": "/boot/vmlinuz", "libvirt.cmdline": "console=ttyS0", "other.key": "x"},
        },
        disks_json=[{"SizeGiB": 5, "Name": "data"}],
        networks_json=[{"NetworkName": "default", "Model": "e1000", "MacAddress": "52:54:00:aa:bb:cc"}, {"Bridge": "br0"}],
        user_data=b"#cloud-config\n",
        tags=["web", "prod"],
    )
    root = domain_xml(harness, vm_id)
    assert root.findtext("name") == "web-1"
    assert root.findtext("uuid") == vm_id
    assert root.find("vcpu").text == "4"
    assert root.find("vcpu").get("current") == "2"
    assert root.find("currentMemory").text == str(1024 * 1024)  # type: ignore[union-attr]
    assert root.find("memory").text == str(2048 * 1024)  # type: ignore[union-attr]
    assert root.findtext("os/kernel") == "/boot/vmlinuz"
    assert root.findtext("os/cmdline") == "console=ttyS0"
    disks = root.findall("devices/disk")
    assert [(d.get("device"), d.find("target").get("dev"), d.find("source").get("file")) for d in disks] == [  # type: ignore[union-attr]
        ("disk", "vda", "/vmpt-pool/web-1-data.qcow2"),
        ("cdrom", "sda", "/vmpt-pool/web-1-cidata.iso"),
    ]
    nics = root.findall("devices/interface")
    assert nics[0].find("mac").get("address") == "52:54:00:aa:bb:cc"  # type: ignore[union-attr]
    assert nics[0].find("model").get("type") == "e1000"  # type: ignore[union-attr]
    assert nics[1].get("type") == "bridge"
    assert nics[1].find("source").get("bridge") == "br0"
    assert nics[1].find("mac").get("address").startswith("52:54:00:")  # type: ignore[union-attr]
    assert root.find("devices/graphics").get("type") == "vnc"  # type: ignore[union-attr]
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"  # type: ignore[union-attr]
    assert root.find("devices/serial") is not None
    mark = root.find("metadata/vmp:vm", NS)
    assert mark is not None
    assert [t.text for t in mark.findall("vmp:tag", NS)] == ["web", "prod"]
    assert {v.get("name"): v.get("role") for v in mark.findall("vmp:volume", NS)} == {
        "web-1-data.qcow2": "data",
        "web-1-cidata.iso": "cidata",
    }
    assert {"web-1-data.qcow2", "web-1-cidata.iso"} <= volumes(harness)


def test_create_is_idempotent_by_name(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    first = make_vm("web-1", disks_json=[{"SizeGiB": 1}])
    before = volumes(harness)
    again = make_vm("web-1", disks_json=[{"SizeGiB": 3}], class_json={"CPU": 8})
    assert again == first
    assert volumes(harness) == before
    assert harness.stub.Describe(pb.DescribeRequest(id="web-1")).exists  # names work as ids too


def test_a_name_taken_by_a_foreign_vm_is_already_exists(harness: ProviderHarness) -> None:
    err = rpc_error(lambda: harness.stub.Create(pb.CreateRequest(name="foreign-vm")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "not created by vm-provider" in (err.details() or "")


def test_template_becomes_an_overlay_and_path_a_copy(harness: ProviderHarness, make_vm: Callable[..., str], raw: Any) -> None:
    linked = make_vm("from-template", image_json={"TemplateName": "base.qcow2"}, class_json={"DiskDefaults": {"SizeGiB": 4}})
    copied = make_vm("from-path", image_json={"Path": "default/base.qcow2"})
    placed = make_vm("placed", disks_json=[{"SizeGiB": 1, "Type": "raw"}], placement_json={"Datastore": "fast"})
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    overlay = ET.fromstring(conn.storageVolLookupByPath("/vmpt-pool/from-template-vda.qcow2").XMLDesc(0))
    assert overlay.findtext("backingStore/path") == "/vmpt-pool/base.qcow2"
    assert overlay.findtext("capacity") == str(4 * 2**30)
    copy = ET.fromstring(conn.storageVolLookupByPath("/vmpt-pool/from-path-vda.qcow2").XMLDesc(0))
    assert copy.find("backingStore") is None
    assert raw(linked)["source"] == {"kind": "template", "ref": "default/base.qcow2"}
    assert raw(copied)["source"] == {"kind": "path", "ref": "default/base.qcow2"}
    # Deleting the VMs removes their volumes, never the template.
    assert volumes(harness, "fast") == {"placed-vda.img"}
    for vm_id in (linked, copied, placed):
        harness.stub.Delete(pb.DeleteRequest(id=vm_id))
    assert volumes(harness) == {"base.qcow2"}
    assert volumes(harness, "fast") == set()


BAD_SPECS = [
    ({"image_json": {"TemplateName": "missing.qcow2"}}, grpc.StatusCode.FAILED_PRECONDITION, "image_json.TemplateName"),
    (
        {"image_json": {"TemplateName": "base.qcow2"}, "class_json": {"DiskDefaults": {"SizeGiB": 1}}},
        grpc.StatusCode.INVALID_ARGUMENT,
        "SizeGiB",
    ),
    ({"placement_json": {"Datastore": "nope"}}, grpc.StatusCode.INVALID_ARGUMENT, "placement_json.Datastore"),
    ({"networks_json": [{"NetworkName": "nope"}]}, grpc.StatusCode.INVALID_ARGUMENT, "networks_json[0].NetworkName"),
    ({"networks_json": [{"NetworkName": "default", "VLAN": 10}]}, grpc.StatusCode.INVALID_ARGUMENT, "networks_json[0].VLAN"),
    ({"networks_json": [{"NetworkName": "default", "Bridge": "br0"}]}, grpc.StatusCode.INVALID_ARGUMENT, "networks_json[0]"),
    ({"class_json": {"ExtraConfig": {"libvirt.kernal": "/x"}}}, grpc.StatusCode.INVALID_ARGUMENT, "libvirt.kernal"),
    ({"class_json": {"ExtraConfig": {"libvirt.cmdline": "quiet"}}}, grpc.StatusCode.INVALID_ARGUMENT, "libvirt.kernel"),
    ({"disks_json": [{"SizeGiB": 1, "Type": "ssd"}]}, grpc.StatusCode.INVALID_ARGUMENT, "disks_json[0].Type"),
    # The test driver keeps no disk bytes: nothing to download into.
    ({"image_json": {"URL": "http://127.0.0.1:9/x.img"}}, grpc.StatusCode.UNIMPLEMENTED, "test driver"),
]


@pytest.mark.parametrize(("fields", "code", "names"), BAD_SPECS, ids=[c[2] for c in BAD_SPECS])
def test_bad_specs_are_refused_before_anything_is_made(
    harness: ProviderHarness, fields: dict[str, Any], code: grpc.StatusCode, names: str
) -> None:
    before = volumes(harness)
    request = {k: json.dumps(v) for k, v in fields.items()}
    err = rpc_error(lambda: harness.stub.Create(pb.CreateRequest(name="bad-1", **request)))
    assert err.code() == code
    assert names in (err.details() or "")
    assert volumes(harness) == before
    assert not harness.stub.Describe(pb.DescribeRequest(id="bad-1")).exists


def test_vlans_go_where_the_switch_can_tag_them(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("tagged", networks_json=[{"NetworkName": "ovs", "VLAN": 10}, {"Bridge": "ovsbr1", "VLAN": 20}])
    nics = domain_xml(harness, vm_id).findall("devices/interface")
    assert [n.find("vlan/tag").get("id") for n in nics] == ["10", "20"]  # type: ignore[union-attr]
    assert nics[0].find("virtualport") is None  # inherited from the network
    assert nics[1].find("virtualport").get("type") == "openvswitch"  # type: ignore[union-attr]


def test_a_failed_create_leaves_nothing_behind(harness: ProviderHarness) -> None:
    # A volume of the name the VM's disk would get: refused up front.
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    pool = conn.storagePoolLookupByName("default")
    pool.createXML(
        "<volume><name>clash-vda.qcow2</name><capacity>1024</capacity><target><format type='qcow2'/></target></volume>", 0
    )
    err = rpc_error(lambda: harness.stub.Create(pb.CreateRequest(name="clash")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "clash-vda.qcow2" in (err.details() or "")
    # The root disk is copied, then a preallocated qcow2 data disk is
    # refused (the test driver takes no preallocation flag): the create
    # task fails and the copy goes again.
    before = volumes(harness)
    resp = harness.stub.Create(
        pb.CreateRequest(
            name="grown",
            image_json=json.dumps({"Path": "/vmpt-pool/base.qcow2"}),
            class_json=json.dumps({"DiskDefaults": {"SizeGiB": 3}}),
            disks_json=json.dumps([{"SizeGiB": 10_000_000, "Type": "thick"}]),
        )
    )
    assert resp.task.id
    with pytest.raises(TaskFailed, match="creating VM 'grown'"):
        harness.wait(resp.task)
    assert volumes(harness) == before
    assert not harness.stub.Describe(pb.DescribeRequest(id=resp.id)).exists


def test_cloud_init_seed_only_when_asked(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    plain = make_vm("plain")
    static = make_vm("static", networks_json=[{"IPPolicy": "static", "StaticIP": "10.0.0.5", "Prefix": 24}])
    assert [d.get("device") for d in domain_xml(harness, plain).findall("devices/disk")] == ["disk"]
    assert [d.get("device") for d in domain_xml(harness, static).findall("devices/disk")] == ["disk", "cdrom"]
