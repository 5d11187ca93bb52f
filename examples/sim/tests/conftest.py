"""Fixtures of the sim backend's tests: real servers on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

FAST: dict[str, Any] = {"task_seconds": 0.01, "shutdown_seconds": 0.05}

Start = Callable[..., ProviderHarness]


@pytest.fixture
def start() -> Iterator[Start]:
    """``start(**settings)``: a server on the sim backend (fast by default)."""
    started: list[ProviderHarness] = []

    def make(**settings: Any) -> ProviderHarness:
        h = ProviderHarness.for_backend("sim", {**FAST, **settings})
        started.append(h)
        return h.start()

    yield make
    for h in reversed(started):
        h.stop()


@pytest.fixture
def sim(start: Start) -> ProviderHarness:
    return start()


@pytest.fixture
def create(sim: ProviderHarness) -> Callable[..., str]:
    """``create(name, **request fields)``: create a VM and wait for it."""

    def make(name: str, **fields: Any) -> str:
        resp = sim.stub.Create(pb.CreateRequest(name=name, **fields))
        sim.wait(resp.task)
        return str(resp.id)

    return make
