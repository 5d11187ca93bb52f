"""The backend over a transport libvirt counts as remote.

``qemu+ext`` runs a command as the link; here it is netcat relaying to the
local daemon's socket, so the link can be cut or stalled at will. Over a
remote link the backend runs libvirt's event loop for as long as the
connection is open (keepalive probes, the close callback), notices a link
that died or went silent, and works again on a new one.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.libvirtd


def eventually(check: Callable[[], bool], what: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"never happened within {timeout:.0f}s: {what}"
        time.sleep(0.1)


@pytest.fixture
def remote(relay: Any, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[ProviderHarness, Any]]:
    from vm_provider_libvirt import connection

    caplog.set_level(logging.INFO, logger="vm_provider_libvirt")
    with ProviderHarness.for_backend("libvirt", {"uri": relay.uri, "domain_type": "qemu"}) as harness:
        try:
            assert connection.event_loop_running()  # keepalive needs it, as long as the connection is open
            yield harness, relay
        finally:
            relay.kill_all()  # first: closing a connection over a stalled link would wait for it
    assert not connection.event_loop_running()  # the connection closed with the server


def test_a_link_that_dies_is_noticed_and_replaced(remote: tuple[ProviderHarness, Any], caplog: pytest.LogCaptureFixture) -> None:
    h, relay = remote
    assert h.stub.Validate(pb.ValidateRequest(), timeout=30).ok
    generation = h.backend.session.connection.generation  # type: ignore[attr-defined]
    os.kill(relay.latest(), signal.SIGKILL)
    # The event loop reads the closed link and runs the close callback at once.
    eventually(lambda: "libvirt closed the connection" in caplog.text, "the close callback", timeout=10)
    h.stub.ListVMs(pb.ListVMsRequest(), timeout=30)
    assert h.backend.session.connection.generation == generation + 1  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_link_that_goes_silent_is_given_up_by_keepalive(
    remote: tuple[ProviderHarness, Any], caplog: pytest.LogCaptureFixture
) -> None:
    h, relay = remote
    assert h.stub.Validate(pb.ValidateRequest(), timeout=30).ok
    generation = h.backend.session.connection.generation  # type: ignore[attr-defined]
    os.kill(relay.latest(), signal.SIGSTOP)  # the link stays open but nothing gets through
    # Probes every 5 s, 3 unanswered: the link is declared dead within about 20 s.
    eventually(lambda: "libvirt closed the connection" in caplog.text, "keepalive giving up", timeout=40)
    h.stub.ListVMs(pb.ListVMsRequest(), timeout=30)
    assert h.backend.session.connection.generation == generation + 1  # type: ignore[attr-defined]
