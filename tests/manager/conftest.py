"""Endpoints for the manager-replay suite: a real provider server in front
of libvirt's real daemon (QEMU guests), of the Proxmox simulator behind the
test layer that makes it behave like a real cluster, and of the simulator
backend. Each test runs against every endpoint; the manager's circuit-breaker
rule is checked after each one."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

sys.path.insert(0, str(Path(__file__).parent))  # manager_client, manager_payloads (tests are imported by path)
import manager_payloads as mp
from manager_client import Breaker, Manager

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    """A backend's test layer, imported by path under its own name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Endpoint:
    """One provider the manager talks to, and what its backend needs."""

    kind = ""

    def __init__(self, harness: ProviderHarness) -> None:
        self.harness = harness
        self.tag = uuid.uuid4().hex[:6]

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


class SimEndpoint(Endpoint):
    kind = "sim"

    def image(self) -> dict[str, Any]:
        return mp.vm_image(template="debian-12")

    def networks(self) -> list[dict[str, Any]] | None:
        return [mp.network(network_name="default")]


class ProxmoxEndpoint(Endpoint):
    kind = "proxmox"

    def networks(self) -> list[dict[str, Any]] | None:
        return [mp.network(bridge="vmbr0")]


class LibvirtEndpoint(Endpoint):
    kind = "libvirt"

    def __init__(self, harness: ProviderHarness, host: Any) -> None:
        super().__init__(harness)
        self.host = host
        self.tag = host.tag

    def name(self, suffix: str) -> str:
        return str(self.host.name(suffix))

    def cls(self, cpu: int = 1) -> dict[str, Any]:
        guest = self.host.guest_class()
        return mp.vm_class(cpu, 128, extra_config=guest["ExtraConfig"])

    def image(self) -> dict[str, Any]:
        return mp.vm_image(template=self.host.base)

    def networks(self) -> list[dict[str, Any]] | None:
        return [mp.network(network_name="default")]


def _sim() -> Iterator[Endpoint]:
    with ProviderHarness.for_backend("sim", {"task_seconds": 0.2, "shutdown_seconds": 0.3}) as h:
        yield SimEndpoint(h)


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
        with ProviderHarness.for_backend("proxmox", settings) as h:
            endpoint = ProxmoxEndpoint(h)
            endpoint.pve = served.pve  # type: ignore[attr-defined]
            yield endpoint
    finally:
        served.stop()


def _libvirt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    layer = _load("libvirt_test_layer", REPO / "backends" / "libvirt" / "tests" / "conftest.py")
    reason = layer.libvirtd_unavailable()
    if reason:
        pytest.skip(f"needs a libvirt daemon with QEMU: {reason}")
    with layer.real_host_context(tmp_path_factory) as host:
        yield LibvirtEndpoint(host.harness, host)


@pytest.fixture(scope="module", params=["sim", "proxmox", pytest.param("libvirt", marks=pytest.mark.libvirtd)])
def endpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    if request.param == "sim":
        yield from _sim()
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
    m = Manager(endpoint.target, breaker)
    yield m
    m.close()
