"""Endpoints for the manager-replay suite: a real provider server in front
of libvirt's real daemon (QEMU guests), of the Proxmox simulator behind the
test layer that makes it behave like a real cluster, and of the simulator
backend, plainly and behind the provider's TLS layer with the manager's
client certificate. Each test runs against every endpoint; the manager's
circuit-breaker rule is checked after each one."""

from __future__ import annotations

import hashlib
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest
from proxmoxer import ProxmoxAPI
from vmp_testplugins.testbed import libvirtd_uri, load_libvirt_layer

from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.testing import ProviderHarness

sys.path.insert(0, str(Path(__file__).parent))  # manager_client, manager_payloads (tests are imported by path)
import manager_payloads as mp
from manager_client import Breaker, Manager, dial

REPO = Path(__file__).resolve().parents[2]


class Endpoint:
    """One provider the manager talks to, and what its backend needs."""

    kind = ""
    credentials: grpc.ChannelCredentials | None = None
    """The manager's client certificate, when the provider serves mutual TLS."""

    def __init__(self, harness: ProviderHarness) -> None:
        self.harness = harness
        self.tag = uuid.uuid4().hex[:6]

    def stub(self) -> pb_grpc.ProviderStub:
        """A client of this provider as the test's own eyes (not the manager's)."""
        return pb_grpc.ProviderStub(dial(self.target, self.credentials))

    @property
    def target(self) -> str:
        return self.harness.address

    def name(self, suffix: str) -> str:
        return f"vmpm-{self.tag}-{suffix}"

    def cls(self, cpu: int = 1) -> dict[str, Any]:
        return mp.vm_class(cpu, 128)

    def image(self) -> dict[str, Any]:
        return mp.vm_image()

    def networks(self) -> list[dict[str, Any]] | None:
        return None

    def create_request(self, suffix: str, cpu: int = 1) -> pb.CreateRequest:
        return mp.create_request(self.name(suffix), self.cls(cpu), self.image(), self.networks(), None)

    def desired(self, suffix: str, cpu: int) -> str:
        return mp.desired_json(self.name(suffix), self.cls(cpu), self.image(), self.networks(), None)

    def made_elsewhere(self, suffix: str) -> str:
        """A VM someone made behind the provider's back; its id."""
        raise NotImplementedError

    def image_source(self) -> dict[str, Any]:
        """A VMImage resource's ``source`` ImagePrepare can bring in here."""
        raise NotImplementedError

    def prepared_image(self, prepared: pb.ImagePrepareResponse) -> dict[str, Any]:
        """Create's image_json once the image is prepared, as the manager
        rewrites it (overrideImageWithPreparedLocation): the pool path for a
        libvirt source, the id as TemplateName for a Proxmox one."""
        return mp.vm_image(template=prepared.prepared_image_id)


class SimEndpoint(Endpoint):
    kind = "sim"
    FOREIGN = "vmpm-made-elsewhere"

    def image(self) -> dict[str, Any]:
        return mp.vm_image(template="debian-12")

    def networks(self) -> list[dict[str, Any]] | None:
        return [mp.network(network_name="default")]

    def made_elsewhere(self, suffix: str) -> str:
        (vm,) = [vm for vm in self.stub().ListVMs(pb.ListVMsRequest()).vms if vm.name == self.FOREIGN]
        return str(vm.id)

    images: Any = None

    def image_source(self) -> dict[str, Any]:
        url, digest = self.images
        return {"libvirt": {"url": url, "format": "qcow2", "checksum": digest, "checksumType": "sha256"}}

    def prepared_image(self, prepared: pb.ImagePrepareResponse) -> dict[str, Any]:
        return mp.vm_image(path=prepared.prepared_image_path, fmt="qcow2")


class ProxmoxEndpoint(Endpoint):
    kind = "proxmox"
    pve: Any
    api: Any

    def networks(self) -> list[dict[str, Any]] | None:
        return [mp.network(bridge="vmbr0")]

    def made_elsewhere(self, suffix: str) -> str:
        """Through the API, as the web UI or Terraform would: no owner tag."""
        vmid = 700 + sum(1 for _ in self.pve.vms)
        self.api.nodes("pve1").qemu.post(vmid=vmid, name=self.name(suffix), memory=512, cores=1, scsi0="local-lvm:4")
        return str(vmid)

    def image_source(self) -> dict[str, Any]:
        """A template someone made in Proxmox: the manager's proxmox source."""
        if 9000 not in {vm.vmid for vm in self.pve.vms}:
            self.pve.add_vm(9000, "golden", template=True, config={"scsi0": "local-lvm:base-9000-disk-0,size=2G"})
        return {"proxmox": {"templateName": "golden"}}


class LibvirtEndpoint(Endpoint):
    kind = "libvirt"

    def __init__(self, harness: ProviderHarness, host: Any, uri: str, images: Any) -> None:
        super().__init__(harness)
        self.host = host
        self.tag = host.tag
        self.uri = uri
        self.images = images

    def made_elsewhere(self, suffix: str) -> str:
        """A domain defined with the libvirt API (virsh define), no disks."""
        name = self.name(suffix)
        xml = (
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"
        )
        conn = libvirt.open(self.uri)
        try:
            return str(conn.defineXML(xml).UUIDString())
        finally:
            conn.close()

    def image_source(self) -> dict[str, Any]:
        url, digest = self.images
        source = {"url": url, "format": "qcow2", "checksum": digest, "checksumType": "sha256", "storagePool": "default"}
        return {"libvirt": source}

    def prepared_image(self, prepared: pb.ImagePrepareResponse) -> dict[str, Any]:
        return mp.vm_image(path=prepared.prepared_image_path, fmt="qcow2")

    def name(self, suffix: str) -> str:
        return str(self.host.name(suffix))

    def cls(self, cpu: int = 1) -> dict[str, Any]:
        guest = self.host.guest_class()
        return mp.vm_class(cpu, 128, extra_config=guest["ExtraConfig"])

    def image(self) -> dict[str, Any]:
        return mp.vm_image(template=self.host.base)

    def networks(self) -> list[dict[str, Any]] | None:
        return [mp.network(network_name="default")]


def _sim(tmp_path_factory: pytest.TempPathFactory, **server: Any) -> Iterator[Endpoint]:
    table = {"task_seconds": 0.2, "shutdown_seconds": 0.3, "foreign_vms": [SimEndpoint.FOREIGN]}
    served = tmp_path_factory.mktemp("images")
    (served / "noble.qcow2").write_bytes(b"QFI\xfb" + bytes(4092))  # the simulation counts and hashes the bytes
    digest = hashlib.sha256((served / "noble.qcow2").read_bytes()).hexdigest()
    with HttpSink(served) as images, ProviderHarness.for_backend("sim", table, **server) as h:
        endpoint = SimEndpoint(h)
        endpoint.images = (images.url("noble.qcow2"), digest)
        yield endpoint


def _sim_mutual_tls(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Iterator[Endpoint]:
    """The simulator behind the provider's TLS layer, as the manager meets a
    Provider whose TLS is on: TLS 1.3, its client certificate, its name in
    allowed_sans."""
    tls = {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_client_ca": pki.ca, "allowed_sans": ["controller"]}
    for endpoint in _sim(tmp_path_factory, **tls):
        endpoint.kind = "sim-mtls"
        endpoint.credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key, pki.client_cert)
        yield endpoint


def _proxmox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tests = REPO / "backends" / "proxmox" / "tests"
    sys.path.insert(0, str(tests))
    from pvesim import Serving, make_pki

    pki = make_pki(str(tmp_path_factory.mktemp("pvesim-pki")))
    served = Serving(*pki)
    try:
        pve = served.pve
        pve.apitokens["root@pam!manager"] = "manager-secret"
        pve.add_node("pve2")
        settings = {
            "endpoint": served.cluster.url,
            "token_id": "root@pam!manager",
            "token_secret": "manager-secret",
            "ca_file": served.cafile,
            "node": "pve1",
            "storage": "local-lvm",
            "lock_retry_seconds": 2,
        }
        pve.apitokens["root@pam!elsewhere"] = "elsewhere-secret"
        api = ProxmoxAPI(
            served.cluster.host,
            port=served.cluster.port,
            user="root@pam",
            token_name="elsewhere",
            token_value="elsewhere-secret",
            verify_ssl=served.cafile,
        )
        with ProviderHarness.for_backend("proxmox", settings) as h:
            endpoint = ProxmoxEndpoint(h)
            endpoint.pve, endpoint.api = served.pve, api
            yield endpoint
    finally:
        served.stop()


def _libvirt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    layer = load_libvirt_layer()
    layer.skip_without_libvirtd()
    served = tmp_path_factory.mktemp("images")
    shutil.copy(layer.guest_cache() / "disk.qcow2", served / "noble.qcow2")
    digest = hashlib.sha256((served / "noble.qcow2").read_bytes()).hexdigest()
    with HttpSink(served) as images, layer.real_host_context(tmp_path_factory) as host:
        yield LibvirtEndpoint(host.harness, host, libvirtd_uri(), (images.url("noble.qcow2"), digest))


@pytest.fixture(scope="module", params=["sim", "sim-mtls", "proxmox", pytest.param("libvirt", marks=pytest.mark.libvirtd)])
def endpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Iterator[Endpoint]:
    if request.param == "sim":
        yield from _sim(tmp_path_factory)
    elif request.param == "sim-mtls":
        yield from _sim_mutual_tls(tmp_path_factory, pki)
    elif request.param == "proxmox":
        yield from _proxmox(tmp_path_factory)
    else:
        yield from _libvirt(tmp_path_factory)


@pytest.fixture
def breaker() -> Iterator[Breaker]:
    """The manager's circuit breaker: a test whose calls would open it fails."""
    b = Breaker()
    yield b
    assert not b.would_open(), f"these calls would open the manager's circuit breaker:\n{b.report()}"


@pytest.fixture
def manager(endpoint: Endpoint, breaker: Breaker) -> Iterator[Manager]:
    m = Manager(endpoint.target, breaker, credentials=endpoint.credentials)
    yield m
    m.close()
