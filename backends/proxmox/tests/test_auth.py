"""Logging in to the Proxmox API: tokens, passwords with tickets that
expire, TLS verification, and an API that does not answer."""

from __future__ import annotations

import socket
import time
from typing import Any

import grpc
import pytest
from urllib3.exceptions import InsecureRequestWarning

from provider_core.pb import provider_pb2 as pb

LOGIN = ("POST", "/api2/json/access/ticket")


@pytest.fixture
def password_settings(settings: dict[str, Any]) -> dict[str, Any]:
    table = {k: v for k, v in settings.items() if k not in ("token_id", "token_secret")}
    return {**table, "username": "root@pam", "password": "secret"}


def logins(pve: Any) -> int:
    return sum(1 for m, p, _ in pve.requests if (m, p) == LOGIN)


def test_token_auth_sends_no_login(ops: Any, pve: Any) -> None:
    vm = ops.create("tok-1")
    assert ops.state(vm) == "Off"
    assert logins(pve) == 0
    assert ops.stub.Validate(pb.ValidateRequest()).ok


def test_wrong_token_is_unauthenticated(provider: Any, ops_for: Any, settings: dict[str, Any]) -> None:
    ops = ops_for(provider({**settings, "token_secret": "wrong-secret-value"}))
    code, message = ops.fails(lambda: ops.stub.ListVMs(pb.ListVMsRequest(), timeout=10))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "wrong-secret-value" not in message
    report = ops.stub.Validate(pb.ValidateRequest(), timeout=10)
    assert not report.ok
    assert "credentials" in report.message


def test_password_auth_with_ticket(provider: Any, ops_for: Any, password_settings: dict[str, Any], pve: Any) -> None:
    ops = ops_for(provider(password_settings))
    vm = ops.create("pw-1")
    ops.power(vm, pb.POWER_OP_ON)
    assert ops.state(vm) == "On"
    assert logins(pve) == 1


def test_ticket_expiry_logs_in_again(provider: Any, ops_for: Any, password_settings: dict[str, Any], pve: Any) -> None:
    ops = ops_for(provider(password_settings))
    vm = ops.create("pw-2")
    for ticket in pve.tickets.values():
        ticket["expires"] = time.time() - 1  # the two hours are over
    assert ops.state(vm) == "Off"
    assert logins(pve) == 2
    pve.revoke_tickets()  # and once more, on a POST (CSRF token renewed too)
    ops.power(vm, pb.POWER_OP_ON)
    assert ops.state(vm) == "On"
    assert logins(pve) == 3


def test_wrong_password(provider: Any, ops_for: Any, password_settings: dict[str, Any]) -> None:
    ops = ops_for(provider({**password_settings, "password": "not-the-password"}))
    code, message = ops.fails(lambda: ops.stub.ListVMs(pb.ListVMsRequest(), timeout=10))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "not-the-password" not in message
    report = ops.stub.Validate(pb.ValidateRequest(), timeout=10)
    assert not report.ok
    assert "login failed" in report.message


def test_tls_verified_by_default(provider: Any, ops_for: Any, settings: dict[str, Any]) -> None:
    table = {k: v for k, v in settings.items() if k != "ca_file"}  # the simulator's CA is not a system CA
    ops = ops_for(provider(table))
    code, message = ops.fails(lambda: ops.stub.ListVMs(pb.ListVMsRequest(), timeout=10))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "TLS" in message
    report = ops.stub.Validate(pb.ValidateRequest(), timeout=10)
    assert not report.ok
    assert "TLS" in report.message


def test_insecure_switch(provider: Any, ops_for: Any, settings: dict[str, Any]) -> None:
    table = {k: v for k, v in settings.items() if k != "ca_file"}
    unverified = "Unverified HTTPS request"  # said loudly, every time it happens
    with pytest.warns(InsecureRequestWarning, match=unverified):
        ops = ops_for(provider({**table, "verify_tls": False}))  # connecting logs in
    with pytest.warns(InsecureRequestWarning, match=unverified):
        report = ops.stub.Validate(pb.ValidateRequest(), timeout=10)
    assert report.ok


def test_unreachable_api_is_unavailable(provider: Any, ops_for: Any, settings: dict[str, Any]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ops = ops_for(provider({**settings, "endpoint": f"https://127.0.0.1:{port}"}))
    code, message = ops.fails(lambda: ops.stub.Describe(pb.DescribeRequest(id="100"), timeout=10))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "cannot reach" in message
