"""Clones and image sources against a real libvirt daemon: linked and full
clones boot, carry a new cloud-init seed, and share bases safely; a VM
made from a downloaded image boots, and one made from a raw image or an ISO
gets it as a raw disk."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pycdlib
import pytest
from vm_provider_libvirt.cloudinit import build_nocloud_iso

from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import TaskFailed

pytestmark = pytest.mark.libvirtd

ON = pb.POWER_OP_ON
READY = "VMP-GUEST-READY"


def seed_files(path: str) -> dict[str, str]:
    """The files of a NoCloud ISO on this host, by name."""
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        out = {}
        for name in ("user-data", "meta-data", "network-config"):
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            out[name] = buf.getvalue().decode()
        return out
    finally:
        iso.close()


def disk_sources(host: Any, vm_id: str) -> dict[str, str]:
    details = json.loads(host.stub.Describe(pb.DescribeRequest(id=vm_id)).provider_raw_json)
    return {d["target"]: d["path"] for d in details["disks"]}


def backing(host: Any, path: str) -> str:
    vol = host.harness.backend.session.conn().storageVolLookupByPath(path)
    return ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path") or ""


@pytest.fixture(scope="module")
def source(real_host: Any) -> str:
    return real_host.create(
        "src",
        disks_json=[{"SizeGiB": 1, "Name": "data"}],
        networks_json=[{"NetworkName": "default"}],
        user_data=b"#cloud-config\nhostname: src\n",
        meta_data=b"instance-id: src-1\nlocal-hostname: src\n",
    )


def test_linked_and_full_clones_boot_with_their_own_identity(real_host: Any, source: str) -> None:
    stub = real_host.stub
    src_disks = disk_sources(real_host, source)
    full = stub.Clone(
        pb.CloneRequest(
            source_vm_id=source,
            target_name=real_host.name("full"),
            customize_json=json.dumps(
                {"hostname": "full-one", "networks": [{"ipAddress": "192.168.122.250", "subnetMask": "255.255.255.0"}]}
            ),
        )
    )
    assert full.task.id  # a full copy runs as a task
    real_host.harness.wait(full.task)
    linked = stub.Clone(pb.CloneRequest(source_vm_id=source, target_name=real_host.name("linked"), linked=True))
    assert not linked.task.id  # overlays take milliseconds

    full_disks, linked_disks = disk_sources(real_host, full.target_vm_id), disk_sources(real_host, linked.target_vm_id)
    assert backing(real_host, full_disks["vda"]) == ""  # flattened
    assert backing(real_host, linked_disks["vda"]) == src_disks["vda"]  # the source's old disk, now a frozen base
    assert backing(real_host, disk_sources(real_host, source)["vda"]) == src_disks["vda"]

    seed = seed_files(full_disks["sda"])
    assert 'local-hostname: "full-one"' in seed["meta-data"] or "local-hostname: full-one" in seed["meta-data"]
    assert "src-1" not in seed["meta-data"]  # a new instance-id: cloud-init runs again
    macs = [n.mac for n in next(vm for vm in stub.ListVMs(pb.ListVMsRequest()).vms if vm.id == full.target_vm_id).networks]
    network = json.loads(seed["network-config"])
    assert network["ethernets"]["nic0"]["match"]["macaddress"] == macs[0]
    assert network["ethernets"]["nic0"]["addresses"] == ["192.168.122.250/24"]
    linked_seed = seed_files(linked_disks["sda"])
    assert 'local-hostname: "vmpt-' in linked_seed["meta-data"] or real_host.name("linked") in linked_seed["meta-data"]

    for vm_id in (full.target_vm_id, linked.target_vm_id, source):
        assert real_host.power(vm_id, ON) == "On"
    for vm_id in (full.target_vm_id, linked.target_vm_id, source):
        real_host.wait_console(vm_id, READY)
    ips = {vm_id: real_host.wait_ips(vm_id) for vm_id in (full.target_vm_id, linked.target_vm_id, source)}
    assert len({tuple(v) for v in ips.values()}) == 3

    # Delete the source first: the base it shares with the linked clone stays until the clone goes too.
    base = src_disks["vda"]
    for vm_id in (source, linked.target_vm_id, full.target_vm_id):
        real_host.harness.wait(stub.Delete(pb.DeleteRequest(id=vm_id)).task)
        if vm_id == source:
            assert backing(real_host, linked_disks["vda"]) == base
    with pytest.raises(libvirt.libvirtError):
        real_host.harness.backend.session.conn().storageVolLookupByPath(base)


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[tuple[HttpSink, str]]:
    built = subprocess.run(
        ["bash", str(Path(__file__).resolve().parents[3] / "testbed" / "build-guest.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.copy(Path(built.stdout.strip().splitlines()[-1]) / "disk.qcow2", tmp_path / "disk.qcow2")
    digest = hashlib.sha256((tmp_path / "disk.qcow2").read_bytes()).hexdigest()
    with HttpSink(tmp_path) as sink:
        yield sink, digest


def test_create_from_a_downloaded_image_boots(real_host: Any, image_server: tuple[HttpSink, str]) -> None:
    sink, digest = image_server
    image = {"URL": sink.url("disk.qcow2"), "Checksum": digest, "Format": "qcow2"}
    conn = real_host.harness.backend.session.conn()
    cached = f"vmp-image-{digest[:16]}"
    try:
        vm_id = real_host.create("fromurl", image_json=image, class_json=real_host.guest_class())
        vda = disk_sources(real_host, vm_id)["vda"]
        assert backing(real_host, vda).endswith(cached)
        assert real_host.power(vm_id, ON) == "On"
        real_host.wait_console(vm_id, READY)
        real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
        assert conn.storagePoolLookupByName("default").storageVolLookupByName(cached)  # cached for the next VM
    finally:
        pool = conn.storagePoolLookupByName("default")
        try:
            pool.storageVolLookupByName(cached).delete(0)
        except libvirt.libvirtError:
            pass


@pytest.fixture
def plain_images(tmp_path: Path) -> Iterator[HttpSink]:
    """An HTTP server with a raw disk image (``disk.img``), an ISO
    (``tools.iso``) and a qcow2 image backed by /etc/shadow in disguise
    (``disguised.img``)."""
    built = subprocess.run(
        ["bash", str(Path(__file__).resolve().parents[3] / "testbed" / "build-guest.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    cache = Path(built.stdout.strip().splitlines()[-1])
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(cache / "disk.qcow2"), str(tmp_path / "disk.img")], check=True)
    (tmp_path / "tools.iso").write_bytes(build_nocloud_iso(b"#cloud-config\n", b"", None))
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(tmp_path / "disguised.img"), "16M"],
        check=True,
        capture_output=True,
    )
    with HttpSink(tmp_path) as sink:
        yield sink


@pytest.mark.parametrize(("path", "declared"), [("disk.img", "raw"), ("disk.img", ""), ("tools.iso", "iso")])
def test_a_downloaded_raw_or_iso_image_is_attached_as_raw(
    real_host: Any, plain_images: HttpSink, path: str, declared: str
) -> None:
    """Without a checksum the image becomes the VM's own volume in its own
    format: attaching it as qcow2 would make QEMU refuse to start."""
    image = {"URL": plain_images.url(path), **({"Format": declared} if declared else {})}
    suffix = f"url-{declared or 'probed'}"
    vm_id = real_host.create(suffix, image_json=image, class_json=real_host.guest_class())
    dom = real_host.harness.backend.session.lookup(vm_id)
    vda = next(d for d in ET.fromstring(dom.XMLDesc(0)).findall("devices/disk") if d.find("target").get("dev") == "vda")
    assert vda.find("driver").get("type") == "raw"
    volume = real_host.harness.backend.session.conn().storageVolLookupByPath(vda.find("source").get("file"))
    libvirt_format = ET.fromstring(volume.XMLDesc(0)).find("target/format").get("type")
    assert libvirt_format == ("iso" if declared == "iso" else "raw")  # libvirt's probe of the pool's files
    assert volume.name() == f"{real_host.name(suffix)}-vda.img"
    assert real_host.power(vm_id, ON) == "On"
    real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
    with pytest.raises(libvirt.libvirtError):
        real_host.harness.backend.session.conn().storageVolLookupByPath(volume.path())


def test_a_raw_image_in_disguise_is_refused(real_host: Any, plain_images: HttpSink) -> None:
    """Sent as raw, a qcow2 image backed by a host file would be stored raw,
    then listed by libvirt as qcow2 backed by /etc/shadow."""
    image = {"URL": plain_images.url("disguised.img"), "Format": "raw"}
    with pytest.raises(TaskFailed, match="given as raw but holds a qcow2 image"):
        real_host.create("disguised", image_json=image, class_json=real_host.guest_class())
    conn = real_host.harness.backend.session.conn()
    assert not [v for v in conn.storagePoolLookupByName("default").listAllVolumes(0) if "disguised" in v.name()]


def test_a_full_clone_of_a_raw_disk_is_read_in_the_copy_s_format(real_host: Any, plain_images: HttpSink) -> None:
    """A raw disk copied into a file pool becomes qcow2: the clone must
    attach it as qcow2, or the guest would see the qcow2 header as its disk
    and its writes would corrupt the image."""
    source = real_host.create("rawsrc", image_json={"URL": plain_images.url("disk.img"), "Format": "raw"})
    answer = real_host.stub.Clone(pb.CloneRequest(source_vm_id=source, target_name=real_host.name("rawclone"), linked=False))
    real_host.harness.wait(answer.task)
    conn = real_host.harness.backend.session.conn()
    for vm_id in (source, answer.target_vm_id):
        dom = real_host.harness.backend.session.lookup(vm_id)
        for disk in ET.fromstring(dom.XMLDesc(0)).findall("devices/disk[@device='disk']"):
            path = disk.find("source").get("file")
            held = json.loads(
                subprocess.run(
                    ["qemu-img", "info", "-U", "--output=json", path], capture_output=True, text=True, check=True
                ).stdout
            )
            assert disk.find("driver").get("type") == held["format"], (
                f"{vm_id} reads {path} ({held['format']}) as {disk.find('driver').get('type')}"
            )
            assert conn.storageVolLookupByPath(path)
    assert real_host.power(answer.target_vm_id, ON) == "On"
    for vm_id in (answer.target_vm_id, source):
        real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
