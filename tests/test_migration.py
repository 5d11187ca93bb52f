"""Migration between hypervisors end to end, through the providers' RPCs
only, with the client code of docs/migrating.md as written.

Two real vm-provider servers on 127.0.0.1: one on libvirt's real daemon
with QEMU (the test bed's own), one on the Proxmox API simulator (fakepve
behind the test layer pvesim) with the nodes' shell played by a real sshd
(``pvenode``: qemu-img and a ``pvesm`` stand-in over directory storages).
A VM's disk goes libvirt -> staging -> Proxmox (ImportDisk, then Create on
it), and that VM's disk Proxmox -> staging -> libvirt (ImportDisk, Create);
staging is a local S3 server (moto), a migration claim (pvc) or an NFS
export (nfs), the same directory mounted into both providers. Checksums
are compared at every hop and content with ``qemu-img compare``.

What is simulated, besides the PVE command line: fakepve keeps no files, so
:class:`NodeFiles` does what a node does with its directory storage's files
(listing them, and the create task's ``import-from`` copy).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import libvirt
import pytest
from vmp_testplugins.sshd import skip_without_sshd
from vmp_testplugins.testbed import libvirtd_uri, load_libvirt_layer

from provider_core import urls
from provider_core.conformance.servers import S3Server
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "proxmox" / "tests"))  # pvesim, pvenode
from pvenode import PveNode
from pvesim import Serving, add_second_node_and_shared_dir, make_pki

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]

BUCKET = "vmp-migrations"
CLAIM = "mig"
EXPORT = "/exports/migration"
TOKEN_ID = "vmp@pve!migrate"
TOKEN_SECRET = "migrate-t0ken"
S3_SECRET = "s3-migration-secret"


def doc_client() -> dict[str, Any]:
    """The client code of docs/migrating.md, run as written."""
    (code,) = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "migrating.md").read_text(), flags=re.S)
    scope: dict[str, Any] = {"__name__": "migrating_doc"}
    exec(compile(code, "docs/migrating.md", "exec"), scope)
    return scope


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def same_content(a: str | Path, b: str | Path) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True, check=False)
    return done.returncode == 0


class NodeFiles:
    """A Proxmox node's own work on the files of its directory storage, which
    fakepve (no files behind it) does not do:

    - listing ``import`` content scans the directory
      (pve-storage PVE/Storage/Plugin.pm ``list_volumes``);
    - a create task's ``import-from`` converts the import file onto the new
      disk (qemu-server PVE/API2/Qemu.pm ``create_disks`` ->
      PVE/QemuServer/ImportDisk.pm ``do_import``: ``qemu-img convert``).
    """

    def __init__(self, layer: Any, node: PveNode, storage: str) -> None:
        self.layer = layer
        self.node = node
        self.storage = storage
        layer.route("GET", rf"/nodes/(?P<node>[^/]+)/storage/{storage}/content", self.scan)
        layer.route("POST", r"/nodes/(?P<node>[^/]+)/qemu", self.create)

    async def scan(self, call: Any, m: re.Match[str]) -> None:
        folder = self.node.root / self.storage / "import"
        volumes = self.layer.pve.storages[self.storage].setdefault("volumes", {})
        for f in folder.iterdir() if folder.is_dir() else []:
            if not f.name.startswith("."):
                fmt = f.suffix.lstrip(".")
                volumes[f"import/{f.name}"] = {"content": "import", "format": fmt, "size": f.stat().st_size, "ctime": 0}
        # fakepve answers from what it now holds

    async def create(self, call: Any, m: re.Match[str]) -> Any:
        imports = {k: v for k, v in call.params.items() if "import-from=" in str(v)}
        if not imports:
            return None
        up = await self.layer.forward(call)
        vm = self.layer.pve.vm(int(call.params["vmid"]))
        for _ in range(200):  # the create task allocates the disks
            if vm is not None and all(":0," not in str(vm.config.get(k, ":0,")) for k in imports):
                break
            await asyncio.sleep(0.01)
            vm = self.layer.pve.vm(int(call.params["vmid"]))
        assert vm is not None, "fakepve made no VM"
        for key, value in imports.items():
            source = str(value).split("import-from=", 1)[1].split(",", 1)[0]
            disk = str(vm.config[key]).split(",", 1)[0]
            target = self.node.path(disk)
            target.parent.mkdir(parents=True, exist_ok=True)
            fmt = target.suffix.lstrip(".") or "raw"
            argv = ["qemu-img", "convert", "-O", fmt, str(self.node.path(source)), str(target)]
            await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)
        return self.layer.relay(up)


class Staging:
    """The staging places both providers share, and where each URL lands."""

    def __init__(self, root: Path) -> None:
        self.pvc_root = root / "claims"
        (self.pvc_root / CLAIM).mkdir(parents=True)
        self.nfs_root = root / "nfs"
        self.nfs_root.mkdir()
        self.s3: S3Server | None = None

    def request(self, kind: str, stage: str) -> tuple[str, dict[str, Any]]:
        """The URL of a migration's stage file and the migrate() arguments for it."""
        path = f"vmmigrations/ns1/{stage}/export.qcow2"
        if kind == "s3":
            assert self.s3 is not None
            creds = {"access_key_id": "AKIATEST", "secret_access_key": S3_SECRET, "endpoint_url": self.s3.url}
            options = {"bucket": BUCKET, "region": "us-east-1", "usePathStyle": True}
            return f"s3://{BUCKET}/{path}", {"backend_type": "s3", "credentials": creds, "options": options}
        if kind == "pvc":
            return f"pvc://{CLAIM}/{path}", {"backend_type": "pvc"}
        return f"nfs://127.0.0.1{EXPORT}/{path}", {"backend_type": "nfs", "options": {"export": EXPORT}}

    def fetch(self, kind: str, url: str, into: Path) -> Path:
        """The staged file (downloaded from S3 into ``into``)."""
        if kind == "s3":
            assert self.s3 is not None
            self.s3.client().download_file(BUCKET, url.split("/", 3)[3], str(into))
            return into
        if kind == "pvc":
            return self.pvc_root / url.removeprefix("pvc://")
        return self.nfs_root / url.split(EXPORT + "/", 1)[1]


@pytest.fixture(scope="module")
def libvirt_layer() -> ModuleType:
    """The libvirt backend's test layer, once its daemon is known to serve."""
    layer = load_libvirt_layer()
    layer.skip_without_libvirtd()
    return layer


@pytest.fixture(scope="module")
def staging(libvirt_layer: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staging]:
    s = Staging(tmp_path_factory.mktemp("staging"))
    with S3Server(BUCKET) as s3:
        s.s3 = s3
        try:
            yield s
        finally:
            urls.set_roots()


@pytest.fixture(scope="module")
def libvirt_side(libvirt_layer: ModuleType, tmp_path_factory: pytest.TempPathFactory, staging: Staging) -> Iterator[Any]:
    """A provider on the test bed's libvirtd; its base image in the pool."""
    layer = libvirt_layer
    cache = layer.guest_cache()
    tag = uuid.uuid4().hex[:6]
    base = f"vmpt-{tag}-base.qcow2"
    conn = libvirt.open(libvirtd_uri())
    try:
        pool = conn.storagePoolLookupByName("default")
        pool_dir = Path(ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or "")
        subprocess.run(["cp", str(cache / "disk.qcow2"), str(pool_dir / base)], check=True)
        pool.refresh(0)
    finally:
        conn.close()
    scratch = tmp_path_factory.mktemp("libvirt-scratch")
    settings = {"uri": libvirtd_uri(), "pool": "default", "download_dir": str(scratch)}
    server = {"pvc_root": staging.pvc_root, "nfs_root": staging.nfs_root}
    with ProviderHarness.for_backend("libvirt", settings, **server) as h:
        host = layer.RealHost(h, tag, cache, cache, base)
        try:
            yield host
        finally:
            host.cleanup()


@pytest.fixture(scope="module")
def proxmox_side(tmp_path_factory: pytest.TempPathFactory, staging: Staging) -> Iterator[tuple[ProviderHarness, PveNode]]:
    """A provider on the simulator, its nodes' shell over SSH; VM disks and
    imports on the directory storage ``cloud``."""
    skip_without_sshd()
    served = Serving(*make_pki(str(tmp_path_factory.mktemp("pvesim-pki"))))
    node = PveNode(tmp_path_factory.mktemp("pve-node"))
    try:
        pve = served.pve
        pve.apitokens[TOKEN_ID] = TOKEN_SECRET
        add_second_node_and_shared_dir(pve)
        NodeFiles(served.cluster, node, "cloud")
        node.start()
        settings = {
            "endpoint": served.cluster.url,
            "token_id": TOKEN_ID,
            "token_secret": TOKEN_SECRET,
            "ca_file": served.cafile,
            "node": "pve1",
            "storage": "cloud",
            "import_storage": "cloud",
            **node.settings(),
        }
        server = {"pvc_root": staging.pvc_root, "nfs_root": staging.nfs_root}
        with ProviderHarness.for_backend("proxmox", settings, **server) as h:
            yield h, node
    finally:
        node.stop()
        served.stop()


def disk_of(h: ProviderHarness, vm_id: str) -> str:
    return str(h.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id), timeout=30).path)


@pytest.mark.parametrize("kind", ["s3", "pvc", "nfs"])
def test_libvirt_to_proxmox_and_back(
    kind: str, libvirt_side: Any, proxmox_side: tuple[ProviderHarness, PveNode], staging: Staging, tmp_path: Path
) -> None:
    migrate = doc_client()["migrate"]
    lv = libvirt_side
    px, node = proxmox_side
    # a VM on the real daemon, with data of its own on its disk
    source = lv.create(f"src-{kind}", class_json={"CPU": 1, "MemoryMiB": 128}, image_json={"TemplateName": lv.base})
    original = disk_of(lv.harness, source)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 8M 3M", "-c", "write -P 0xa5 50M 512k", original],
        check=True,
        capture_output=True,
    )
    assert not same_content(Path(original).with_name(lv.base), original)

    # libvirt -> staging -> Proxmox
    url, how = staging.request(kind, f"{kind}-there")
    there, sent = migrate(lv.stub, px.stub, source, url, lv.name(f"there-{kind}"), **how)
    staged = staging.fetch(kind, url, tmp_path / "there.qcow2")
    assert sha256(staged) == sent
    assert same_content(original, staged)
    imported = node.path(f"cloud:import/{lv.name(f'there-{kind}')}-migrated.qcow2")
    assert sha256(imported) == sent
    on_proxmox = disk_of(px, there)
    assert on_proxmox.startswith(f"cloud:{there}/vm-{there}-disk-"), on_proxmox
    assert same_content(original, node.path(on_proxmox))

    # Proxmox -> staging -> libvirt (the Proxmox backend exports a disk as it is now)
    url, how = staging.request(kind, f"{kind}-back")
    back, returned = migrate(px.stub, lv.stub, there, url, lv.name(f"back-{kind}"), snapshot=False, **how)
    staged = staging.fetch(kind, url, tmp_path / "back.qcow2")
    assert sha256(staged) == returned
    assert same_content(original, staged)
    final = disk_of(lv.harness, back)
    assert final != original
    assert same_content(original, final)
    assert list(node.tmp.iterdir()) == []  # the node's converted copies are gone
