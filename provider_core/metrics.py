"""Prometheus metrics of one provider, served at ``/metrics`` on the health port.

Names follow Prometheus' conventions: ``vm_provider_`` first, the unit
last (``_seconds``), counters end in ``_total``. One :class:`Metrics` per
server, on a registry of its own (two servers in one process count apart):

============================================== ========= ===================================================
``vm_provider_rpcs_total``                     counter   calls answered, by ``grpc_service``, ``method``, ``code``
``vm_provider_rpc_duration_seconds``           histogram time to answer, by ``grpc_service``, ``method``, ``code``
``vm_provider_rpcs_in_flight``                 gauge     calls being served, by ``grpc_service``, ``method``
``vm_provider_tasks_running``                  gauge     background tasks running, by ``kind``
``vm_provider_tasks_finished_total``           counter   background tasks ended (failed or not), by ``kind``
``vm_provider_tasks_failed_total``             counter   background tasks ended with an error, by ``kind``
``vm_provider_state_locks_lost_total``          counter   per-VM locks whose database session ended while held, by ``outcome``
``vm_provider_hypervisor_call_duration_seconds`` histogram backend calls into the hypervisor, by ``operation``
``vm_provider_hypervisor_errors_total``        counter   those that failed, by ``operation`` and mapped ``code``
``vm_provider_hypervisor_reachable``           gauge     1 while the backend is connected, else 0
``vm_provider_build_info``                     gauge     1, with ``version`` and ``backend``
============================================== ========= ===================================================

No label is named as a target label Prometheus adds itself (Kubernetes
service discovery adds ``service``, ``namespace``, ``pod``, ``container``,
``endpoint``; every scrape ``job`` and ``instance``): a clash would rename
the provider's label to ``exported_<name>``. So the gRPC service is
``grpc_service``, as go-grpc-prometheus names it.

A lost lock's ``outcome`` is ``retaken`` (nobody took it meanwhile) or
``taken_by_another`` (another session got it first: its task ends failed;
see docs/replicas.md).

A hypervisor ``operation`` is the backend method the core calls
(``describe``, ``create``, ``ping``...); the background work an operation
leaves runs as ``<method>_work``. Its ``code`` is the gRPC status code the
error maps to (:mod:`provider_core.status`). The process' own
``process_*`` and ``python_*`` metrics come along.

:class:`Metrics` records; :class:`NoMetrics` (``[server] metrics = false``)
records nothing at no cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

T = TypeVar("T")

#: Seconds: an RPC answers in a millisecond or waits for a disk copy (ExportDisk, ImportDisk).
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Seconds: a call into the hypervisor, or a background copy of a disk.
HYPERVISOR_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)


def version() -> str:
    try:
        return metadata.version("vm-provider")
    except metadata.PackageNotFoundError:
        return "unknown"


class NoMetrics:
    """Records nothing: the provider with ``metrics = false``."""

    registry: CollectorRegistry | None = None

    def rpc_started(self, service: str, method: str) -> None:
        """A call of ``service``/``method`` is being served."""

    def rpc_finished(self, service: str, method: str, code: str, seconds: float) -> None:
        """It was answered ``code`` (a gRPC status code's name) after ``seconds``."""

    def task_started(self, kind: str) -> None:
        """A background task of ``kind`` runs."""

    def task_finished(self, kind: str, failed: bool) -> None:
        """It ended, with an error or not."""

    def reachable(self, value: bool) -> None:
        """Whether the backend is connected."""

    def lock_lost(self, retaken: bool) -> None:
        """A held per-VM lock lost its database session: taken again, or not."""

    def timed(self, operation: str, fn: Callable[..., T], code: Callable[[BaseException], str]) -> Callable[..., T]:
        """``fn``, its duration and failures recorded as the hypervisor
        call ``operation`` (``code`` names an exception's status code)."""
        return fn


class Metrics(NoMetrics):
    """The metrics of one provider serving ``backend``."""

    def __init__(self, backend: str) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        rpc = ("grpc_service", "method")
        self._rpcs = Counter("vm_provider_rpcs", "gRPC calls answered", (*rpc, "code"), registry=registry)
        self._rpc_seconds = Histogram(
            "vm_provider_rpc_duration_seconds",
            "Time from a gRPC call's arrival to its answer",
            (*rpc, "code"),
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self._in_flight = Gauge("vm_provider_rpcs_in_flight", "gRPC calls being served", rpc, registry=registry)
        self._tasks_running = Gauge("vm_provider_tasks_running", "Background tasks running", ("kind",), registry=registry)
        self._tasks_finished = Counter(
            "vm_provider_tasks_finished", "Background tasks ended, failed or not", ("kind",), registry=registry
        )
        self._tasks_failed = Counter(
            "vm_provider_tasks_failed", "Background tasks ended with an error", ("kind",), registry=registry
        )
        self._locks_lost = Counter(
            "vm_provider_state_locks_lost",
            "Per-VM locks whose database session ended while held, taken again or by another session first",
            ("outcome",),
            registry=registry,
        )
        for outcome in ("retaken", "taken_by_another"):  # served from 0, so that increase() sees the first
            self._locks_lost.labels(outcome)
        self._calls = Histogram(
            "vm_provider_hypervisor_call_duration_seconds",
            "Time of a backend call into the hypervisor",
            ("operation",),
            buckets=HYPERVISOR_BUCKETS,
            registry=registry,
        )
        self._errors = Counter(
            "vm_provider_hypervisor_errors",
            "Backend calls into the hypervisor that failed, by the status code their error maps to",
            ("operation", "code"),
            registry=registry,
        )
        self._reachable = Gauge("vm_provider_hypervisor_reachable", "1 while the backend is connected, else 0", registry=registry)
        build = Gauge("vm_provider_build_info", "The provider's version and backend", ("version", "backend"), registry=registry)
        build.labels(version(), backend).set(1)
        # Children by label values, looked up once: labels() takes a lock and builds a key on every call.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def rpc_started(self, service: str, method: str) -> None:
        self._child(self._in_flight, service, method).inc()

    def rpc_finished(self, service: str, method: str, code: str, seconds: float) -> None:
        self._child(self._in_flight, service, method).dec()
        self._child(self._rpcs, service, method, code).inc()
        self._child(self._rpc_seconds, service, method, code).observe(seconds)

    def task_started(self, kind: str) -> None:
        self._child(self._tasks_running, kind).inc()

    def task_finished(self, kind: str, failed: bool) -> None:
        self._child(self._tasks_running, kind).dec()
        self._child(self._tasks_finished, kind).inc()
        if failed:
            self._child(self._tasks_failed, kind).inc()

    def reachable(self, value: bool) -> None:
        self._reachable.set(1 if value else 0)

    def lock_lost(self, retaken: bool) -> None:
        self._child(self._locks_lost, "retaken" if retaken else "taken_by_another").inc()

    def timed(self, operation: str, fn: Callable[..., T], code: Callable[[BaseException], str]) -> Callable[..., T]:
        histogram = self._child(self._calls, operation)

        def call(*args: Any) -> T:
            started = time.perf_counter()
            try:
                return fn(*args)
            except BaseException as exc:
                self._child(self._errors, operation, code(exc)).inc()
                raise
            finally:
                histogram.observe(time.perf_counter() - started)

        return call


def exposition(metrics: NoMetrics, accept: str) -> tuple[bytes, str]:
    """What a scrape of ``/metrics`` answers, and its content type: the
    format the scraper's ``Accept`` header asks for (OpenMetrics, or
    Prometheus' text format)."""
    assert metrics.registry is not None
    encode, content_type = choose_encoder(accept)
    return encode(metrics.registry), content_type


__all__ = ["Metrics", "NoMetrics", "exposition", "version"]
