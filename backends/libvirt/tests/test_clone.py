"""Clone on the libvirt test driver: full and linked, customization,
idempotency, and who deletes a frozen base."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from vm_provider_libvirt import marks, removal

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def clone(harness: ProviderHarness, source: str, target: str, linked: bool = False, **fields: Any) -> str:
    request = {k: json.dumps(v) for k, v in fields.items()}
    resp = harness.stub.Clone(pb.CloneRequest(source_vm_id=source, target_name=target, linked=linked, **request))
    harness.wait(resp.task)
    return str(resp.target_vm_id)


def domain(harness: ProviderHarness, vm_id: str) -> ET.Element:
    return ET.fromstring(harness.backend.session.lookup(vm_id).XMLDesc(0))  # type: ignore[attr-defined]


def disk_paths(root: ET.Element) -> list[str]:
    return [d.find("source").get("file", "") for d in root.findall("devices/disk") if d.get("device") == "disk"]  # type: ignore[union-attr]


def macs(root: ET.Element) -> list[str]:
    return [i.find("mac").get("address", "") for i in root.findall("devices/interface")]  # type: ignore[union-attr]


def backing(harness: ProviderHarness, path: str) -> str:
    vol = harness.backend.session.conn().storageVolLookupByPath(path)  # type: ignore[attr-defined]
    return ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path") or ""


def pool_volumes(harness: ProviderHarness) -> set[str]:
    pool = harness.backend.session.conn().storagePoolLookupByName("default")  # type: ignore[attr-defined]
    return {v.name() for v in pool.listAllVolumes(0)}


@pytest.fixture
def source(make_vm: Callable[..., str]) -> str:
    return make_vm(
        "src",
        image_json={"TemplateName": "base.qcow2"},
        disks_json=[{"SizeGiB": 1, "Name": "data"}],
        networks_json=[{"NetworkName": "default"}],
        user_data=b"#cloud-config\n",
        tags=["src"],
    )


def test_full_clone_is_independent_with_its_own_identity(
    harness: ProviderHarness, source: str, raw: Callable[[str], dict[str, Any]]
) -> None:
    target = clone(
        harness,
        source,
        "copy-1",
        class_json={"CPU": 3},
        customize_json={
            "hostname": "copy-one",
            "networks": [{"ipAddress": "10.0.0.9", "subnetMask": "255.255.255.0"}],
            "tags": ["t"],
        },
    )
    src, dst = domain(harness, source), domain(harness, target)
    assert target != source
    assert dst.findtext("name") == "copy-1"
    assert set(macs(src)).isdisjoint(macs(dst))
    assert disk_paths(dst) == ["/vmpt-pool/copy-1-vda.qcow2", "/vmpt-pool/copy-1-vdb.qcow2"]
    assert all(backing(harness, p) == "" for p in disk_paths(dst))  # flattened copies
    cdrom = [d for d in dst.findall("devices/disk") if d.get("device") == "cdrom"]
    assert [d.find("source").get("file") for d in cdrom] == ["/vmpt-pool/copy-1-cidata.iso"]  # type: ignore[union-attr]
    info = raw(target)
    assert info["vcpus"] == 3
    assert info["tags"] == ["t"]
    assert info["clone_of"] == source
    assert info["source"] == {"kind": "clone", "ref": source}
    # Idempotent by target name.
    assert clone(harness, source, "copy-1") == target


def test_linked_clone_freezes_the_source_and_shares_its_base(harness: ProviderHarness, source: str) -> None:
    before = disk_paths(domain(harness, source))
    target = clone(harness, source, "link-1", linked=True)
    after = disk_paths(domain(harness, source))
    clone_disks = disk_paths(domain(harness, target))
    for old, new_src, new_clone in zip(before, after, clone_disks, strict=True):
        assert new_src != old  # the source continues on a new overlay
        assert backing(harness, new_src) == old
        assert backing(harness, new_clone) == old
    src_mark = marks.read(domain(harness, source))
    assert src_mark is not None
    assert {v.name for v in src_mark.volumes if v.role == "base"} == {"src-vda.qcow2", "src-data.qcow2"}
    # The base goes with the last VM backed by it; the template never.
    harness.stub.Delete(pb.DeleteRequest(id=source))
    assert {"src-vda.qcow2", "src-data.qcow2"} <= pool_volumes(harness)
    harness.stub.Delete(pb.DeleteRequest(id=target))
    assert pool_volumes(harness) == {"base.qcow2"}


@pytest.mark.parametrize("order", [("src", "link-1", "link-2"), ("link-2", "link-1", "src"), ("link-1", "src", "link-2")])
def test_bases_layered_by_clones_of_clones_go_with_their_last_user(
    harness: ProviderHarness, source: str, order: tuple[str, ...]
) -> None:
    """Each linked clone freezes the source's disks again: base 2 is an
    overlay on base 1. A base stays while any domain's disk is backed by it
    through any number of layers, and none is left behind at the end."""
    ids = {"src": source, "link-1": clone(harness, source, "link-1", linked=True)}
    first_bases = disk_paths(domain(harness, ids["link-1"]))
    ids["link-2"] = clone(harness, source, "link-2", linked=True)
    second_bases = [backing(harness, p) for p in disk_paths(domain(harness, ids["link-2"]))]
    assert [backing(harness, p) for p in second_bases] == [backing(harness, p) for p in first_bases]
    for i, name in enumerate(order):
        harness.stub.Delete(pb.DeleteRequest(id=ids[name]))
        left = pool_volumes(harness)
        for later in order[i + 1 :]:  # every disk of a VM still there can be read to its end
            for disk in disk_paths(domain(harness, ids[later])):
                layer = disk
                while layer:
                    assert layer.rsplit("/", 1)[1] in left, f"{layer} of {later} gone after deleting {order[: i + 1]}"
                    layer = backing(harness, layer)
    assert pool_volumes(harness) == {"base.qcow2"}


def test_clone_refusals(harness: ProviderHarness, source: str) -> None:
    stub = harness.stub
    stub.Power(pb.PowerRequest(id=source, op=pb.POWER_OP_ON))
    with pytest.raises(grpc.RpcError) as info:
        stub.Clone(pb.CloneRequest(source_vm_id=source, target_name="c1"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shut it down" in (info.value.details() or "")
    stub.Power(pb.PowerRequest(id=source, op=pb.POWER_OP_OFF))
    stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=source, name_hint="s"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Clone(pb.CloneRequest(source_vm_id=source, target_name="c1", linked=True))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "snapshots" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        stub.Clone(pb.CloneRequest(source_vm_id="ghost", target_name="c1"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.Clone(pb.CloneRequest(source_vm_id=source, target_name="foreign-vm"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_a_base_stays_under_a_disk_whose_chain_leaves_the_pools(harness: ProviderHarness, source: str) -> None:
    """A snapshot made by hand (``virsh snapshot-create --disk-only``) puts a
    qcow2 overlay, unknown to any pool, on top of the source's disk: the
    chain beneath it cannot be read from libvirt's volumes, so the base it
    may still reach stays when the other linked clone goes."""
    target = clone(harness, source, "link-1", linked=True)
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    dom = harness.backend.session.lookup(source)  # type: ignore[attr-defined]
    root = ET.fromstring(dom.XMLDesc(0))
    vda = next(d for d in root.findall("devices/disk") if d.find("target").get("dev") == "vda")  # type: ignore[union-attr]
    vda.find("source").set("file", "/elsewhere/src-vda.snap1")  # type: ignore[union-attr]
    conn.defineXML(ET.tostring(root, encoding="unicode"))
    harness.stub.Delete(pb.DeleteRequest(id=target))
    assert "src-vda.qcow2" in pool_volumes(harness), "a base the source may still read was deleted"


def test_a_base_deep_in_a_long_chain_stays(harness: ProviderHarness, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain deeper than the layers followed is taken to reach the base."""
    target = clone(harness, source, "link-1", linked=True)
    clone(harness, source, "link-2", linked=True)
    monkeypatch.setattr(removal.BackingChains, "MAX_DEPTH", 1)  # the source's disks are now 3 layers deep
    harness.stub.Delete(pb.DeleteRequest(id=target))
    assert {"src-vda.qcow2", "src-data.qcow2"} <= pool_volumes(harness)
