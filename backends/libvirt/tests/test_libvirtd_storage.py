"""Storage on the test bed's real libvirtd and QEMU.

Root disks from an image URL grown by DiskDefaults SizeGiB in the
``default`` dir pool: a raw image's volume is made at its final size up
front, a qcow2 one grown after its upload; the guest sees the new size.

Block volumes: a libvirt ``disk``
pool on a loop device (``losetup -P``), whose volumes are partitions
(``/dev/loopNp1``, ...), the block storage this machine has (it has no
device-mapper, so no LVM).

- A guest whose root disk and cloud-init seed are on partitions starts,
  and QEMU reads the seed: its disks are written by the backend's own
  pieces (``storage.copy`` into the raw-only pool, ``storage.attach``,
  ``domxml.build``), as ``<disk type='block'>``. QEMU's file driver
  refuses a block device, which the same guest with ``type='file'``
  shows.
- ImportDisk of a qcow2 image into the pool stores it converted to raw
  (a partition holds raw data only), its content unchanged.

A checksummed image downloaded again into the same volume of the dir pool
(a retry, Create's cached copy) gets the volume that holds it, converted
(vmdk to qcow2) or grown, through the record of its source.

Everything made is removed: domains, partitions, the pool, the loop device.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from vm_provider_libvirt import cloudinit, domxml, images, storage, streams
from vm_provider_libvirt.domxml import DomainDisk, DomainPlan
from vm_provider_libvirt.marks import Mark
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.testbed import libvirtd_uri

from provider_core import AlreadyExists
from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb
from provider_core.specs import VMImage

pytestmark = pytest.mark.libvirtd

MIB = 2**20
#: Where an ISO 9660 image keeps its volume identifier (primary volume descriptor, byte 40).
ISO_VOLUME_ID = 0x8000 + 40


@dataclass
class BlockPool:
    conn: libvirt.virConnect
    pool: libvirt.virStoragePool
    device: str

    @property
    def name(self) -> str:
        return str(self.pool.name())

    def next_partition(self) -> str:
        """The name libvirt's disk pool wants for the next partition
        (``loop0p<n>``: partitions are numbered in order, none is deleted)."""
        self.pool.refresh(0)
        return f"{Path(self.device).name}p{self.pool.numOfVolumes() + 1}"


@pytest.fixture(scope="module")
def block_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlockPool]:
    if shutil.which("losetup") is None or shutil.which("parted") is None:
        skip_missing("needs losetup and parted (testbed/install.sh)")
    backing = tmp_path_factory.mktemp("blockpool") / "disk.img"
    with backing.open("wb") as f:
        f.truncate(512 * MIB)
    made = subprocess.run(["losetup", "-f", "--show", "-P", str(backing)], capture_output=True, text=True, check=False)
    if made.returncode:
        skip_missing(f"no loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    conn = libvirt.open(libvirtd_uri())
    name = f"vmpt-blk-{uuid.uuid4().hex[:6]}"
    xml = (
        f"<pool type='disk'><name>{name}</name><source><device path='{device}'/><format type='gpt'/></source>"
        "<target><path>/dev</path></target></pool>"
    )
    pool = None
    try:
        pool = conn.storagePoolDefineXML(xml, 0)
        try:
            pool.build(libvirt.VIR_STORAGE_POOL_BUILD_OVERWRITE)
            pool.create(0)
        except libvirt.libvirtError as exc:  # no parted, no partition device nodes (a container)
            skip_missing(f"no disk pool on {device}: {exc.get_error_message()}")
        pool.refresh(0)  # the new label's free space
        yield BlockPool(conn, pool, device)
    finally:
        # libvirt 9 cannot delete a loop device's partitions (it runs
        # ``parted rm p1``): they go with the loop device.
        if pool is not None:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        conn.close()
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[HttpSink]:
    with HttpSink(tmp_path / "sink") as server:
        yield server


def wait_console(log: Path, text: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < end, f"no {text!r} on the console within {timeout}s"
        time.sleep(0.1)


def guest_domain(real_host: Any, name: str, disks: tuple[DomainDisk, ...]) -> str:
    """The test guest's domain XML (direct kernel boot, serial log) with these disks."""
    session = real_host.harness.backend.session
    boot: Path = real_host.boot
    logs: Path = real_host.logs
    plan = DomainPlan(
        name=name,
        uuid=str(uuid.uuid4()),
        domain_type=session.domain_type(),
        arch=session.host().arch,
        memory_mib=128,
        max_memory_mib=128,
        vcpus=1,
        max_vcpus=1,
        mark=Mark(),
        kernel=str(boot / "vmlinuz"),
        initrd=str(boot / "initrd.img"),
        cmdline="console=ttyS0 quiet",
        disks=disks,
        graphics="none",
        serial_log=str(logs / f"{name}.log"),
    )
    return domxml.build(plan)


def test_a_guest_starts_with_root_disk_and_seed_on_block_volumes(real_host: Any, block_pool: BlockPool) -> None:
    conn = block_pool.conn
    base = conn.storagePoolLookupByName("default").storageVolLookupByName(real_host.base)
    facts = storage.pool_info(block_pool.pool)
    assert facts.allocation(MIB) == MIB, "a partition is never asked for thin"
    # The qcow2 base copied into the raw-only pool, at a larger size up front.
    bigger = storage.describe(base).capacity + 64 * MIB
    root = storage.copy(block_pool.pool, block_pool.next_partition(), base, "qcow2", capacity=bigger)
    root_info = storage.describe(root)
    assert root_info.format == "raw"
    assert root_info.capacity >= bigger, "made at its final size: the pool cannot resize"
    iso = cloudinit.build_nocloud_iso(b"#cloud-config\n", b"", None, instance_id="iid-block", hostname="block")
    seed = block_pool.pool.createXML(storage.volume_xml(facts, block_pool.next_partition(), len(iso), "raw"), 0)
    streams.upload_bytes(conn, seed, iso)
    root_src, seed_src = storage.attach(root), storage.attach(seed)
    assert (root_src.type, seed_src.type) == ("block", "block")
    disks = (
        DomainDisk("vda", root_src.path, root_info.format, boot=True, bus="virtio", source_type=root_src.type),
        DomainDisk("sda", seed_src.path, "raw", device="cdrom", bus="sata", readonly=True, source_type=seed_src.type),
    )
    name = real_host.name("blockseed")
    log = real_host.logs / f"{name}.log"
    xml = guest_domain(real_host, name, disks)
    dom = conn.defineXML(xml)
    try:
        dom.create()
        wait_console(log, "VMP-GUEST-READY")
        assert "VMP-GUEST-DISKS vda" in log.read_text()
        assert dom.isActive()
        # QEMU opened the seed: libvirt reads the ISO's volume id through the domain's disk.
        assert dom.blockPeek("sda", ISO_VOLUME_ID, 6, 0) == b"cidata"
        live = ET.fromstring(dom.XMLDesc(0))
        kinds = {d.find("target").get("dev"): d.get("type") for d in live.findall("devices/disk")}  # type: ignore[union-attr]
        assert kinds == {"vda": "block", "sda": "block"}
        dom.destroy()
        # The same disks written as files: QEMU's file driver refuses a block device.
        as_files = ET.fromstring(xml)
        for el in as_files.findall("devices/disk"):
            source = el.find("source")
            assert source is not None
            el.set("type", "file")
            source.set("file", source.attrib.pop("dev"))
        dom = conn.defineXML(ET.tostring(as_files, encoding="unicode"))
        with pytest.raises(libvirt.libvirtError, match=r"regular file|block device|is not a"):
            dom.create()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_a_qcow2_image_imported_into_a_block_pool_is_stored_raw(real_host: Any, block_pool: BlockPool, sink: HttpSink) -> None:
    harness = real_host.harness
    conn = block_pool.conn
    base_path = conn.storagePoolLookupByName("default").storageVolLookupByName(real_host.base).path()
    sink.root.mkdir(parents=True, exist_ok=True)
    shutil.copy(base_path, sink.root / "golden.qcow2")
    name = block_pool.next_partition()
    resp = harness.stub.ImportDisk(
        pb.ImportDiskRequest(source_url=sink.url("golden.qcow2"), target_name=name, format="qcow2", storage_hint=block_pool.name),
        timeout=300,
    )
    harness.wait(resp.task)
    vol = block_pool.pool.storageVolLookupByName(name)
    assert vol.path() == f"/dev/{name}"
    assert storage.describe(vol).format == "raw"
    # The partition holds the image's data as raw, not a qcow2 header.
    assert images.info(vol.path(), fmt="raw")["format"] == "raw"
    with open(vol.path(), "rb") as f:
        assert f.read(4) != b"QFI\xfb"
    compared = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", str(sink.root / "golden.qcow2"), vol.path()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_root_disk_from_a_url_is_made_at_its_size(real_host: Any, sink: HttpSink, fmt: str) -> None:
    conn = real_host.harness.backend.session.conn()
    base = conn.storagePoolLookupByName("default").storageVolLookupByName(real_host.base)
    sink.root.mkdir(parents=True, exist_ok=True)
    image = sink.root / f"disk.{fmt}"
    images.convert(Path(base.path()), image, fmt, src_fmt="qcow2")
    vm_id = real_host.create(
        f"url-{fmt}",
        image_json={"URL": sink.url(image.name), "Format": fmt},
        class_json=real_host.guest_class(DiskDefaults={"SizeGiB": 1}),
    )
    dom = conn.lookupByUUIDString(vm_id)
    vda = next(d for d in domxml.disks(ET.fromstring(dom.XMLDesc(0))) if d.target == "vda")
    assert vda.format == fmt
    vol = conn.storageVolLookupByPath(vda.path)
    info = storage.describe(vol)
    assert info.capacity == storage.GIB
    assert info.allocation < 256 * MIB, "made sparse (a dir pool makes thin volumes)"
    assert images.info(vda.path, fmt=fmt)["virtual-size"] == storage.GIB
    real_host.harness.stub.Delete(pb.DeleteRequest(id=vm_id))


def test_a_url_image_for_a_bigger_root_disk_goes_into_a_block_pool_at_its_size(
    real_host: Any, block_pool: BlockPool, sink: HttpSink
) -> None:
    """Create's image download (``fetch_image``) into a pool that holds raw
    only and cannot resize: converted to raw and made at the disk's final
    size up front."""
    conn = block_pool.conn
    base = conn.storagePoolLookupByName("default").storageVolLookupByName(real_host.base)
    sink.root.mkdir(parents=True, exist_ok=True)
    shutil.copy(base.path(), sink.root / "cloud.qcow2")
    image = VMImage.model_validate({"URL": sink.url("cloud.qcow2"), "Format": "qcow2"})
    size = storage.describe(base).capacity + 32 * MIB
    session = real_host.harness.backend.session
    pool = session.conn().storagePoolLookupByName(block_pool.name)  # the provider's own connection
    vol = real_host.harness.backend.data.fetch_image(image, pool, block_pool.next_partition(), size)
    info = storage.describe(vol)
    assert (info.format, info.kind) == ("raw", libvirt.VIR_STORAGE_VOL_BLOCK)
    assert info.capacity >= size
    compared = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", str(sink.root / "cloud.qcow2"), vol.path()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr


@pytest.mark.parametrize("fmt", ["vmdk", "raw"])
def test_a_checksummed_image_fetched_again_returns_its_converted_or_grown_volume(
    real_host: Any, sink: HttpSink, fmt: str
) -> None:
    """A second download of the same checksummed image into the same volume
    (a retried ImportDisk or ImagePrepare, Create's cached copy
    ``vmp-image-<sha>``) returns the volume, though its bytes no longer hash
    to the image's checksum: a vmdk is stored as qcow2, a raw image grown to
    the disk's size. The same name for another image is still refused."""
    session = real_host.harness.backend.session
    conn = session.conn()
    pool = conn.storagePoolLookupByName("default")
    base = pool.storageVolLookupByName(real_host.base)
    sink.root.mkdir(parents=True, exist_ok=True)
    image = sink.root / f"cloud.{fmt}"
    images.convert(Path(base.path()), image, fmt, src_fmt="qcow2")
    checksum = hashlib.sha256(image.read_bytes()).hexdigest()
    spec = VMImage.model_validate({"URL": sink.url(image.name), "Format": fmt, "Checksum": checksum})
    size = storage.describe(base).capacity + 32 * MIB
    name = real_host.name(f"fetched-{fmt}")
    data = real_host.harness.backend.data
    try:
        first = data.fetch_image(spec, pool, name, size)
        assert storage.describe(first).format == ("qcow2" if fmt == "vmdk" else "raw")
        again = data.fetch_image(spec, pool, name, size)
        assert again.path() == first.path()
        (sink.root / "other.raw").write_bytes(b"\1" * MIB)
        foreign = VMImage.model_validate(
            {"URL": sink.url("other.raw"), "Format": "raw", "Checksum": hashlib.sha256(b"\1" * MIB).hexdigest()}
        )
        with pytest.raises(AlreadyExists):
            data.fetch_image(foreign, pool, name, size)
    finally:
        made = storage.lookup(pool, name)
        if made is not None:
            storage.delete(made)
    assert not storage.has_source(pool, name, "sha256", checksum), "deleting the volume drops its record"


def test_a_second_vm_from_a_checksummed_vmdk_url_shares_its_cached_copy(real_host: Any, sink: HttpSink) -> None:
    """Create from a checksummed vmdk URL caches it as qcow2
    (``vmp-image-<sha>``); a second VM from the same URL overlays the same
    cached copy, downloaded once. Deleting the VMs keeps the cache;
    deleting it drops its record."""
    conn = real_host.harness.backend.session.conn()
    pool = conn.storagePoolLookupByName("default")
    base = pool.storageVolLookupByName(real_host.base)
    sink.root.mkdir(parents=True, exist_ok=True)
    image = sink.root / "cloud.vmdk"
    images.convert(Path(base.path()), image, "vmdk", src_fmt="qcow2")
    checksum = hashlib.sha256(image.read_bytes()).hexdigest()
    cached = f"vmp-image-{checksum[:16]}"
    image_json = {"URL": sink.url(image.name), "Format": "vmdk", "Checksum": checksum}
    ids: list[str] = []
    try:
        for i in range(2):
            ids.append(real_host.create(f"vmdk-{i}", image_json=image_json))
        assert [r.method for r in sink.requests] == ["GET"], "downloaded once"
        backing = set()
        for vm_id in ids:
            dom = conn.lookupByUUIDString(vm_id)
            vda = next(d for d in domxml.disks(ET.fromstring(dom.XMLDesc(0))) if d.target == "vda")
            backing.add(storage.describe(conn.storageVolLookupByPath(vda.path)).backing_path)
        assert backing == {pool.storageVolLookupByName(cached).path()}
        assert storage.has_source(pool, cached, "sha256", checksum)
    finally:
        for vm_id in ids:
            real_host.harness.stub.Delete(pb.DeleteRequest(id=vm_id))
        kept = storage.lookup(pool, cached)
        if kept is not None:
            storage.delete(kept)
    assert not storage.has_source(pool, cached, "sha256", checksum)


def test_a_download_that_finds_its_volume_taken_keeps_the_record_of_the_one_that_took_it(real_host: Any, tmp_path: Path) -> None:
    """Two downloads of one image into one volume (two Creates from the same
    checksummed URL) both find no volume and download; the first stores and
    records it. The second, refused since the volume appeared meanwhile,
    leaves that record alone: without it, the stored (converted) volume
    would be refused as other content ever after."""
    conn = real_host.harness.backend.session.conn()
    data = real_host.harness.backend.data
    pool = conn.storagePoolLookupByName("default")
    name = real_host.name("taken")
    checksum = "ab" * 32
    vol = storage.create_blank(pool, name, MIB, "raw")  # the first download's, complete
    try:
        assert storage.record_source(pool, name, "sha256", checksum)
        image = tmp_path / "image.raw"
        image.write_bytes(b"\0" * MIB)
        with pytest.raises(AlreadyExists, match="meanwhile"):
            data._upload_volume(image, "raw", MIB, pool, name)
        assert storage.has_source(pool, name, "sha256", checksum)
    finally:
        storage.delete(vol)
    assert not storage.has_source(pool, name, "sha256", checksum)


def test_two_downloads_of_one_image_into_one_volume_at_once_share_it(real_host: Any, sink: HttpSink) -> None:
    """Two Creates from one checksummed vmdk URL at once fetch it into the
    same cached volume: the second waits for the first and gets its
    converted volume; the image is downloaded once."""
    pool = real_host.harness.backend.session.conn().storagePoolLookupByName("default")
    base = pool.storageVolLookupByName(real_host.base)
    sink.root.mkdir(parents=True, exist_ok=True)
    image = sink.root / "cloud.vmdk"
    images.convert(Path(base.path()), image, "vmdk", src_fmt="qcow2")
    checksum = hashlib.sha256(image.read_bytes()).hexdigest()
    spec = VMImage.model_validate({"URL": sink.url(image.name), "Format": "vmdk", "Checksum": checksum})
    name = real_host.name("at-once")
    data = real_host.harness.backend.data
    sink.delay = 0.5  # both start before either has stored it
    try:
        with ThreadPoolExecutor(2) as pool_of_two:
            got = list(pool_of_two.map(lambda _: data.fetch_image(spec, pool, name).path(), range(2)))
        assert got[0] == got[1] == pool.storageVolLookupByName(name).path()
        assert [r.method for r in sink.requests] == ["GET"], "downloaded once"
    finally:
        made = storage.lookup(pool, name)
        if made is not None:
            storage.delete(made)
