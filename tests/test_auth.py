"""Refused calls: logged at WARNING with method, peer and reason, never the
token; rate-limited so that a client retrying in a loop cannot flood the log."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import pytest
from pydantic import SecretStr

from provider_core.auth import RefusalLog
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins

Harness = Callable[..., ProviderHarness]
TOKEN = "0123456789abcdef-token"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "provider_core.auth" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([], "no authorization metadata"),
        ([("authorization", "Bearer wrong-" + TOKEN)], "wrong token"),
        ([("authorization", TOKEN)], "authorization is not a bearer token"),
        ([("authorization", f"Basic {TOKEN}")], "authorization is not a bearer token"),
    ],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
def test_a_refused_call_is_logged_with_method_peer_and_reason(
    harness: Harness, caplog: pytest.LogCaptureFixture, metadata: list[tuple[str, str]], reason: str
) -> None:
    caplog.set_level(logging.INFO)
    h = harness("memory", auth_token=SecretStr(TOKEN))
    with pytest.raises(grpc.RpcError) as info:
        h.stub.Describe(pb.DescribeRequest(id="vm"), metadata=metadata, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    h.stop()
    (line,) = refusals(caplog)
    assert line.startswith("refused /provider.v1.Provider/Describe from ipv4:127.0.0.1:")
    assert line.endswith(f": {reason}")
    assert TOKEN not in caplog.text


def test_the_scheme_is_case_insensitive(harness: Harness) -> None:
    h = harness("memory", auth_token=SecretStr(TOKEN))
    assert h.stub.Validate(pb.ValidateRequest(), metadata=[("authorization", f"bearer {TOKEN}")], timeout=5).ok


def test_refusals_are_rate_limited_on_a_real_server(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    h = harness("memory", auth_token=SecretStr(TOKEN))
    for _ in range(40):
        with pytest.raises(grpc.RpcError):
            h.stub.Validate(pb.ValidateRequest(), timeout=5)
    h.stop()
    assert 1 <= len(refusals(caplog)) <= 11  # the burst, and what the run's length let trickle in


def test_the_rate_limit_says_how_many_lines_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    log = RefusalLog(burst=3, period=60.0, clock=lambda: now[0])
    for _ in range(10):
        log.refused("/m", "ipv4:127.0.0.1:1", "wrong token")
    assert len(refusals(caplog)) == 3
    now[0] += 20.0  # a third of the period: one more line allowed
    log.refused("/m", "ipv4:127.0.0.1:1", "wrong token")
    log.refused("/m", "ipv4:127.0.0.1:1", "wrong token")
    lines = refusals(caplog)
    assert lines[3] == "refused /m from ipv4:127.0.0.1:1: wrong token (7 more refused call(s) not logged)"
    assert len(lines) == 4
