"""Fixtures shared by the core's tests: real servers on 127.0.0.1 port 0
serving the test backends of ``tests/plugins`` (installed as a distribution
with real entry points: ``pip install -e tests/plugins``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import grpc
import pytest
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
