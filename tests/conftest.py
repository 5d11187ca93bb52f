"""Fixtures shared by the core's tests: real servers on 127.0.0.1 port 0
serving the test backends of ``tests/plugins`` (installed as a distribution
with real entry points: ``pip install -e tests/plugins``)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from provider_core import urls
from provider_core.backend import Backend
from provider_core.testing import ProviderHarness

HarnessFactory = Callable[..., ProviderHarness]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_test_plugins: uses the backends of tests/plugins (pip install -e tests/plugins)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, saying why, the core's tests when the test plugins are missing."""
    if any(ep.name == "memory" for ep in entry_points(group="vm_provider.backends")):
        return
    skip = pytest.mark.skip(reason="the test backends are not installed: pip install -e tests/plugins")
    for item in items:
        if "needs_test_plugins" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _loopback_urls() -> Iterator[None]:
    """The test servers (image sources, export sinks, S3) listen on
    127.0.0.1: every test starts with loopback URLs allowed, as an operator
    would allow them with ``[server] allow_addresses = ["loopback"]``."""
    urls.allow(["loopback"])
    yield
    urls.allow(["loopback"])


@pytest.fixture
def harness() -> Iterator[HarnessFactory]:
    """Start servers: ``harness("memory", {"background": True})`` or
    ``harness(backend=instance)``; each is stopped at the end of the test
    (after opening its backend's gate, so no worker thread stays blocked)."""
    started: list[ProviderHarness] = []

    def make(
        name: str = "memory", table: dict[str, Any] | None = None, *, backend: Backend | None = None, **server: Any
    ) -> ProviderHarness:
        h = ProviderHarness.for_backend(name, table, **server) if backend is None else ProviderHarness(backend, name, **server)
        started.append(h)
        return h.start()

    yield make
    for h in reversed(started):
        gate = getattr(h.backend, "gate", None)
        if gate is not None:
            gate.set()
        h.stop()


@pytest.fixture
def memory(harness: HarnessFactory) -> ProviderHarness:
    """A server on the ``memory`` backend, operations done at once."""
    return harness("memory")


@pytest.fixture
def plus(harness: HarnessFactory) -> ProviderHarness:
    """A server on ``memory-plus`` (every optional operation, no refinement)."""
    return harness("memory-plus")


def _status_details(err: grpc.RpcError, kind: type[Message]) -> list[Any]:
    """The details of type ``kind`` in a call's google.rpc.Status."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status in {err!r}"
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            msg = kind()
            detail.Unpack(msg)
            found.append(msg)
    return found


def _field_violations(err: grpc.RpcError) -> dict[str, str]:
    bad = _status_details(err, error_details_pb2.BadRequest)
    assert len(bad) == 1, f"expected one BadRequest detail, got {len(bad)}"
    return {v.field: v.description for v in bad[0].field_violations}


@pytest.fixture
def status_details() -> Callable[[grpc.RpcError, type[Message]], list[Any]]:
    """``status_details(err, ErrorInfo)``: the details of that type in a failed call's google.rpc.Status."""
    return _status_details


@pytest.fixture
def violations() -> Callable[[grpc.RpcError], dict[str, str]]:
    """``violations(err)``: field -> description of a failed call's google.rpc.BadRequest."""
    return _field_violations


# -- the real command ------------------------------------------------------------------

Run = Callable[..., subprocess.CompletedProcess[str]]
#: The start line: address, port, security, backend, endpoint, state, event loop, health port.
STARTED = re.compile(
    r"serving provider\.v1\.Provider on (?P<host>\S+):(?P<port>\d+) \((?P<security>[^)]*)\); "
    r"backend (?P<backend>\S+)(?: at (?P<endpoint>.*?))?; state in (?P<state>.*?); event loop (?P<loop>\w+)"
    r"(?:; health http on \S+:(?P<health_port>\d+))?$"
)


def vm_provider() -> list[str]:
    """The installed ``vm-provider`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("vm-provider")
    found = str(exe) if exe.exists() else shutil.which("vm-provider")
    return [found] if found else [sys.executable, "-m", "provider_core.cli"]


def clean_environment(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without VM_PROVIDER_* variables, state kept under ``tmp_path``, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VM_PROVIDER_")}
    environ["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    environ.update(env or {})
    return environ


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    """Run vm-provider in an empty directory with a clean environment (state
    under tmp_path); ``config`` is written to a plugins.toml passed with --config."""

    def run(*args: str, config: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        if config is not None:
            path = tmp_path / "plugins.toml"
            path.write_text(config)
            argv = ["--config", str(path), *argv]
        return subprocess.run(
            [*vm_provider(), *argv],
            cwd=tmp_path,
            env=clean_environment(tmp_path, env),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    return run


class Served:
    """A running ``vm-provider`` process; its standard error is read line by line."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*vm_provider(), *argv], cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.channel: grpc.Channel | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        """The first line from now on that matches ``pattern``."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                line = None
            else:
                if line is None:
                    self.lines.put(None)  # the end stays marked for later calls
            if line is None:
                raise AssertionError(f"the provider never logged {pattern!r}; log:\n{self.text}")
            self.log.append(line)
            if m := re.search(pattern, line.rstrip("\n")):
                return m

    def started(self) -> re.Match[str]:
        """Wait for the start line; connect :attr:`channel` to the port it names."""
        found = self.wait_for(STARTED)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{found['port']}")
        return found

    def exit_status(self, timeout: float = 20.0) -> int:
        """Wait for the process to end; then :attr:`log` holds all it wrote."""
        status = self.proc.wait(timeout)
        self._reader.join(10)
        while (line := self.lines.get()) is not None:
            self.log.append(line)
        self.lines.put(None)
        return status

    @property
    def text(self) -> str:
        return "".join(self.log)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``vm-provider`` processes: ``serve("--backend", "memory", config=..., env=...)``;
    each is killed at the end of the test if still running."""
    started: list[Served] = []

    def start(*args: str, config: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None) -> Served:
        argv = list(args)
        if config is not None:
            path = tmp_path / f"plugins-{len(started)}.toml"
            path.write_text(config)
            argv = ["--config", str(path), *argv]
        served = Served(argv, cwd or tmp_path, clean_environment(tmp_path, env))
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


# -- certificates ----------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: bytes
    client_key: bytes
    other_ca: bytes
    other_client_cert: bytes
    other_client_key: bytes
    other_key: Path  # a key that is not server_cert's
    encrypted_key: Path  # server_key under a passphrase


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    kind: str,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=kind == "ca", path_length=None), critical=True)
    )
    if kind == "ca":
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    elif kind == "server":
        san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("test CA", ca_key, None, ca_key, "ca")
    other = _cert("someone else's CA", other_key, None, other_key, "ca")
    server_key, client_key, other_client_key = _key(), _key(), _key()
    server = _cert("localhost", server_key, ca, ca_key, "server")
    client = _cert("controller", client_key, ca, ca_key, "client")
    other_client = _cert("controller", other_client_key, other, other_key, "client")
    (out / "ca.pem").write_bytes(_pem(ca))
    (out / "server.pem").write_bytes(_pem(server) + _pem(ca))
    (out / "server.key").write_bytes(_pem_key(server_key))
    (out / "other.key").write_bytes(_pem_key(other_client_key))
    encrypted = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"passphrase")
    )
    (out / "encrypted.key").write_bytes(encrypted)
    return Pki(
        ca=out / "ca.pem",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        client_cert=_pem(client),
        client_key=_pem_key(client_key),
        other_ca=_pem(other),
        other_client_cert=_pem(other_client),
        other_client_key=_pem_key(other_client_key),
        other_key=out / "other.key",
        encrypted_key=out / "encrypted.key",
    )
