"""ExportDisk, ImportDisk and ImagePrepare end to end: a real vm-provider
server (ProviderHarness) on the libvirt backend, the real libvirt daemon
with QEMU (the test bed's own, started by ``testbed/libvirtd.sh start``), and
real HTTP and S3 servers on 127.0.0.1 (HttpSink, moto).

Domains and volumes are made here with libvirt-python itself, so these
tests depend on nothing but the data path; each test removes what it made.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import grpc
import libvirt
import pytest
from vm_provider_libvirt import images, storage
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.testbed import libvirtd_uri

from provider_core import urls
from provider_core.conformance.servers import HttpSink, S3Server
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness, TaskFailed

URI = libvirtd_uri()
POOL = "default"
BUCKET = "vmp-disk-exports"
MiB = 1 << 20
REPO = Path(__file__).resolve().parents[3]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    c = libvirt.open(URI)
    yield c
    c.close()


@pytest.fixture(scope="module")
def guest() -> Path:
    """The test bed's guest files (vmlinuz, initrd.img, disk.qcow2)."""
    out = subprocess.run(["bash", str(REPO / "testbed/build-guest.sh")], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        skip_missing(f"testbed/build-guest.sh failed: {out.stderr.strip()[-300:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    where = tmp_path / "scratch"
    where.mkdir()
    return where


@pytest.fixture
def provider(scratch: Path) -> Iterator[ProviderHarness]:
    with ProviderHarness.for_backend("libvirt", {"uri": URI, "pool": POOL, "download_dir": str(scratch)}) as h:
        yield h
    assert list(scratch.iterdir()) == [], "scratch files were left behind"


@pytest.fixture(params=["forced", "qemu+ext"])
def streaming(request: pytest.FixtureRequest, scratch: Path, tmp_path: Path) -> Iterator[ProviderHarness]:
    """A provider taking the remote daemon's data path (libvirt streams):
    on the local connection told to (``local_disks = False``), or over a
    link libvirt counts as remote (the ``relay`` fixture)."""
    uri = request.getfixturevalue("relay").uri if request.param == "qemu+ext" else URI
    with ProviderHarness.for_backend("libvirt", {"uri": uri, "pool": POOL, "download_dir": str(scratch)}) as h:
        if request.param == "forced":
            h.backend.data.local_disks = False  # type: ignore[attr-defined]
        yield h
    assert list(scratch.iterdir()) == [], "scratch files were left behind"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[HttpSink]:
    with HttpSink(tmp_path / "sink") as server:
        yield server


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with S3Server(BUCKET) as server:
        yield server.url


def _s3(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIATEST", aws_secret_access_key="x")


class Lab:
    """Volumes and domains made by one test, removed at its end."""

    def __init__(self, conn: libvirt.virConnect, guest: Path) -> None:
        self.conn = conn
        self.guest = guest
        self.pool = conn.storagePoolLookupByName(POOL)
        self.tag = f"vmp-dp-{uuid.uuid4().hex[:8]}"
        self.volumes: list[str] = []
        self.domains: list[libvirt.virDomain] = []

    def name(self, suffix: str) -> str:
        return f"{self.tag}-{suffix}"

    def track(self, volume: str) -> str:
        self.volumes.append(volume)
        return volume

    def volume(self, suffix: str, fmt: str = "qcow2", size: int = 64 * MiB, backing: str = "") -> str:
        """A new volume; returns its path."""
        name = self.track(self.name(suffix))
        back = f"<backingStore><path>{backing}</path><format type='qcow2'/></backingStore>" if backing else ""
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
            f"<target><format type='{fmt}'/></target>{back}</volume>"
        )
        return str(self.pool.createXML(xml, 0).path())

    def disk(self, suffix: str = "vda.qcow2", fmt: str = "qcow2") -> str:
        """A volume holding the test bed's disk image plus some patterned data."""
        path = self.volume(suffix, fmt)
        subprocess.run(["qemu-img", "convert", "-n", "-O", fmt, str(self.guest / "disk.qcow2"), path], check=True)
        _qemu_io(path, fmt, "write -P 0x5a 8M 3M", "write -P 0xa5 50M 512k")
        return path

    def domain(self, disk: str, fmt: str = "qcow2", start: bool = False) -> libvirt.virDomain:
        xml = f"""<domain type='qemu'>
          <name>{self.name("vm")}</name>
          <memory unit='MiB'>128</memory><vcpu>1</vcpu>
          <os><type arch='x86_64'>hvm</type><kernel>{self.guest / "vmlinuz"}</kernel>
            <initrd>{self.guest / "initrd.img"}</initrd><cmdline>console=ttyS0 quiet</cmdline></os>
          <features><acpi/></features>
          <devices>
            <disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{disk}'/>
              <target dev='vda' bus='virtio'/></disk>
            <serial type='pty'/><console type='pty'/>
          </devices></domain>"""
        dom = self.conn.defineXML(xml)
        self.domains.append(dom)
        if start:
            dom.create()
        return dom

    def find(self, name: str) -> libvirt.virStorageVol | None:
        self.pool.refresh(0)
        try:
            return self.pool.storageVolLookupByName(name)
        except libvirt.libvirtError:
            return None

    def cleanup(self) -> None:
        for dom in self.domains:
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            except libvirt.libvirtError:
                pass
        for name in reversed(self.volumes):
            vol = self.find(name)
            if vol is not None:
                storage.delete(vol)  # with the record of its source


@pytest.fixture
def lab(conn: libvirt.virConnect, guest: Path) -> Iterator[Lab]:
    made = Lab(conn, guest)
    yield made
    made.cleanup()


def _qemu_io(path: str, fmt: str, *commands: str) -> None:
    args = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, path], check=True, capture_output=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _same_content(a: str | Path, b: str | Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, check=False).returncode == 0


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details()


def _export(h: ProviderHarness, vm_id: str, url: str, fmt: str = "qcow2", **kw: Any) -> pb.ExportDiskResponse:
    resp: pb.ExportDiskResponse = h.stub.ExportDisk(
        pb.ExportDiskRequest(vm_id=vm_id, destination_url=url, format=fmt, **kw), timeout=300
    )
    return resp


# -- ExportDisk ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "compress"),
    [("qcow2", False), ("qcow2", True), ("raw", False), ("vmdk", False), ("vmdk", True)],
)
@pytest.mark.libvirtd
def test_export_to_http(provider: ProviderHarness, lab: Lab, sink: HttpSink, fmt: str, compress: bool) -> None:
    disk = lab.disk()
    dom = lab.domain(disk)
    resp = _export(provider, dom.UUIDString(), sink.url(f"exports/vm.{fmt}"), fmt, compress=compress)
    received = sink.root / f"exports/vm.{fmt}"
    assert not resp.task.id, "the export should finish within the deadline"
    assert resp.export_id
    assert resp.checksum == _sha256(received)
    assert resp.estimated_size_bytes == received.stat().st_size
    assert (sink.root / f"exports/vm.{fmt}.sha256").read_text() == f"{resp.checksum}  vm.{fmt}\n"
    meta = images.inspect(received, fmt)
    assert images.check(received, fmt).ok
    assert _same_content(disk, received)
    if fmt == "vmdk":
        assert meta["format-specific"]["data"]["create-type"] == ("streamOptimized" if compress else "monolithicSparse")
    if fmt == "qcow2" and compress:
        assert meta["format-specific"]["data"]["compression-type"] == "zstd"


@pytest.mark.libvirtd
def test_a_long_export_is_a_task_and_leaves_its_checksum_beside(provider: ProviderHarness, lab: Lab, sink: HttpSink) -> None:
    dom = lab.domain(lab.disk())
    sink.delay = 1.5  # longer than the call's deadline allows the export (2.2 s minus the core's 2 s margin)
    resp = provider.stub.ExportDisk(
        pb.ExportDiskRequest(vm_id=dom.UUIDString(), destination_url=sink.url("slow.qcow2"), format="qcow2"), timeout=2.2
    )
    assert resp.task.id
    assert not resp.checksum
    assert resp.estimated_size_bytes > 0
    provider.wait(resp.task)
    assert (sink.root / "slow.qcow2.sha256").read_text() == f"{_sha256(sink.root / 'slow.qcow2')}  slow.qcow2\n"


@pytest.mark.libvirtd
def test_export_a_raw_disk_as_raw_streams_it_unchanged(provider: ProviderHarness, lab: Lab, sink: HttpSink) -> None:
    disk = lab.disk("vda.img", "raw")
    dom = lab.domain(disk, "raw")
    signed = sink.url("vm.raw") + "?X-Amz-Signature=0123abcd&X-Amz-Expires=600"
    resp = _export(provider, dom.name(), signed, "raw")
    assert resp.checksum == _sha256(Path(disk)) == _sha256(sink.root / "vm.raw")
    assert sink.requests[-1].query.startswith("X-Amz-Signature=")
    assert not (sink.root / "vm.raw.sha256").exists(), "a presigned URL signs only its own object"


@pytest.mark.libvirtd
@pytest.mark.parametrize(("fmt", "compress"), [("qcow2", True), ("raw", False), ("vmdk", True)])
def test_export_to_s3(provider: ProviderHarness, lab: Lab, s3_url: str, tmp_path: Path, fmt: str, compress: bool) -> None:
    disk = lab.disk()
    dom = lab.domain(disk)
    key = f"{lab.tag}/disk.{fmt}"
    creds = {"access_key_id": "AKIATEST", "secret_access_key": "s3-secret", "endpoint_url": s3_url, "region": "us-east-1"}
    resp = _export(provider, dom.UUIDString(), f"s3://{BUCKET}/{key}", fmt, compress=compress, credentials=creds)
    received = tmp_path / f"from-s3.{fmt}"
    _s3(s3_url).download_file(BUCKET, key, str(received))
    assert resp.checksum == _sha256(received)
    sidecar = _s3(s3_url).get_object(Bucket=BUCKET, Key=f"{key}.sha256")["Body"].read()
    assert sidecar == f"{resp.checksum}  disk.{fmt}\n".encode()
    assert images.check(received, fmt).ok
    assert _same_content(disk, received)


@pytest.mark.libvirtd
def test_export_while_the_vm_runs(provider: ProviderHarness, lab: Lab, sink: HttpSink, tmp_path: Path) -> None:
    disk = lab.disk()
    dom = lab.domain(disk, start=True)
    assert dom.isActive()
    resp = _export(provider, dom.UUIDString(), sink.url("running.qcow2"), "qcow2", compress=True)
    assert resp.checksum == _sha256(sink.root / "running.qcow2")
    assert images.check(sink.root / "running.qcow2", "qcow2").ok
    assert _same_content(disk, sink.root / "running.qcow2")

    dom.snapshotCreateXML("<domainsnapshot><name>live</name></domainsnapshot>", 0)  # internal, with memory
    assert dom.isActive()
    resp = _export(provider, dom.UUIDString(), sink.url("live.raw"), "raw", snapshot_id="live")
    assert resp.checksum == _sha256(sink.root / "live.raw")
    assert _same_content(sink.root / "running.qcow2", sink.root / "live.raw")


@pytest.mark.libvirtd
def test_export_a_snapshot(provider: ProviderHarness, lab: Lab, sink: HttpSink, tmp_path: Path) -> None:
    disk = lab.disk()
    dom = lab.domain(disk)
    before = tmp_path / "before.qcow2"
    shutil.copy(disk, before)
    dom.snapshotCreateXML("<domainsnapshot><name>before-upgrade</name></domainsnapshot>", 0)
    _qemu_io(disk, "qcow2", "write -P 0x77 8M 1M")
    resp = _export(provider, dom.UUIDString(), sink.url("snap.raw"), "raw", snapshot_id="before-upgrade")
    assert _same_content(before, sink.root / "snap.raw")
    assert not _same_content(disk, sink.root / "snap.raw")
    assert resp.checksum == _sha256(sink.root / "snap.raw")
    code, details = _code(lambda: _export(provider, dom.UUIDString(), sink.url("x.raw"), "raw", snapshot_id="no-such"))
    assert code == grpc.StatusCode.NOT_FOUND, details


@pytest.mark.libvirtd
def test_export_flattens_a_linked_clone(provider: ProviderHarness, lab: Lab, sink: HttpSink) -> None:
    base = lab.disk("base.qcow2")
    overlay = lab.volume("vda.qcow2", backing=base)
    _qemu_io(overlay, "qcow2", "write -P 0x33 20M 1M")
    dom = lab.domain(overlay)
    _export(provider, dom.UUIDString(), sink.url("flat.qcow2"))
    received = sink.root / "flat.qcow2"
    assert "backing-filename" not in images.info(received)
    assert _same_content(overlay, received)


@pytest.mark.libvirtd
def test_export_through_libvirt_streams(
    streaming: ProviderHarness, lab: Lab, sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """The path for a remote libvirtd: the disk and its backing chain come
    through ``vol.download`` instead of being read from their paths."""
    base = lab.disk("base.qcow2")
    overlay = lab.volume("vda.qcow2", backing=base)
    _qemu_io(overlay, "qcow2", "write -P 0x44 30M 1M")
    dom = lab.domain(overlay)
    caplog.set_level(logging.INFO, logger="vm_provider_libvirt")
    resp = _export(streaming, dom.UUIDString(), sink.url("remote.vmdk"), "vmdk")
    streamed = [r.getMessage() for r in caplog.records if "through a stream" in r.getMessage()]
    assert streamed == [f"copying {overlay} from libvirtd through a stream", f"copying {base} from libvirtd through a stream"]
    assert _same_content(overlay, sink.root / "remote.vmdk")
    assert resp.checksum == _sha256(sink.root / "remote.vmdk")


@pytest.mark.libvirtd
def test_a_disk_this_process_cannot_read_is_streamed_from_libvirt(
    provider: ProviderHarness, lab: Lab, sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """A local daemon whose disk files the provider cannot read (it runs as
    another user; here: a pool in the daemon's private /var/lib/libvirt,
    which this process does not even see) gets the remote data path for
    them; a file outside any pool that it cannot read is FAILED_PRECONDITION."""
    base = lab.disk("base.qcow2")
    name = lab.name("hidden")
    hidden = lab.conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name}</name><target><path>/var/lib/libvirt/{name}</path></target></pool>", 0
    )
    try:
        hidden.build(0)
        hidden.create(0)
        overlay = hidden.createXML(
            f"<volume><name>vda.qcow2</name><capacity unit='bytes'>{64 * MiB}</capacity><target><format type='qcow2'/>"
            f"</target><backingStore><path>{base}</path><format type='qcow2'/></backingStore></volume>",
            0,
        )
        top = overlay.path()
        assert not Path(top).exists()  # not from here
        dom = lab.domain(top)
        caplog.set_level(logging.INFO, logger="vm_provider_libvirt")
        resp = _export(provider, dom.UUIDString(), sink.url("hidden.qcow2"))
        streamed = [r.getMessage() for r in caplog.records if "through a stream" in r.getMessage()]
        assert streamed == [
            f"copying {overlay.path()} from libvirtd through a stream",
            f"copying {base} from libvirtd through a stream",
        ]
        assert _same_content(base, sink.root / "hidden.qcow2")
        assert resp.checksum == _sha256(sink.root / "hidden.qcow2")
        # The same file once its pool is stopped: no volume libvirt could stream.
        hidden.destroy()
        code, details = _code(lambda: _export(provider, dom.UUIDString(), sink.url("gone.qcow2")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"cannot read {top}" in details
        assert "no volume of an active storage pool" in details
    finally:
        for dom in lab.domains:
            dom.undefineFlags(0)
        lab.domains.clear()
        if not hidden.isActive():
            hidden.create(0)
        for vol in hidden.listAllVolumes(0):
            vol.delete(0)
        hidden.destroy()
        hidden.delete(0)
        hidden.undefine()


@pytest.mark.libvirtd
def test_export_failures(provider: ProviderHarness, lab: Lab, sink: HttpSink) -> None:
    dom = lab.domain(lab.disk())
    vm = dom.UUIDString()
    sink.fail("denied.qcow2", 403)
    cases = [
        (lambda: _export(provider, vm, sink.url("denied.qcow2")), grpc.StatusCode.PERMISSION_DENIED),
        (lambda: _export(provider, str(uuid.uuid4()), sink.url("x.qcow2")), grpc.StatusCode.NOT_FOUND),
        (lambda: _export(provider, vm, sink.url("x.qcow2"), disk_id="vdz"), grpc.StatusCode.NOT_FOUND),
        (lambda: _export(provider, vm, sink.url("x.raw"), "raw", compress=True), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: _export(provider, vm, "ftp://127.0.0.1/x.qcow2"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: _export(provider, vm, sink.url("x.qcow2"), credentials={"aws_key": "k"}), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, want in cases:
        code, details = _code(call)
        assert code == want, details
    assert sorted(p.name for p in sink.root.rglob("*")) == [], "nothing reaches the sink when an export fails"


# -- ImportDisk ------------------------------------------------------------------------------


def _import(h: ProviderHarness, url: str, name: str, fmt: str = "qcow2", **kw: Any) -> pb.ImportDiskResponse:
    kw.setdefault("storage_hint", POOL)
    resp: pb.ImportDiskResponse = h.stub.ImportDisk(
        pb.ImportDiskRequest(source_url=url, target_name=name, format=fmt, **kw), timeout=300
    )
    return resp


@pytest.mark.libvirtd
def test_import_from_http_verifies_and_stores(provider: ProviderHarness, lab: Lab, sink: HttpSink, guest: Path) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    shutil.copy(guest / "disk.qcow2", sink.root / "golden.qcow2")
    want = _sha256(sink.root / "golden.qcow2")
    name = lab.track(lab.name("imported.qcow2"))
    resp = _import(provider, sink.url("golden.qcow2"), name, verify_checksum=True, expected_checksum=want)
    assert not resp.task.id
    assert resp.disk_id == f"{POOL}/{name}"
    assert resp.checksum == want
    vol = lab.find(name)
    assert vol is not None
    assert resp.path == vol.path()
    assert resp.actual_size_bytes == vol.info()[2]
    assert _sha256(Path(vol.path())) == want
    assert "<format type='qcow2'/>" in vol.XMLDesc(0)
    again = _import(provider, sink.url("golden.qcow2"), name, verify_checksum=True, expected_checksum=want)
    assert (again.disk_id, again.checksum) == (resp.disk_id, want)
    code, details = _code(lambda: _import(provider, sink.url("golden.qcow2"), name))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    assert "set verify_checksum" in details
    code, details = _code(
        lambda: _import(provider, sink.url("other.qcow2"), name, verify_checksum=True, expected_checksum="cd" * 32)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    assert [r.method for r in sink.requests] == ["GET"], "only the first import downloads"


@pytest.mark.libvirtd
def test_import_with_a_wrong_checksum_leaves_no_volume(provider: ProviderHarness, lab: Lab, sink: HttpSink, guest: Path) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    shutil.copy(guest / "disk.qcow2", sink.root / "golden.qcow2")
    name = lab.track(lab.name("bad.qcow2"))
    code, details = _code(
        lambda: _import(provider, sink.url("golden.qcow2"), name, verify_checksum=True, expected_checksum="ab" * 32)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not the expected" in details
    assert lab.find(name) is None


@pytest.mark.libvirtd
@pytest.mark.parametrize(("fmt", "refusal"), [("qcow2", "backing file"), ("raw", "given as raw but holds a qcow2 image")])
def test_import_refuses_an_image_reading_host_files(
    provider: ProviderHarness, lab: Lab, sink: HttpSink, fmt: str, refusal: str
) -> None:
    """Also when it is sent as raw: libvirt would probe the stored file and
    list it as a qcow2 volume backed by /etc/shadow."""
    sink.root.mkdir(parents=True, exist_ok=True)
    evil = sink.root / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(evil), "16M"], check=True)
    name = lab.track(lab.name(f"evil.{fmt}"))
    code, details = _code(lambda: _import(provider, sink.url("evil.qcow2"), name, fmt))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal in details
    assert lab.find(name) is None


@pytest.mark.libvirtd
def test_import_a_vmdk_stores_qcow2(provider: ProviderHarness, lab: Lab, sink: HttpSink, guest: Path) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    images.convert(guest / "disk.qcow2", sink.root / "disk.vmdk", "vmdk", compress=True)
    name = lab.track(lab.name("from-vmdk"))
    resp = _import(provider, sink.url("disk.vmdk"), name, "vmdk")
    assert resp.checksum == _sha256(sink.root / "disk.vmdk")
    assert images.info(resp.path)["format"] == "qcow2"
    assert _same_content(guest / "disk.qcow2", resp.path)
    # A retry verifying the vmdk's checksum gets the stored qcow2, whose bytes differ.
    again = _import(provider, sink.url("disk.vmdk"), name, "vmdk", verify_checksum=True, expected_checksum=resp.checksum)
    assert (again.disk_id, again.path, again.checksum) == (resp.disk_id, resp.path, resp.checksum)
    assert [r.method for r in sink.requests] == ["GET"], "only the first import downloads"


@pytest.mark.libvirtd
def test_import_from_s3(provider: ProviderHarness, lab: Lab, s3_url: str, guest: Path) -> None:
    key = f"{lab.tag}/disk.qcow2"
    _s3(s3_url).upload_file(str(guest / "disk.qcow2"), BUCKET, key)
    name = lab.track(lab.name("from-s3.qcow2"))
    creds = {"access_key_id": "AKIATEST", "secret_access_key": "s3-secret", "endpoint_url": s3_url}
    want = _sha256(guest / "disk.qcow2")
    resp = _import(provider, f"s3://{BUCKET}/{key}", name, credentials=creds, verify_checksum=True, expected_checksum=want)
    assert resp.checksum == want
    assert _same_content(guest / "disk.qcow2", resp.path)


@pytest.mark.libvirtd
def test_import_through_libvirt_streams(
    streaming: ProviderHarness, lab: Lab, sink: HttpSink, guest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    shutil.copy(guest / "disk.qcow2", sink.root / "golden.qcow2")
    want = _sha256(sink.root / "golden.qcow2")
    name = lab.track(lab.name("streamed.qcow2"))
    caplog.set_level(logging.INFO, logger="vm_provider_libvirt")
    _import(streaming, sink.url("golden.qcow2"), name, verify_checksum=True, expected_checksum=want)
    assert not any("hashing" in r.getMessage() for r in caplog.records)
    # A volume with no record of its source (stored by an older version) is judged by its bytes.
    storage.forget_source(lab.pool, name)
    again = _import(streaming, sink.url("golden.qcow2"), name, verify_checksum=True, expected_checksum=want)
    assert again.checksum == want
    assert f"hashing volume {name} through a libvirt stream" in caplog.messages
    vol = lab.find(name)
    assert vol is not None
    assert _sha256(Path(vol.path())) == want


# -- ImagePrepare ------------------------------------------------------------------------------

SMALL_VM = '{"CPU": 1, "MemoryMiB": 128}'


def _prepare(h: ProviderHarness, image_json: str, name: str, storage_hint: str = POOL) -> pb.ImagePrepareResponse:
    request = pb.ImagePrepareRequest(image_json=image_json, target_name=name, storage_hint=storage_hint)
    resp: pb.ImagePrepareResponse = h.stub.ImagePrepare(request, timeout=60)
    return resp


@pytest.mark.libvirtd
def test_image_prepare_from_a_url_is_a_task(provider: ProviderHarness, lab: Lab, sink: HttpSink, guest: Path) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    shutil.copy(guest / "disk.qcow2", sink.root / "cloud.qcow2")
    want = _sha256(sink.root / "cloud.qcow2")
    name = lab.track(lab.name("image.qcow2"))
    image = f'{{"URL": "{sink.url("cloud.qcow2")}", "Checksum": "{want}", "Format": "qcow2"}}'
    resp = _prepare(provider, image, name)
    assert resp.task.id, "ImagePrepare from a URL runs as a task"
    assert resp.prepared_image_id == f"{POOL}/{name}", "known before the task ends"
    provider.wait(resp.task)
    vol = lab.find(name)
    assert vol is not None
    assert resp.prepared_image_path == vol.path()
    assert _sha256(Path(vol.path())) == want
    # given back as a client does: the id as TemplateName, the path as Path
    for n, image_json in enumerate(
        (f'{{"TemplateName": "{resp.prepared_image_id}"}}', f'{{"Path": "{resp.prepared_image_path}"}}')
    ):
        request = pb.CreateRequest(name=lab.name(f"from-prepared-{n}"), image_json=image_json, class_json=SMALL_VM)
        vm = provider.stub.Create(request, timeout=60)
        try:
            provider.wait(vm.task)
            assert provider.stub.Describe(pb.DescribeRequest(id=vm.id)).exists
        finally:
            provider.wait(provider.stub.Delete(pb.DeleteRequest(id=vm.id), timeout=60).task)
    provider.wait(_prepare(provider, image, name).task)  # already there: succeeds again
    assert [r.method for r in sink.requests] == ["GET"], "the second prepare should not download again"


@pytest.mark.libvirtd
def test_image_prepare_with_a_wrong_checksum_fails_the_task(
    provider: ProviderHarness, lab: Lab, sink: HttpSink, guest: Path
) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    shutil.copy(guest / "disk.qcow2", sink.root / "cloud.qcow2")
    name = lab.track(lab.name("wrong.qcow2"))
    image = f'{{"URL": "{sink.url("cloud.qcow2")}", "Checksum": "{"0" * 128}", "ChecksumType": "sha512"}}'
    with pytest.raises(TaskFailed, match=r"image_json\.Checksum"):
        provider.wait(_prepare(provider, image, name).task)
    assert lab.find(name) is None


@pytest.mark.libvirtd
def test_image_prepare_copies_a_template(provider: ProviderHarness, lab: Lab) -> None:
    base = lab.disk("template.qcow2")
    name = lab.track(lab.name("copy.qcow2"))
    provider.wait(_prepare(provider, f'{{"TemplateName": "{Path(base).name}"}}', name).task)
    vol = lab.find(name)
    assert vol is not None
    assert _same_content(base, vol.path())
    provider.wait(_prepare(provider, f'{{"Path": "{base}"}}', name).task)  # idempotent
    code, _ = _code(lambda: _prepare(provider, '{"TemplateName": "no-such-template"}', lab.name("x")))
    assert code == grpc.StatusCode.NOT_FOUND


# -- the test driver ----------------------------------------------------------------------------


def test_the_test_driver_offers_no_data_path() -> None:
    """libvirt's test driver keeps no disk bytes: ExportDisk, ImportDisk and
    ImagePrepare are not offered there, and the core refuses them naming the
    capability before the backend is asked."""
    with ProviderHarness.for_backend("libvirt", {"uri": "test:///default"}) as h:
        for call, capability in (
            (lambda: _export(h, "test", "http://127.0.0.1:9/x.qcow2"), "disk_export"),
            (lambda: _import(h, "http://127.0.0.1:9/x.qcow2", "x", storage_hint="default-pool"), "disk_import"),
            (lambda: _prepare(h, '{"URL": "http://127.0.0.1:9/x.qcow2"}', "x", storage_hint="default-pool"), "image_prepare"),
            (lambda: _prepare(h, '{"TemplateName": "golden.img"}', "copy.img", storage_hint="default-pool"), "image_prepare"),
        ):
            code, details = _code(call)
            assert code == grpc.StatusCode.UNIMPLEMENTED, details
            assert f"capability {capability!r}" in details


def test_downloads_take_turns_per_endpoint_not_across_endpoints() -> None:
    """The lock that makes downloads into one volume take turns belongs to
    a backend instance: a second endpoint served by the same process (or a
    test's) does not wait for the first one's download."""
    key = ("a-pool-uuid", "golden.qcow2")
    with (
        ProviderHarness.for_backend("libvirt", {"uri": "test:///default"}) as one,
        ProviderHarness.for_backend("libvirt", {"uri": "test:///default"}) as two,
    ):
        first, second = one.backend.data.stores, two.backend.data.stores  # type: ignore[attr-defined]

        def download_elsewhere() -> None:
            with second.hold(key):
                pass

        with first.hold(key):
            elsewhere = threading.Thread(target=download_elsewhere)
            elsewhere.start()
            elsewhere.join(10)
            assert not elsewhere.is_alive(), "the other endpoint waited for this one's download"
            assert first.users(key) == 1


@pytest.mark.libvirtd
def test_export_then_import_through_a_claim(lab: Lab, scratch: Path, tmp_path: Path) -> None:
    """VirtRigaud's pvc staging: the claim is a directory mounted into the
    provider; the export lands at <pvc_root>/<claim>/<path>, and the import
    reads it back into a new volume with the same content."""
    claims = tmp_path / "claims"
    (claims / "mig-claim").mkdir(parents=True)
    disk = lab.disk()
    dom = lab.domain(disk)
    url = "pvc://mig-claim/vmmigrations/ns1/move/export.qcow2"
    settings = {"uri": URI, "pool": POOL, "download_dir": str(scratch)}
    try:
        with ProviderHarness.for_backend("libvirt", settings, pvc_root=claims) as h:
            resp = _export(h, dom.UUIDString(), url, backend_type="pvc", transfer_mode="auto")
            h.wait(resp.task)
            staged = claims / "mig-claim/vmmigrations/ns1/move/export.qcow2"
            assert _sha256(staged) == resp.checksum
            assert (staged.parent / "export.qcow2.sha256").read_text() == f"{resp.checksum}  export.qcow2\n"
            assert _same_content(disk, staged)
            name = lab.track(lab.name("from-claim.qcow2"))
            back = _import(h, url, name, verify_checksum=True, expected_checksum=resp.checksum, backend_type="pvc")
            h.wait(back.task)
            vol = lab.find(name)
            assert vol is not None
            assert _same_content(disk, vol.path())
            code, details = _code(lambda: _export(h, dom.UUIDString(), url, transfer_mode="direct"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert "offered: relay" in details
    finally:
        urls.set_roots()
