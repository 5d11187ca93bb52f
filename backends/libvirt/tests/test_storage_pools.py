"""Pool types this machine cannot run (LVM, zfs, RBD, Gluster, iSCSI), from
pool and volume XML recorded from libvirt's own sources
(``tests/data/storage``, see SOURCES.md there): what :mod:`storage` decides
from them, and that libvirt's own domain parser reads the disks it writes.
The refusals run through a real gRPC server on libvirt's test driver,
whose pools can be of any type."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import libvirt
import pytest
from vm_provider_libvirt import domxml, storage
from vm_provider_libvirt.domxml import DomainDisk, DomainPlan
from vm_provider_libvirt.marks import Mark

from provider_core.pb import provider_pb2 as pb
from provider_core.specs import VMImage
from provider_core.testing import ProviderHarness

DATA = Path(__file__).parent / "data" / "storage"
LUN = "iqn.2013-06.com.example:iscsi-pool-lun-1"


def pool(name: str) -> storage.PoolInfo:
    return storage.PoolInfo.from_xml((DATA / f"pool-{name}.xml").read_text())


def vol(name: str) -> str:
    return (DATA / f"vol-{name}.xml").read_text()


@pytest.mark.parametrize(
    ("kind", "formats", "sparse", "resize", "upload", "copy", "create"),
    [
        ("dir", ("qcow2", "raw"), True, True, True, True, True),
        ("fs", ("qcow2", "raw"), True, True, True, True, True),
        ("netfs", ("qcow2", "raw"), True, True, True, True, True),
        ("logical", ("raw",), False, False, True, True, True),
        ("disk", ("raw",), False, False, True, True, True),
        ("zfs", ("raw",), True, False, True, False, True),
        ("rbd", ("raw",), True, True, False, False, True),
        ("gluster", ("raw",), False, False, False, False, False),
        ("iscsi", ("raw",), False, False, True, False, False),
    ],
)
def test_what_each_pool_type_can_do(
    kind: str, formats: tuple[str, ...], sparse: bool, resize: bool, upload: bool, copy: bool, create: bool
) -> None:
    info = pool(kind)
    assert info.type == kind
    assert info.formats == formats
    assert info.volume_format("qcow2") == formats[0]
    assert (info.kind.sparse, info.kind.resize, info.kind.upload, info.kind.copy, info.kind.create) == (
        sparse,
        resize,
        upload,
        copy,
        create,
    )


def test_a_logical_volume_is_asked_for_fully_allocated() -> None:
    """allocation < capacity on a logical pool makes a snapshot LV that
    never grows (libvirt's formatstorage): volumes there are thick, and
    carry no <format> (an LV has none)."""
    xml = ET.fromstring(storage.volume_xml(pool("logical"), "vm-vda.img", 10 * storage.GIB, "raw"))
    assert xml.findtext("allocation") == xml.findtext("capacity") == str(10 * storage.GIB)
    assert xml.find("target/format") is None
    thin = ET.fromstring(storage.volume_xml(pool("dir"), "vm-vda.qcow2", storage.GIB, "qcow2"))
    assert (thin.findtext("allocation"), thin.find("target/format").get("type")) == ("0", "qcow2")  # type: ignore[union-attr]
    zvol = ET.fromstring(storage.volume_xml(pool("zfs"), "vm-vda.img", storage.GIB, "raw"))
    assert zvol.findtext("allocation") == "0"  # a thin zvol (zfs create -s)
    thick = ET.fromstring(storage.volume_xml(pool("dir"), "t.img", storage.GIB, "raw", preallocate=True))
    assert thick.findtext("allocation") == str(storage.GIB)


@pytest.mark.parametrize(
    ("pool_name", "vol_name", "disk_type", "source"),
    [
        ("dir", "file-qcow2", "file", {"file": "/var/lib/libvirt/images/OtherDemo.img"}),
        ("logical", "logical", "block", {"dev": "/dev/HostVG/Swap"}),
        ("disk", "partition", "block", {"dev": "/dev/sda1"}),
        ("zfs", "zfs", "block", {"dev": "/dev/zvol/testpool/vm1-vda.img"}),
        (
            "iscsi",
            "iscsi",
            "block",
            {"dev": "/dev/disk/by-path/ip-192.0.2.10:3260-iscsi-iqn.2013-06.com.example:iscsi-pool-lun-1"},
        ),
        ("rbd", "rbd", "network", {"protocol": "rbd", "name": "rbd/vm1-vda.img"}),
        ("gluster", "gluster", "network", {"protocol": "gluster", "name": "volume/sub/base.qcow2"}),
    ],
)
def test_how_each_volume_attaches(pool_name: str, vol_name: str, disk_type: str, source: dict[str, str]) -> None:
    src = storage.attach_xml(vol(vol_name), pool(pool_name))
    assert src.type == disk_type
    el = ET.Element("disk", type="file", device="disk")
    ET.SubElement(el, "driver", name="qemu", type="raw")
    ET.SubElement(el, "source", file="/old")
    ET.SubElement(el, "target", dev="vda", bus="virtio")
    src.write(el)
    assert el.get("type") == disk_type
    assert [c.tag for c in el][:2] == ["driver", "source"]
    assert el.find("source").attrib == source  # type: ignore[union-attr]


def test_an_rbd_disk_carries_the_pools_monitors_and_cephx_secret() -> None:
    src = storage.attach_xml(vol("rbd"), pool("rbd"))
    el = ET.Element("disk", device="disk")
    src.write(el)
    assert [(h.get("name"), h.get("port")) for h in el.findall("source/host")] == [("localhost", "6789"), ("localhost", "6790")]
    auth = el.find("auth")
    assert auth is not None
    assert auth.get("username") == "admin"
    secret = auth.find("secret")
    assert secret is not None
    assert (secret.get("type"), secret.get("uuid")) == ("ceph", "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87")


def test_formats_are_read_as_the_data_is_stored() -> None:
    # A partition's <format> is its partition type: the data is raw.
    assert storage.describe_xml(vol("partition"), pool("disk")).format == "raw"
    assert storage.describe_xml(vol("logical"), pool("logical")).format == "raw"
    # A Gluster volume is a file there, probed like one.
    assert storage.describe_xml(vol("gluster"), pool("gluster")).format == "qcow2"
    assert storage.describe_xml(vol("file-qcow2"), pool("dir")).format == "qcow2"


def test_a_directory_is_no_disk() -> None:
    with pytest.raises(Exception, match="is a directory"):
        storage.attach_xml(vol("gluster-dir"), pool("gluster"))


def test_libvirts_domain_parser_reads_the_disks_as_written() -> None:
    """The domain XML built for block and network volumes is valid for
    libvirt (its schema, checked with VIR_DOMAIN_DEFINE_VALIDATE) and means
    what was intended once libvirt has parsed it."""
    disks = []
    for i, (pool_name, vol_name) in enumerate([("logical", "logical"), ("rbd", "rbd"), ("gluster", "gluster")]):
        src = storage.attach_xml(vol(vol_name), pool(pool_name))
        disks.append(DomainDisk(target=f"vd{'abc'[i]}", path=src.path, format="raw", source_type=src.type, network=src.network))
    seed = storage.attach_xml(vol("partition"), pool("disk"))
    disks.append(
        DomainDisk(target="sda", path=seed.path, format="raw", device="cdrom", bus="sata", readonly=True, source_type=seed.type)
    )
    plan = DomainPlan(
        name="storage-kinds",
        uuid="5e2a9f3c-9d7b-4c59-9a49-5d1b8c7e0a11",
        domain_type="test",
        arch="x86_64",
        memory_mib=128,
        max_memory_mib=128,
        vcpus=1,
        max_vcpus=1,
        mark=Mark(),
        disks=tuple(disks),
    )
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXMLFlags(domxml.build(plan), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        try:
            root = ET.fromstring(dom.XMLDesc(0))
        finally:
            dom.undefine()
    finally:
        conn.close()
    by_target = {d.find("target").get("dev"): d for d in root.findall("devices/disk")}  # type: ignore[union-attr]
    assert by_target["vda"].get("type") == "block"
    assert by_target["vda"].find("source").get("dev") == "/dev/HostVG/Swap"  # type: ignore[union-attr]
    rbd = by_target["vdb"]
    assert (rbd.get("type"), rbd.find("source").get("protocol"), rbd.find("source").get("name")) == (  # type: ignore[union-attr]
        "network",
        "rbd",
        "rbd/vm1-vda.img",
    )
    assert len(rbd.findall("source/host")) == 2
    assert rbd.find(".//secret").get("uuid") == "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87"  # type: ignore[union-attr]
    gluster = by_target["vdc"]
    assert gluster.find("source").get("name") == "volume/sub/base.qcow2"  # type: ignore[union-attr]
    assert gluster.find("source/host").get("name") == "localhost"  # type: ignore[union-attr]
    assert by_target["sda"].get("type") == "block"
    assert by_target["sda"].get("device") == "cdrom"


# -- refusals through the provider, on the test driver's pools of these types -----------------


def define_pool(harness: ProviderHarness, name: str) -> str:
    """A pool of a recorded type in the provider's test-driver connection,
    named vmpt-<type> and started (the test driver starts any type)."""
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    root = ET.fromstring((DATA / f"pool-{name}.xml").read_text())
    root.find("name").text = f"vmpt-{name}"  # type: ignore[union-attr]
    if root.find("target") is None:
        ET.SubElement(ET.SubElement(root, "target"), "path").text = f"/vmpt-{name}"
    defined = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
    defined.create(0)
    return f"vmpt-{name}"


def create(harness: ProviderHarness, name: str, datastore: str, **fields: str) -> grpc.RpcError | pb.CreateResponse:
    request = pb.CreateRequest(name=name, placement_json=json.dumps({"Datastore": datastore}), **fields)  # type: ignore[arg-type]
    try:
        return harness.stub.Create(request)
    except grpc.RpcError as exc:
        return exc


def volume_names(harness: ProviderHarness) -> set[str]:
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    return {f"{p.name()}/{v.name()}" for p in conn.listAllStoragePools(0) if p.isActive() for v in p.listAllVolumes(0)}


def test_a_seed_for_an_rbd_pool_is_refused_before_anything_is_made(harness: ProviderHarness) -> None:
    rbd = define_pool(harness, "rbd")
    before = volume_names(harness)
    err = create(harness, "seeded", rbd, user_data=b"#cloud-config\n")
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "rbd pool" in (err.details() or "")
    assert "seed_pool" in (err.details() or "")
    assert volume_names(harness) == before
    # Without a seed, the VM's raw disks are made there.
    done = create(harness, "plain", rbd)
    assert isinstance(done, pb.CreateResponse)
    assert f"{rbd}/plain-vda.img" in volume_names(harness)


def test_the_seed_goes_to_the_seed_pool(test_uri: str) -> None:
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri, "seed_pool": "fast"}) as harness:
        rbd = define_pool(harness, "rbd")
        done = create(harness, "seeded", rbd, user_data=b"#cloud-config\n")
        assert isinstance(done, pb.CreateResponse)
        names = volume_names(harness)
        assert {f"{rbd}/seeded-vda.img", "fast/seeded-cidata.iso"} <= names
        dom = harness.backend.session.conn().lookupByName("seeded")  # type: ignore[attr-defined]
        cdrom = ET.fromstring(dom.XMLDesc(0)).find("devices/disk[@device='cdrom']")
        assert cdrom is not None
        assert cdrom.find("source").get("file", "").endswith("/seeded-cidata.iso")  # type: ignore[union-attr]
        harness.stub.Delete(pb.DeleteRequest(id=done.id))
        assert not {f"{rbd}/seeded-vda.img", "fast/seeded-cidata.iso"} & volume_names(harness)


def test_a_seed_pool_that_is_not_there_is_the_servers_problem(test_uri: str) -> None:
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri, "seed_pool": "nowhere"}) as harness:
        rbd = define_pool(harness, "rbd")
        err = create(harness, "seeded", rbd, user_data=b"#cloud-config\n")
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "seed_pool" in (err.details() or "")
        assert "nowhere" in (err.details() or "")


@pytest.mark.parametrize(("kind", "reason"), [("gluster", "cannot make volumes"), ("iscsi", "cannot make volumes")])
def test_pools_that_make_no_volumes_refuse_a_vm(harness: ProviderHarness, kind: str, reason: str) -> None:
    name = define_pool(harness, kind)
    err = create(harness, "nowhere", name)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason in (err.details() or "")
    assert f"{kind} pool" in (err.details() or "")


def test_a_disk_pool_refuses_a_vm_it_would_misname(harness: ProviderHarness) -> None:
    name = define_pool(harness, "disk")
    err = create(harness, "named", name)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "after their partitions" in (err.details() or "")


def test_an_image_url_is_refused_where_no_upload_goes(harness: ProviderHarness) -> None:
    """Said before the test driver's lack of streams: no host would help."""
    name = define_pool(harness, "rbd")
    image = json.dumps({"URL": "http://127.0.0.1:9/disk.qcow2"})
    err = create(harness, "fetched", name, image_json=image)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "image_json.URL" in (err.details() or "")
    assert "cannot write volume data" in (err.details() or "")


@pytest.mark.parametrize("kind", ["zfs", "rbd"])
def test_no_template_is_copied_where_libvirt_makes_no_copy(harness: ProviderHarness, kind: str) -> None:
    """zfs has no createXMLFrom; RBD's clones the target pool's image of the
    source's name (rbd_clone2), never the source's data: both refuse."""
    name = define_pool(harness, kind)
    err = create(harness, "copied", name, image_json=json.dumps({"Path": "/vmpt-pool/base.qcow2"}))
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot copy volumes" in (err.details() or "")
    assert f"{kind} pool" in (err.details() or "")
    assert not any(v.startswith(f"{name}/copied") for v in volume_names(harness))


def test_a_logical_pool_gets_raw_thick_disks(harness: ProviderHarness) -> None:
    name = define_pool(harness, "logical")
    done = create(harness, "lvm", name, disks_json=json.dumps([{"SizeGiB": 1}]))
    assert isinstance(done, pb.CreateResponse)
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    lv = conn.storagePoolLookupByName(name).storageVolLookupByName("lvm-vda.img")
    _, capacity, allocation = lv.info()
    assert capacity == allocation == storage.GIB


def test_a_disk_in_a_pool_that_cannot_resize_does_not_grow(harness: ProviderHarness) -> None:
    """Refused before any work, naming the pool type (libvirt's logical
    backend has no resizeVol). The test driver's volumes are files even in
    a pool called logical, so only the stopped VM's case is real here."""
    name = define_pool(harness, "logical")
    done = create(harness, "fixed", name, disks_json=json.dumps([{"SizeGiB": 1}]))
    assert isinstance(done, pb.CreateResponse)
    desired = json.dumps({"Disks": [{"SizeGiB": 2}], "Class": {"CPU": 2}})
    try:
        harness.stub.Reconfigure(pb.ReconfigureRequest(id=done.id, desired_json=desired))
    except grpc.RpcError as exc:
        err = exc
    else:
        pytest.fail("a disk of a logical pool grew")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "logical pool" in (err.details() or "")
    assert "Disks[0]" in (err.details() or "")
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    assert conn.lookupByName("fixed").info()[3] == 1, "nothing changed, the CPU count neither"


def test_validate_says_where_seeds_go(test_uri: str) -> None:
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri, "seed_pool": "fast"}) as harness:
        report = harness.stub.Validate(pb.ValidateRequest())
        assert report.ok, report.message
        assert "pool 'default' (dir)" in report.message
        assert "seeds in pool" not in report.message, "the pool takes its own seeds"
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri, "pool": "vmpt-rbd"}) as harness:
        define_pool(harness, "rbd")
        report = harness.stub.Validate(pb.ValidateRequest())
        assert report.ok, "VMs without cloud-init data work there"
        assert "set 'seed_pool'" in report.message
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri, "pool": "vmpt-rbd", "seed_pool": "nowhere"}) as harness:
        define_pool(harness, "rbd")
        report = harness.stub.Validate(pb.ValidateRequest())
        assert not report.ok
        assert "setting 'seed_pool'" in report.message


def test_a_linked_clone_of_a_vm_on_block_volumes_is_refused_whatever_the_datastore(harness: ProviderHarness) -> None:
    """The source of a linked clone goes on with a qcow2 overlay in its own
    disks' pool: on a logical pool that would be an LVM snapshot read as
    qcow2. A file-pool Datastore for the clone does not change that."""
    lvm = define_pool(harness, "logical")
    done = create(harness, "onlvm", lvm, disks_json=json.dumps([{"SizeGiB": 1}]))
    assert isinstance(done, pb.CreateResponse)
    harness.wait(done.task)
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    before_xml = conn.lookupByUUIDString(done.id).XMLDesc(0)
    before = volume_names(harness)
    request = pb.CloneRequest(
        source_vm_id=done.id, target_name="lnk", linked=True, placement_json=json.dumps({"Datastore": "default"})
    )
    with pytest.raises(grpc.RpcError) as err:
        harness.wait(harness.stub.Clone(request).task)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "logical pool" in (err.value.details() or "")
    assert volume_names(harness) == before
    assert conn.lookupByUUIDString(done.id).XMLDesc(0) == before_xml


# -- records of which image a volume holds ------------------------------------------------------

SHA = "ab" * 32


def test_a_source_record_vouches_for_its_volume_until_it_is_deleted(harness: ProviderHarness) -> None:
    """A volume recorded as holding an image is returned for that image's
    checksum without reading its bytes (the test driver keeps none: hashing
    them would fail); another checksum finds no record; deleting the volume
    drops its record, and a logical pool gets one as well."""
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    data = harness.backend.data  # type: ignore[attr-defined]
    for pool in (conn.storagePoolLookupByName("default"), conn.storagePoolLookupByName(define_pool(harness, "logical"))):
        before = {v.name() for v in pool.listAllVolumes(0)}
        vol = storage.create_blank(pool, "stored.img", 2**20, "raw")
        assert storage.record_source(pool, "stored.img", "sha256", SHA)
        assert storage.has_source(pool, "stored.img", "sha256", SHA)
        assert not storage.has_source(pool, "stored.img", "sha256", "cd" * 32)
        assert not storage.has_source(pool, "other.img", "sha256", SHA)
        assert data._existing(pool, "stored.img", SHA, "sha256").name() == "stored.img"
        assert storage.record_source(pool, "stored.img", "sha512", "ef" * 64)  # a new record replaces the old
        assert not storage.has_source(pool, "stored.img", "sha256", SHA)
        storage.delete(vol)
        assert {v.name() for v in pool.listAllVolumes(0)} == before


def test_a_stale_source_record_does_not_vouch_for_a_new_volume_of_its_name(harness: ProviderHarness) -> None:
    """A record outlives its volume when that is deleted outside the
    provider; a new volume made under the name (here ImagePrepare's copy of
    a pool volume) drops it."""
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    data = harness.backend.data  # type: ignore[attr-defined]
    pool = conn.storagePoolLookupByName("default")
    source = storage.create_blank(pool, "template.img", 2**20, "raw")
    gone = storage.create_blank(pool, "prepared.img", 2**20, "raw")
    try:
        assert storage.record_source(pool, "prepared.img", "sha256", SHA)
        gone.delete(0)  # as virsh vol-delete does: the record stays
        assert storage.has_source(pool, "prepared.img", "sha256", SHA)
        image = VMImage.model_validate({"Path": "default/template.img", "Checksum": "", "Format": "raw"})
        data._copy_volume(source, pool, "prepared.img", image)
        assert storage.lookup(pool, "prepared.img") is not None
        assert not storage.has_source(pool, "prepared.img", "sha256", SHA)
    finally:
        for name in ("prepared.img", "template.img"):
            made = storage.lookup(pool, name)
            if made is not None:
                storage.delete(made)


def test_a_disk_pool_records_no_source(harness: ProviderHarness) -> None:
    """A disk pool names volumes after their partitions: no record is made
    there (a retried download is then judged by the volume's bytes)."""
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    pool = conn.storagePoolLookupByName(define_pool(harness, "disk"))
    before = {v.name() for v in pool.listAllVolumes(0)}
    assert not storage.record_source(pool, "sda1", "sha256", SHA)
    assert {v.name() for v in pool.listAllVolumes(0)} == before


class _Unreadable:
    """A pool whose new copies cannot be read back: libvirt makes the copy
    (the test driver's real ``createXMLFrom``), then the first read of it
    fails as a daemon's would (fault injection; deleting it is real)."""

    def __init__(self, pool: libvirt.virStoragePool) -> None:
        self.pool = pool

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)

    def createXMLFrom(self, xml: str, source: libvirt.virStorageVol, flags: int) -> object:
        made = self.pool.createXMLFrom(xml, source, flags)

        class Vol:
            def __getattr__(self, name: str) -> object:
                return getattr(made, name)

            def XMLDesc(self, flags: int = 0) -> str:
                raise libvirt.libvirtError("the volume could not be read")

        return Vol()


def test_a_copy_that_cannot_be_read_back_is_deleted(harness: ProviderHarness) -> None:
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    pool = conn.storagePoolLookupByName("default")
    source = storage.create_blank(pool, "template.img", 2**20, "raw")
    try:
        with pytest.raises(libvirt.libvirtError, match="could not be read"):
            storage.copy(_Unreadable(pool), "copy.img", source, "raw")  # type: ignore[arg-type]
        assert storage.lookup(pool, "copy.img") is None
    finally:
        storage.delete(source)
