"""Fixtures: a Proxmox VE cluster as a real one behaves (fakepve, the API
simulator, behind the test layer :mod:`pvesim`, both over verified HTTPS on
127.0.0.1) and a real vm-provider server serving the proxmox backend.

``pve`` is the simulator (fresh state per test, tasks finishing at once:
time_scale 0) with an API token for the provider, a second node and a file
storage ``cloud`` holding images, ISOs, import files and snippets;
``cluster`` is the layer the provider talks to, with the switches of the
behaviours it adds (see :mod:`pvesim`). ``images`` serves disk images over
HTTP on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from proxmoxer import ProxmoxAPI

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

sys.path.insert(0, str(Path(__file__).parent))  # the test layer, pvesim (tests are imported by path)
from pvesim import RealCluster, Serving, add_second_node_and_shared_dir, make_pki

TOKEN_ID = "vmp@pve!ci"
TOKEN_SECRET = "5ecret-t0ken-value"
OWNER = "vm-provider"

Factory = Callable[..., ProviderHarness]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name lookups outside 127.0.0.0/8 fail at once: test traffic stays on
    this host (images.example.invalid and the like are never resolved)."""
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            local = ipaddress.ip_address(name).is_loopback
        except ValueError:
            local = name == "localhost"
        if not local:
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: not resolved in tests (127.0.0.0/8 only)")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_pki(str(tmp_path_factory.mktemp("pvesim-pki")))


@pytest.fixture
def serving(request: pytest.FixtureRequest, pki: tuple[str, str]) -> Iterator[Serving]:
    served = Serving(*pki)
    marker = request.node.get_closest_marker("fakepve")  # fakepve's own marker: time_scale
    if marker is not None:
        served.pve.time_scale = marker.kwargs.get("time_scale", 0)
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def pve(serving: Serving) -> Any:
    fakepve = serving.pve
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    add_second_node_and_shared_dir(fakepve)
    return fakepve


@pytest.fixture
def cluster(serving: Serving, pve: Any) -> RealCluster:
    """The endpoint the provider talks to: the simulator as a real cluster behaves."""
    return serving.cluster


@pytest.fixture
def cafile(serving: Serving) -> str:
    """The CA (a self-signed certificate) both the layer and fakepve serve."""
    return serving.cafile


@pytest.fixture
def api(pve: Any, cluster: RealCluster, cafile: str) -> ProxmoxAPI:
    """A separate Proxmox client, for what someone else does to the cluster."""
    pve.apitokens["root@pam!other"] = "other-secret"
    return ProxmoxAPI(
        cluster.host, port=cluster.port, user="root@pam", token_name="other", token_value="other-secret", verify_ssl=cafile
    )


class ImageServer:
    """Disk images over HTTP on 127.0.0.1 (GET with Range, and HEAD), each
    with a fixed ETag and Last-Modified."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.gets: list[tuple[str, str]] = []
        files, redirects, gets = self.files, self.redirects, self.gets

        class Handler(BaseHTTPRequestHandler):
            def _head(self) -> bytes | None:
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                data = files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return None
                wanted = self.headers.get("Range", "")
                part = data
                if wanted.startswith("bytes=") and self.command == "GET":
                    first, _, last = wanted[6:].partition("-")
                    part = data[int(first) : int(last) + 1 if last else None]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{int(first) + len(part) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(part)))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
                self.send_header("Last-Modified", formatdate(1700000000, usegmt=True))
                self.end_headers()
                return part

            def do_GET(self) -> None:
                gets.append((self.path, self.headers.get("Range", "")))
                part = self._head()
                if part is not None:
                    self.wfile.write(part)

            def do_HEAD(self) -> None:
                self._head()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, name: str, data: bytes) -> str:
        """Serve ``data`` as /name; its URL."""
        self.files["/" + name] = data
        return f"http://127.0.0.1:{self.server.server_port}/{name}"

    def redirect(self, name: str, location: str) -> str:
        """Answer /name with a redirect to ``location``; its URL."""
        self.redirects["/" + name] = location
        return f"http://127.0.0.1:{self.server.server_port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def snippets_dir(tmp_path: Path) -> Path:
    return tmp_path / "cloud"


@pytest.fixture
def settings(cluster: RealCluster, cafile: str, snippets_dir: Path) -> dict[str, Any]:
    return {
        "endpoint": cluster.url,
        "token_id": TOKEN_ID,
        "token_secret": TOKEN_SECRET,
        "ca_file": cafile,
        "node": "pve1",
        "storage": "local-lvm",
        "import_storage": "cloud",
        "snippets_storage": "cloud",
        "snippets_dir": str(snippets_dir),
        "lock_retry_seconds": 2,
    }


@pytest.fixture
def provider() -> Iterator[Factory]:
    """Start providers: ``provider(settings)``; each stops at the test's end."""
    started: list[ProviderHarness] = []

    def make(table: dict[str, Any], **server: Any) -> ProviderHarness:
        # The backend's own power words: its state table is what these tests
        # check (the core's On/Off default is tested in the core's tests).
        # VMs the tests put into the simulator carry no owner tag: they are
        # managed as the operator may allow (test_adopt.py checks the refusal).
        defaults = {"power_states": "detailed", "manage_foreign_vms": True}
        h = ProviderHarness.for_backend("proxmox", table, **{**defaults, **server})
        started.append(h)
        return h.start()

    yield make
    for h in reversed(started):
        h.stop()


@pytest.fixture
def h(provider: Factory, settings: dict[str, Any]) -> ProviderHarness:
    return provider(settings)


class Ops:
    """Client-side conveniences over one provider (and the simulator)."""

    def __init__(self, h: ProviderHarness, pve: Any) -> None:
        self.h = h
        self.stub = h.stub
        self.pve = pve

    def create(self, name: str, **fields: Any) -> str:
        """Create a VM and wait for its task; *_json fields may be objects."""
        resp = self.stub.Create(pb.CreateRequest(name=name, **_json(fields)), timeout=30)
        self.h.wait(resp.task, timeout=30)
        return str(resp.id)

    def clone(self, source: str, target: str, **fields: Any) -> str:
        resp = self.stub.Clone(pb.CloneRequest(source_vm_id=source, target_name=target, **_json(fields)), timeout=30)
        self.h.wait(resp.task, timeout=30)
        return str(resp.target_vm_id)

    def power(self, vm_id: str, op: pb.PowerOp, graceful: int = 0) -> None:
        resp = self.stub.Power(pb.PowerRequest(id=vm_id, op=op, graceful_timeout_seconds=graceful), timeout=30)
        self.h.wait(resp.task, timeout=30)

    def describe(self, vm_id: str) -> Any:
        return self.stub.Describe(pb.DescribeRequest(id=vm_id), timeout=30)

    def raw(self, vm_id: str) -> dict[str, Any]:
        return dict(json.loads(self.describe(vm_id).provider_raw_json))

    def state(self, vm_id: str) -> str:
        return str(self.describe(vm_id).power_state)

    def mark(self) -> int:
        return len(self.pve.requests)

    def requests_since(self, mark: int) -> list[tuple[str, str]]:
        """(method, path) of the API requests fakepve received after ``mark``."""
        return [(m, p) for m, p, _ in self.pve.requests[mark:]]

    @staticmethod
    def fails(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
        """Run a gRPC call that must fail; return its code and message."""
        with pytest.raises(grpc.RpcError) as info:
            call()
        err: Any = info.value
        return err.code(), err.details()


def _json(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k.endswith("_json") and not isinstance(v, str) else v for k, v in fields.items()}


@pytest.fixture
def ops(h: ProviderHarness, pve: Any) -> Ops:
    return Ops(h, pve)


@pytest.fixture
def ops_for(pve: Any) -> Callable[[ProviderHarness], Ops]:
    return lambda harness: Ops(harness, pve)
