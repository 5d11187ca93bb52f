"""Domains defined behind vm-provider's back (adopted VMs): listed, read,
and changed only when the server's ``manage_foreign_vms`` allows it; what
Delete removes of them. On the test driver and on the real daemon."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import libvirt
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

VOLUME = "<volume><name>{name}</name><capacity unit='MiB'>64</capacity><target><format type='qcow2'/></target></volume>"


def domain_xml(name: str, disks: list[tuple[str, str]], kind: str = "test") -> str:
    """A domain with file disks ``(path, extra element)`` such as ``<readonly/>``."""
    devices = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{path}'/>"
        f"<target dev='vd{chr(ord('a') + i)}' bus='virtio'/>{extra}</disk>"
        for i, (path, extra) in enumerate(disks)
    )
    arch = "i686" if kind == "test" else "x86_64"
    return (
        f"<domain type='{kind}'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
        f"<os><type arch='{arch}'>hvm</type></os><devices>{devices}</devices></domain>"
    )


def domain_with(name: str, devices: str) -> str:
    """A test-driver domain with these ``<devices>`` children, verbatim."""
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
        f"<os><type arch='i686'>hvm</type></os><devices>{devices}</devices></domain>"
    )


@pytest.fixture
def allowed(test_uri: str) -> Iterator[ProviderHarness]:
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri}, manage_foreign_vms=True) as h:
        yield h


def test_a_foreign_domain_is_listed_and_read_but_not_changed_by_default(harness: ProviderHarness) -> None:
    listed = {vm.name: vm for vm in harness.stub.ListVMs(pb.ListVMsRequest()).vms}
    foreign = listed["foreign-vm"]
    assert foreign.provider_raw["managed"] == "false"
    assert json.loads(harness.stub.Describe(pb.DescribeRequest(id=foreign.id)).provider_raw_json)["managed"] is False
    assert harness.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=foreign.id)).disk_id == "vda"
    for rpc, request in [
        ("Power", pb.PowerRequest(id=foreign.id, op=pb.POWER_OP_OFF)),
        ("Reconfigure", pb.ReconfigureRequest(id="foreign-vm", desired_json=json.dumps({"Class": {"CPU": 2}}))),
        ("SnapshotCreate", pb.SnapshotCreateRequest(vm_id=foreign.id, name_hint="s")),
        ("Clone", pb.CloneRequest(source_vm_id=foreign.id, target_name="copy")),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            getattr(harness.stub, rpc)(request)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert "manage_foreign_vms" in (err.value.details() or ""), rpc
    assert harness.stub.Describe(pb.DescribeRequest(id=foreign.id)).power_state == "On"  # the test driver runs it


def test_a_foreign_domain_is_powered_reconfigured_and_snapshotted_when_allowed(allowed: ProviderHarness) -> None:
    stub = allowed.stub
    allowed.wait(stub.Power(pb.PowerRequest(id="foreign-vm", op=pb.POWER_OP_OFF)).task)
    assert stub.Describe(pb.DescribeRequest(id="foreign-vm")).power_state == "Off"
    allowed.wait(stub.Reconfigure(pb.ReconfigureRequest(id="foreign-vm", desired_json=json.dumps({"Class": {"CPU": 2}}))).task)
    snap = stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id="foreign-vm", name_hint="before"))
    allowed.wait(snap.task)
    allowed.wait(stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id="foreign-vm", snapshot_id=snap.snapshot_id)).task)
    allowed.wait(stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id="foreign-vm", snapshot_id=snap.snapshot_id)).task)
    allowed.wait(stub.Power(pb.PowerRequest(id="foreign-vm", op=pb.POWER_OP_ON)).task)
    (vm,) = [vm for vm in stub.ListVMs(pb.ListVMsRequest()).vms if vm.name == "foreign-vm"]
    assert (vm.power_state, vm.cpu, vm.provider_raw["managed"]) == ("On", 2, "false")


def test_delete_of_a_foreign_domain_keeps_every_disk_it_cannot_prove_is_its_own(allowed: ProviderHarness) -> None:
    conn = allowed.backend.session.conn()  # type: ignore[attr-defined]
    pool = conn.storagePoolLookupByName("default")
    own, shared, readonly = (pool.createXML(VOLUME.format(name=f"{n}.qcow2"), 0) for n in ("own", "shared", "readonly"))
    disks = [(own.path(), ""), (shared.path(), ""), (readonly.path(), "<readonly/>"), ("/elsewhere/data.qcow2", "")]
    conn.defineXML(domain_xml("adopted", disks))
    conn.defineXML(domain_xml("neighbour", [(shared.path(), "")]))
    allowed.wait(allowed.stub.Delete(pb.DeleteRequest(id="adopted")).task)
    assert not allowed.stub.Describe(pb.DescribeRequest(id="adopted")).exists
    left = {vol.name() for vol in pool.listAllVolumes(0)}
    assert "own.qcow2" not in left  # its alone: removed with it
    assert {"shared.qcow2", "readonly.qcow2", "base.qcow2"} <= left  # used by another domain, read-only, a template
    assert allowed.stub.Describe(pb.DescribeRequest(id="neighbour")).exists


def delete_adopted(h: ProviderHarness, disks: list[str], neighbour: str) -> set[str]:
    """Define ``adopted`` on ``disks`` (paths) and ``neighbour`` with the
    ``<devices>`` XML given, Delete ``adopted``; the volumes left, as pool/name."""
    conn = h.backend.session.conn()  # type: ignore[attr-defined]
    conn.defineXML(domain_xml("adopted", [(path, "") for path in disks]))
    conn.defineXML(domain_with("neighbour", neighbour))
    h.wait(h.stub.Delete(pb.DeleteRequest(id="adopted")).task)
    assert not h.stub.Describe(pb.DescribeRequest(id="adopted")).exists
    assert h.stub.Describe(pb.DescribeRequest(id="neighbour")).exists
    return {f"{pool.name()}/{vol.name()}" for pool in conn.listAllStoragePools(0) for vol in pool.listAllVolumes(0)}


def volumes(h: ProviderHarness, pool: str, *names: str) -> list[libvirt.virStorageVol]:
    found = h.backend.session.conn().storagePoolLookupByName(pool)  # type: ignore[attr-defined]
    return [found.createXML(VOLUME.format(name=name), 0) for name in names]


def test_delete_of_a_foreign_domain_keeps_a_volume_another_domain_names_by_pool_and_name(allowed: ProviderHarness) -> None:
    own, shared = volumes(allowed, "default", "own.qcow2", "shared.qcow2")
    neighbour = (
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source pool='default' volume='shared.qcow2'/><target dev='vda' bus='virtio'/></disk>"
    )
    left = delete_adopted(allowed, [own.path(), shared.path()], neighbour)
    assert "default/own.qcow2" not in left
    assert "default/shared.qcow2" in left


def test_delete_of_a_foreign_domain_keeps_a_volume_another_domain_names_through_a_symbolic_link(
    allowed: ProviderHarness, tmp_path: Path
) -> None:
    conn = allowed.backend.session.conn()  # type: ignore[attr-defined]
    where = tmp_path.resolve() / "pool"
    where.mkdir()
    conn.storagePoolCreateXML(f"<pool type='dir'><name>files</name><target><path>{where}</path></target></pool>", 0)
    own, shared = volumes(allowed, "files", "own.qcow2", "shared.qcow2")
    Path(shared.path()).write_bytes(b"")
    link = tmp_path / "elsewhere.qcow2"
    link.symlink_to(shared.path())
    left = delete_adopted(allowed, [own.path(), shared.path()], disk_xml(str(link), "raw"))
    assert "files/own.qcow2" not in left
    assert "files/shared.qcow2" in left


def test_delete_of_a_foreign_domain_keeps_a_volume_backing_an_overlay_in_another_pool(allowed: ProviderHarness) -> None:
    own, base = volumes(allowed, "default", "own.qcow2", "parent.qcow2")
    fast = allowed.backend.session.conn().storagePoolLookupByName("fast")  # type: ignore[attr-defined]
    overlay = VOLUME.format(name="child.qcow2").replace(
        "</volume>", f"<backingStore><path>{base.path()}</path><format type='qcow2'/></backingStore></volume>"
    )
    fast.createXML(overlay, 0)
    left = delete_adopted(allowed, [own.path(), base.path()], "")
    assert "default/own.qcow2" not in left
    assert {"default/parent.qcow2", "fast/child.qcow2"} <= left


def test_delete_of_a_foreign_domain_keeps_its_volumes_when_another_disk_cannot_be_resolved(allowed: ProviderHarness) -> None:
    """A qcow2 image outside any pool may be an overlay of any volume: while
    another domain uses one, no volume is removed."""
    (own,) = volumes(allowed, "default", "own.qcow2")
    left = delete_adopted(allowed, [own.path()], disk_xml("/elsewhere/overlay.qcow2", "qcow2"))
    assert "default/own.qcow2" in left


def test_delete_of_a_foreign_domain_keeps_its_volumes_in_pools_other_hosts_may_share(allowed: ProviderHarness) -> None:
    """Who else uses a volume on NFS is out of this host's sight."""
    conn = allowed.backend.session.conn()  # type: ignore[attr-defined]
    conn.storagePoolCreateXML(
        "<pool type='netfs'><name>nfs</name><source><host name='127.0.0.1'/><dir path='/export'/>"
        "<format type='nfs'/></source><target><path>/vmpt-nfs</path></target></pool>",
        0,
    )
    (own,) = volumes(allowed, "default", "own.qcow2")
    (on_nfs,) = volumes(allowed, "nfs", "data.qcow2")
    left = delete_adopted(allowed, [own.path(), on_nfs.path()], "")
    assert "default/own.qcow2" not in left
    assert "nfs/data.qcow2" in left


def disk_xml(path: str, fmt: str) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{path}'/>"
        "<target dev='vda' bus='virtio'/></disk>"
    )


# -- the real daemon ----------------------------------------------------------------


@pytest.fixture
def system(system_uri: str) -> Iterator[tuple[libvirt.virConnect, str]]:
    """A connection to the test bed's daemon and a name prefix; removes what it made."""
    conn = libvirt.open(system_uri)
    prefix = f"vmpt-adopt-{uuid.uuid4().hex[:6]}"
    try:
        yield conn, prefix
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        pool = conn.storagePoolLookupByName("default")
        for vol in pool.listAllVolumes(0):
            if vol.name().startswith(prefix):
                vol.delete(0)
        conn.close()


def test_a_domain_defined_behind_the_providers_back_is_managed_on_the_real_daemon(
    system: tuple[libvirt.virConnect, str],
) -> None:
    conn, prefix = system
    pool = conn.storagePoolLookupByName("default")
    own = pool.createXML(VOLUME.format(name=f"{prefix}-own.qcow2"), 0)
    shared = pool.createXML(VOLUME.format(name=f"{prefix}-shared.qcow2"), 0)
    name = f"{prefix}-legacy"
    conn.defineXML(domain_xml(name, [(own.path(), ""), (shared.path(), "")], kind="qemu"))
    conn.defineXML(domain_xml(f"{prefix}-other", [(shared.path(), "")], kind="qemu"))
    settings = {"uri": conn.getURI()}
    with ProviderHarness.for_backend("libvirt", settings) as refusing:
        (listed,) = [vm for vm in refusing.stub.ListVMs(pb.ListVMsRequest()).vms if vm.name == name]
        assert (listed.power_state, listed.provider_raw["managed"]) == ("Off", "false")
        with pytest.raises(grpc.RpcError) as err:
            refusing.stub.Power(pb.PowerRequest(id=listed.id, op=pb.POWER_OP_ON))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with ProviderHarness.for_backend("libvirt", settings, manage_foreign_vms=True) as h:
        vm = listed.id
        snap = h.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint="offline"))
        h.wait(snap.task)
        h.wait(h.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=120).task)
        assert h.stub.Describe(pb.DescribeRequest(id=vm)).power_state == "On"
        h.wait(h.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_OFF), timeout=120).task)
        h.wait(h.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps({"Class": {"CPU": 2}}))).task)
        h.wait(h.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=snap.snapshot_id)).task)
        h.wait(h.stub.Delete(pb.DeleteRequest(id=vm), timeout=120).task)
        assert not h.stub.Describe(pb.DescribeRequest(id=vm)).exists
    pool.refresh(0)
    left = {vol.name() for vol in pool.listAllVolumes(0)}
    assert f"{prefix}-own.qcow2" not in left
    assert f"{prefix}-shared.qcow2" in left  # the other domain still uses it
