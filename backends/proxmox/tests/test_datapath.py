"""ExportDisk and ImportDisk through a node's shell over SSH (pvenode:
a real sshd with qemu-img and a ``pvesm`` stand-in), the API from the
simulator, and the destinations real: staging directories, and S3 (moto)
on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pvenode import PveNode
from vm_provider_proxmox.node import NodeShell
from vm_provider_proxmox.settings import ProxmoxSettings
from vmp_testplugins.sshd import SharedSshd, keygen, skip_without_sshd

from provider_core import Unavailable
from provider_core.conformance.servers import HttpSink, S3Server
from provider_core.pb import provider_pb2 as pb

VOLID = "cloud:100/vm-100-disk-0.qcow2"
BUCKET = "vmp-moves"
MiB = 1 << 20


@pytest.fixture
def node(tmp_path: Path) -> Iterator[PveNode]:
    skip_without_sshd()
    n = PveNode(tmp_path / "node")
    with n.running():
        yield n


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    root = tmp_path / "claims"
    (root / "mig").mkdir(parents=True)
    return root


@pytest.fixture
def dp(provider: Any, settings: dict[str, Any], node: PveNode, claims: Path) -> Any:
    return provider({**settings, **node.settings()}, pvc_root=claims)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_disk(node: PveNode, pve: Any, running: bool = False) -> Path:
    """VM 100 with a 64 MiB qcow2 disk holding 8 MiB of data on storage cloud."""
    disk = node.path(VOLID)
    disk.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 8M", str(disk)], check=True, capture_output=True)
    pve.add_vm(100, "mover", status="running" if running else "stopped", config={"scsi0": f"{VOLID},size=64M", "memory": "512"})
    return disk


def same_content(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0


def export(h: Any, url: str, fmt: str = "qcow2", **kw: Any) -> pb.ExportDiskResponse:
    resp: pb.ExportDiskResponse = h.stub.ExportDisk(
        pb.ExportDiskRequest(vm_id="100", destination_url=url, format=fmt, **kw), timeout=120
    )
    return resp


def import_(h: Any, url: str, name: str, fmt: str = "qcow2", **kw: Any) -> pb.ImportDiskResponse:
    resp: pb.ImportDiskResponse = h.stub.ImportDisk(
        pb.ImportDiskRequest(source_url=url, target_name=name, format=fmt, **kw), timeout=120
    )
    return resp


def fails(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details()


def test_offered_only_with_the_ssh_data_path(provider: Any, settings: dict[str, Any], node: PveNode) -> None:
    caps = provider(settings).stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert not caps.supports_disk_export
    assert not caps.supports_disk_import
    caps = provider({**settings, **node.settings()}).stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert caps.supports_disk_export
    assert caps.supports_disk_import
    assert caps.supports_export_compression
    assert list(caps.supported_export_formats) == ["qcow2", "raw", "vmdk"]
    assert list(caps.supported_transfer_modes) == ["relay"]


def test_export_to_a_staging_directory_and_import_back(dp: Any, pve: Any, node: PveNode, claims: Path) -> None:
    disk = make_disk(node, pve)
    url = "pvc://mig/vmmigrations/ns1/move/export.qcow2"
    resp = export(dp, url, compress=True, backend_type="pvc")
    staged = claims / "mig/vmmigrations/ns1/move/export.qcow2"
    assert resp.checksum == sha256(staged)
    assert resp.estimated_size_bytes == staged.stat().st_size
    assert same_content(disk, staged)
    assert list(node.tmp.iterdir()) == []  # the converted file on the node is gone

    got = import_(dp, url, "moved", backend_type="pvc", verify_checksum=True, expected_checksum=resp.checksum)
    assert (got.disk_id, got.path, got.checksum) == ("cloud:import/moved.qcow2", "cloud:import/moved.qcow2", resp.checksum)
    placed = node.path(got.disk_id)
    assert got.actual_size_bytes == placed.stat().st_size
    assert sha256(placed) == resp.checksum
    assert same_content(disk, placed)
    assert sorted(p.name for p in placed.parent.iterdir()) == ["moved.qcow2"]

    again = import_(dp, url, "moved", backend_type="pvc", verify_checksum=True, expected_checksum=resp.checksum)
    assert again.checksum == resp.checksum  # already there and the same: taken
    code, message = fails(lambda: import_(dp, url, "moved", backend_type="pvc"))
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert "set verify_checksum" in message


@pytest.mark.parametrize(("fmt", "compress"), [("raw", False), ("vmdk", True)])
def test_export_to_s3_from_a_running_vm(
    dp: Any, pve: Any, node: PveNode, tmp_path: Path, fmt: str, compress: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    disk = make_disk(node, pve, running=True)
    with S3Server(BUCKET) as s3:
        creds = {"access_key_id": "AKIATEST", "secret_access_key": "s3-secret", "endpoint_url": s3.url, "region": "us-east-1"}
        resp = export(dp, f"s3://{BUCKET}/vm/disk.{fmt}", fmt, compress=compress, credentials=creds)
        received = tmp_path / f"received.{fmt}"
        s3.client().download_file(BUCKET, f"vm/disk.{fmt}", str(received))
        back = import_(dp, f"s3://{BUCKET}/vm/disk.{fmt}", "back", fmt, credentials=creds)
    assert back.checksum == resp.checksum
    assert same_content(disk, node.path(back.disk_id))
    assert resp.checksum == sha256(received)
    assert same_content(disk, received)
    assert "exported" in caplog.text
    assert "s3-secret" not in caplog.text


def unopenable(claims: Path) -> str:
    """A qcow2 whose L1 table size is beyond what qemu-img opens."""
    path = claims / "mig/unopenable.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    data = bytearray(path.read_bytes())
    data[36:40] = (1 << 30).to_bytes(4, "big")  # l1_size
    path.write_bytes(bytes(data))
    return path.name


def corrupt(claims: Path) -> str:
    """A qcow2 that opens but whose first data cluster lies beyond its end
    (``qemu-img check`` exits 2)."""
    path = claims / "mig/corrupt.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(path)], check=True, capture_output=True)
    data = bytearray(path.read_bytes())
    l1 = int.from_bytes(data[40:48], "big")
    l2 = int.from_bytes(data[l1 : l1 + 8], "big") & ((1 << 56) - 1) & ~0x1FF
    data[l2 : l2 + 8] = ((1 << 63) | (1 << 33)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path.name


def test_import_verifies_on_the_node_and_leaves_nothing_on_failure(
    dp: Any, pve: Any, node: PveNode, tmp_path: Path, claims: Path
) -> None:
    raw = claims / "mig/plain.raw"
    raw.write_bytes(b"\x5a" * MiB)
    code, message = fails(lambda: import_(dp, "pvc://mig/plain.raw", "bad", "qcow2", backend_type="pvc"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "format" in message
    assert "raw" in message
    wrong = {"verify_checksum": True, "expected_checksum": "ab" * 32}
    code, message = fails(lambda: import_(dp, "pvc://mig/plain.raw", "sum", "raw", backend_type="pvc", **wrong))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "expected_checksum" in message
    for name, said in [(unopenable(claims), "no image qemu-img can open"), (corrupt(claims), "damaged qcow2 image")]:
        code, message = fails(lambda name=name: import_(dp, f"pvc://mig/{name}", "damaged", backend_type="pvc"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, message
        assert said in message
    imports = node.root / "cloud/import"
    assert not imports.exists() or list(imports.iterdir()) == []  # no partial file stays
    got = import_(dp, "pvc://mig/plain.raw", "plain", "raw", backend_type="pvc")
    assert got.checksum == sha256(raw)
    assert node.path(got.disk_id).read_bytes() == raw.read_bytes()


def test_import_from_http(dp: Any, pve: Any, node: PveNode, tmp_path: Path) -> None:
    src = tmp_path / "web"
    src.mkdir()
    image = src / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    with HttpSink(src) as sink:
        got = import_(dp, sink.url("golden.qcow2"), "golden", verify_checksum=True, expected_checksum=sha256(image))
    assert same_content(image, node.path(got.disk_id))


def test_host_keys_are_verified_and_never_added(
    provider: Any, settings: dict[str, Any], pve: Any, node: PveNode, claims: Path
) -> None:
    make_disk(node, pve)
    impostor = keygen(node.sshd.dir / "impostor")
    for known, said in [
        (node.sshd.known_hosts("other_key", key=impostor), "differs from the one in ssh_known_hosts_file"),
        (node.sshd.known_hosts("other_host", host="127.0.0.2"), "is not in ssh_known_hosts_file"),
    ]:
        before = known.read_bytes()
        h = provider({**settings, **node.settings(known_hosts=known)}, pvc_root=claims)
        code, message = fails(lambda h=h: export(h, "pvc://mig/x.qcow2", backend_type="pvc"))
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert said in message
        assert known.read_bytes() == before
    assert node.sshd.logins() == 0
    h = provider({**settings, **node.settings(key=node.sshd.stranger_key)}, pvc_root=claims)
    code, message = fails(lambda: export(h, "pvc://mig/x.qcow2", backend_type="pvc"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "SSH login" in message
    assert not list(claims.rglob("x.qcow2"))


def test_requests_refused_before_any_transfer(dp: Any, pve: Any, node: PveNode) -> None:
    make_disk(node, pve)
    for kw, field in [
        ({"fmt": "raw", "compress": True}, "compress"),
        ({"snapshot_id": "before"}, "no snapshot 'before'"),
        ({"disk_id": "scsi7"}, "scsi7"),
    ]:
        code, message = fails(lambda kw=kw: export(dp, "pvc://mig/y.qcow2", backend_type="pvc", **kw))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), message
        assert field in message
    code, message = fails(lambda: import_(dp, "pvc://mig/y.qcow2", "../escape", backend_type="pvc"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "target_name" in message
    code, message = fails(lambda: import_(dp, "pvc://mig/y.qcow2", "y", backend_type="pvc", storage_hint="local-lvm"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, message
    assert "storage_hint" in message
    assert "'local-lvm' holds no 'import' content" in message
    assert node.sshd.logins() == 0


def test_an_imported_disk_becomes_a_vms_disk(dp: Any, pve: Any, node: PveNode, claims: Path, ops_for: Any) -> None:
    """ImportDisk's volume id is what Create takes as image Path: Proxmox
    copies it onto the VM's disk (``import-from``). fakepve does not see the
    stand-in's files; the test lists the volume there as a directory
    storage's scan would."""
    image = claims / "mig/golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    got = import_(dp, "pvc://mig/golden.qcow2", "golden", backend_type="pvc")
    volume = got.disk_id.split(":", 1)[1]
    listed = {"content": "import", "format": "qcow2", "size": 32 * MiB, "ctime": 0}
    pve.storages["cloud"].setdefault("volumes", {})[volume] = listed
    ops = ops_for(dp)
    mark = ops.mark()
    vm = ops.create("from-import", image_json={"Path": got.path}, disks_json=[{"SizeGiB": 1}])
    sent = b"".join(body for m, p, body in pve.requests[mark:] if m == "POST" and p.endswith("/qemu"))
    assert b"import-from%3Dcloud%3Aimport%2Fgolden.qcow2" in sent
    assert pve.vm(int(vm)).config["scsi0"].startswith("local-lvm:")


def test_validate_logs_in_to_each_node(provider: Any, settings: dict[str, Any], node: PveNode) -> None:
    report = provider({**settings, **node.settings()}).stub.Validate(pb.ValidateRequest(), timeout=60)
    assert report.ok, report.message
    assert "SSH data path (pvesm, qemu-img) on: pve1, pve2" in report.message
    impostor = keygen(node.sshd.dir / "impostor")
    known = node.sshd.known_hosts("wrong", key=impostor)
    report = provider({**settings, **node.settings(known_hosts=known)}).stub.Validate(pb.ValidateRequest(), timeout=60)
    assert not report.ok
    assert "disk data path: SSH host key of node pve1" in report.message


def test_the_nodes_own_error_is_reported(dp: Any, pve: Any, node: PveNode, claims: Path) -> None:
    """The writer on the node fails (here: its file is a directory) while
    the provider is still sending: the answer carries the node's error."""
    raw = claims / "mig/big.raw"
    raw.write_bytes(b"\x5a" * (16 * MiB))
    blocker = node.root / "cloud/import/.blocked.raw.part"
    blocker.mkdir(parents=True)
    code, message = fails(lambda: import_(dp, "pvc://mig/big.raw", "blocked", "raw", backend_type="pvc"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION, message
    assert "dd on node pve1" in message
    assert "Is a directory" in message
    assert not (node.root / "cloud/import/blocked.raw").exists()


def test_an_image_that_reads_other_files_of_the_node_is_refused(dp: Any, pve: Any, node: PveNode, claims: Path) -> None:
    """A qcow2 with a backing file or an external data file, or a vmdk whose
    extent is another file, would hand a VM made from it the bytes of a file
    of the node (another VM's disk): refused, and nothing stays."""
    victim = make_disk(node, pve)
    backed = claims / "mig/backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(victim), "-F", "qcow2", str(backed)], check=True)
    external = claims / "mig/external.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={victim}", str(external), "64M"], check=True)
    flat = claims / "mig/flat.vmdk"
    flat.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        f'RW 131072 FLAT "{victim}" 0\n'
        'ddb.adapterType = "ide"\n'
    )
    for name, fmt, said in [
        ("backed.qcow2", "qcow2", "backing file"),
        ("external.qcow2", "qcow2", "data file"),
        ("flat.vmdk", "vmdk", "extent"),
    ]:
        code, message = fails(lambda name=name, fmt=fmt: import_(dp, f"pvc://mig/{name}", "stolen", fmt, backend_type="pvc"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, message
        assert "source_url" in message
        assert said in message
    imports = node.root / "cloud/import"
    assert not imports.exists() or list(imports.iterdir()) == []


def test_a_command_that_never_exits_fails_within_the_timeout(settings: dict[str, Any], node: PveNode) -> None:
    """A command on the node that closed its output but does not exit is
    not waited for longer than task_timeout_seconds."""
    shell = NodeShell(ProxmoxSettings(**{**settings, **node.settings(), "task_timeout_seconds": 1}))
    started = time.monotonic()
    with shell.session("pve1") as session, pytest.raises(Unavailable, match="did not exit within 1s"):
        session.status(["sh", "-c", "exec >&- 2>&-; sleep 6"])
    assert time.monotonic() - started < 5


def test_streams_use_aes_gcm_where_the_node_offers_it(settings: dict[str, Any], node: PveNode, tmp_path: Path) -> None:
    """AES-GCM first (no HMAC pass in Python over each packet), and the
    connection still made with a node whose sshd offers only another cipher."""
    with NodeShell(ProxmoxSettings(**{**settings, **node.settings()})).session("pve1") as session:
        transport = session.client.get_transport()
        assert transport is not None
        assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert session.run(["echo", "ok"]) == "ok\n"
    (tmp_path / "ctr").mkdir()
    old = SharedSshd(tmp_path / "ctr", extra_config="Ciphers aes128-ctr\n")
    old.start()
    try:
        ctr = {**node.settings(), "ssh_port": old.port, "ssh_key_file": str(old.client_key)}
        ctr["ssh_known_hosts_file"] = str(old.known_hosts("known_hosts"))
        with NodeShell(ProxmoxSettings(**{**settings, **ctr})).session("pve1") as session:
            transport = session.client.get_transport()
            assert transport is not None
            assert transport.remote_cipher == "aes128-ctr"
            assert session.run(["echo", "ok"]) == "ok\n"
    finally:
        old.stop()
