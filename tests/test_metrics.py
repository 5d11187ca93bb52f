"""Prometheus metrics at /metrics on the health port: a scripted run of
calls against a real server, then a scrape whose counts must match the
calls made, code by code."""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from provider_core import errors
from provider_core.metrics import version
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins
SERVICE = "provider.v1.Provider"


def scrape(h: ProviderHarness) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by name and labels."""
    assert h.server is not None
    assert h.server.http is not None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{h.server.http.port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def by(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name`` keyed by the values of the labels ``keys``."""
    return {tuple(dict(labels)[k] for k in keys): value for (n, labels), value in samples.items() if n == name}


class Client:
    """Calls the provider and counts what each call was answered."""

    def __init__(self, h: ProviderHarness) -> None:
        self.stub = h.stub
        self.answered: Counter[tuple[str, str]] = Counter()

    def __call__(self, method: str, request: Any, **kw: Any) -> Any:
        try:
            response = getattr(self.stub, method)(request, timeout=10, **kw)
        except grpc.RpcError as exc:
            self.answered[method, exc.code().name] += 1
            return None
        self.answered[method, "OK"] += 1
        return response

    def wait(self, task: pb.TaskRef) -> str:
        while True:
            state = self("TaskStatus", pb.TaskStatusRequest(task=task))
            if state.done:
                return str(state.error)
            time.sleep(0.02)


@pytest.fixture
def memory() -> Iterator[ProviderHarness]:
    with ProviderHarness.for_backend("memory", {"background": True}, health_port=0) as h:
        yield h


def test_counts_match_the_calls_made(memory: ProviderHarness) -> None:
    call = Client(memory)
    backend: Any = memory.backend
    tasks = []
    for name in ("web-0", "web-1", "slow-2"):
        made = call("Create", pb.CreateRequest(name=name))
        tasks.append(made.task)
    call("Create", pb.CreateRequest(name=""))  # INVALID_ARGUMENT: never reaches the backend
    for name in ("web-0", "web-1", "slow-2"):
        call("Describe", pb.DescribeRequest(id=name))
    call("Describe", pb.DescribeRequest(id="nobody"))  # exists=false: the backend said NOT_FOUND
    call("Reconfigure", pb.ReconfigureRequest(id="web-0"))  # the memory backend has no RECONFIGURE
    assert [call.wait(t) for t in tasks] == ["", "", ""]
    backend.fail_with = errors.Unavailable("the hypervisor went away")
    call("Describe", pb.DescribeRequest(id="web-1"))  # UNAVAILABLE from the backend
    backend.fail_with = None
    backend.gate.clear()  # the work on a slow- VM waits for the gate inside the backend
    deleted = call("Delete", pb.DeleteRequest(id="slow-2"))
    backend.fail_with = errors.Aborted("a conflicting change ran first")
    backend.gate.set()
    error = call.wait(deleted.task)  # the backend call made the task; its work fails
    backend.fail_with = None
    assert "conflicting" in error
    call("GetCapabilities", pb.GetCapabilitiesRequest())

    samples = scrape(memory)
    answered = by(samples, "vm_provider_rpcs_total", "grpc_service", "method", "code")
    assert answered == {(SERVICE, m, c): float(n) for (m, c), n in call.answered.items()}
    assert ("Create", "INVALID_ARGUMENT") in call.answered
    assert ("Reconfigure", "UNIMPLEMENTED") in call.answered
    assert ("Describe", "UNAVAILABLE") in call.answered
    timed = by(samples, "vm_provider_rpc_duration_seconds_count", "grpc_service", "method", "code")
    assert timed == answered
    slowest = by(samples, "vm_provider_rpc_duration_seconds_bucket", "method", "code", "le")
    assert slowest["Create", "OK", "+Inf"] == 3
    assert set(by(samples, "vm_provider_rpcs_in_flight", "method").values()) == {0.0}

    assert by(samples, "vm_provider_tasks_finished_total", "kind") == {("create",): 3.0, ("delete",): 1.0}
    assert by(samples, "vm_provider_tasks_failed_total", "kind") == {("delete",): 1.0}
    assert by(samples, "vm_provider_tasks_running", "kind") == {("create",): 0.0, ("delete",): 0.0}

    calls = by(samples, "vm_provider_hypervisor_call_duration_seconds_count", "operation")
    assert calls["describe",] == 5  # 3 found, 1 missing, 1 unavailable
    assert calls["create",] == 3
    assert calls["create_work",] == 3
    assert calls["delete_work",] == 1
    hv_errors = by(samples, "vm_provider_hypervisor_errors_total", "operation", "code")
    assert hv_errors == {("describe", "NOT_FOUND"): 1.0, ("describe", "UNAVAILABLE"): 1.0, ("delete_work", "ABORTED"): 1.0}
    assert samples["vm_provider_hypervisor_reachable", frozenset()] == 1
    assert samples["vm_provider_build_info", frozenset({("version", version()), ("backend", "memory")})] == 1
    assert samples["process_resident_memory_bytes", frozenset()] > 0


def test_in_flight_counts_a_call_while_it_is_served(memory: ProviderHarness) -> None:
    backend: Any = memory.backend
    backend.gate.clear()  # Describe of a slow- VM waits inside the backend
    stub = memory.stub
    done = threading.Event()

    def describe() -> None:
        stub.Describe(pb.DescribeRequest(id="slow-1"), timeout=30)
        done.set()

    thread = threading.Thread(target=describe)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while by(scrape(memory), "vm_provider_rpcs_in_flight", "method").get(("Describe",)) != 1:
            assert time.monotonic() < deadline, "the Describe held in the backend is not counted in flight"
            time.sleep(0.02)
    finally:
        backend.gate.set()
        thread.join(30)
    assert done.is_set()
    assert by(scrape(memory), "vm_provider_rpcs_in_flight", "method")["Describe",] == 0


def test_refused_calls_are_counted_and_reachability_follows_the_backend(tmp_path: Any) -> None:
    down = tmp_path / "down"
    table = {"fail_connect_file": str(down)}
    with ProviderHarness.for_backend("memory", table, health_port=0, auth_token="s3cret", health_interval=0.05) as h:
        with pytest.raises(grpc.RpcError) as refused:
            h.stub.ListVMs(pb.ListVMsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        h.stub.ListVMs(pb.ListVMsRequest(), metadata=[("authorization", "Bearer s3cret")], timeout=10)
        assert h.channel is not None
        for n in range(3):  # names made up by a client: one series, whatever they are
            with pytest.raises(grpc.RpcError) as unknown:
                h.channel.unary_unary(f"/made.up.Service{n}/Nope")(b"", timeout=10)
            assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answered = by(scrape(h), "vm_provider_rpcs_total", "method", "code")
        assert answered == {("ListVMs", "UNAUTHENTICATED"): 1.0, ("ListVMs", "OK"): 1.0, ("unknown", "UNAUTHENTICATED"): 3.0}
        assert scrape(h)["vm_provider_hypervisor_reachable", frozenset()] == 1
        down.write_text("")
        deadline = time.monotonic() + 10
        while scrape(h)["vm_provider_hypervisor_reachable", frozenset()] != 0:
            assert time.monotonic() < deadline, "reachable stays 1 with the backend down"
            time.sleep(0.05)
        assert by(scrape(h), "vm_provider_hypervisor_errors_total", "operation", "code")["ping", "UNAVAILABLE"] >= 1


def test_calls_of_unknown_methods_are_counted_and_logged_without_auth_too(
    memory: ProviderHarness, caplog: pytest.LogCaptureFixture
) -> None:
    assert memory.channel is not None
    caplog.set_level(logging.INFO, logger="provider_core.access")
    for n in range(3):  # names made up by a client: one series, whatever they are
        with pytest.raises(grpc.RpcError) as unknown:
            memory.channel.unary_unary(f"/made.up.Service{n}/Nope")(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert f"/made.up.Service{n}/Nope" in (unknown.value.details() or "")
    answered = by(scrape(memory), "vm_provider_rpcs_total", "grpc_service", "method", "code")
    assert answered == {("", "unknown", "UNIMPLEMENTED"): 3.0}
    lines = [r for r in caplog.records if r.name == "provider_core.access"]
    assert [(r.method, r.code) for r in lines] == [(f"/made.up.Service{n}/Nope", "UNIMPLEMENTED") for n in range(3)]  # type: ignore[attr-defined]


def test_a_call_whose_deadline_passes_while_served_counts_as_deadline_exceeded_one_given_up_as_cancelled(
    memory: ProviderHarness,
) -> None:
    """gRPC cancels a call on the server when its deadline passes: that
    call is counted as the client saw it, DEADLINE_EXCEEDED; one the client
    cancels stays CANCELLED."""
    backend: Any = memory.backend
    backend.gate.clear()  # Describe of a slow- VM waits inside the backend
    try:
        with pytest.raises(grpc.RpcError) as late:
            memory.stub.Describe(pb.DescribeRequest(id="slow-1"), timeout=0.3)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        given_up = memory.stub.Describe.future(pb.DescribeRequest(id="slow-2"), timeout=30)
        deadline = time.monotonic() + 10
        while by(scrape(memory), "vm_provider_rpcs_in_flight", "method").get(("Describe",)) != 1:
            assert time.monotonic() < deadline, "the second Describe never reached the server"
            time.sleep(0.02)
        given_up.cancel()
        while by(scrape(memory), "vm_provider_rpcs_in_flight", "method").get(("Describe",)) != 0:
            assert time.monotonic() < deadline, "the cancelled Describe is still served"
            time.sleep(0.02)
    finally:
        backend.gate.set()
    answered = by(scrape(memory), "vm_provider_rpcs_total", "method", "code")
    assert answered == {("Describe", "DEADLINE_EXCEEDED"): 1.0, ("Describe", "CANCELLED"): 1.0}


def test_metrics_off_serve_no_metrics_page() -> None:
    with ProviderHarness.for_backend("memory", health_port=0, metrics=False) as h:
        assert h.server is not None
        assert h.server.http is not None
        h.stub.ListVMs(pb.ListVMsRequest(), timeout=10)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with pytest.raises(urllib.error.HTTPError) as missing:
            opener.open(f"http://127.0.0.1:{h.server.http.port}/metrics", timeout=5)
        assert missing.value.code == 404
        with opener.open(f"http://127.0.0.1:{h.server.http.port}/healthz", timeout=5) as response:
            assert response.status == 200


def test_the_docs_list_every_metric_and_their_queries_use_only_those() -> None:
    """docs/running.md's table names each vm_provider_ metric the server
    exports, with its type; every name its PromQL samples use is one of them."""
    from pathlib import Path

    from provider_core.metrics import Metrics

    doc = (Path(__file__).resolve().parents[1] / "docs" / "running.md").read_text()
    section = doc.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(vm_provider_\w+)` \| (\w+) \|", section, flags=re.M))
    exported = {}
    for family in Metrics("memory").registry.collect():  # type: ignore[union-attr]
        if family.name.startswith("vm_provider_"):
            exported[family.name + ("_total" if family.type == "counter" else "")] = family.type
    assert documented == exported
    queries = "".join(re.findall(r"```promql\n(.*?)```", section, flags=re.S))
    used = set(re.findall(r"\bvm_provider_\w+", queries))
    assert used, "no PromQL samples"
    series = {n + s for n, t in exported.items() for s in (("_bucket", "_count", "_sum") if t == "histogram" else ("",))}
    assert used <= series, used - series
