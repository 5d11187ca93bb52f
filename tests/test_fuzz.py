"""Fuzzing every RPC of a real server, on the sim backend and on libvirt's
test driver, with hypothesis.

Each example is one request whose fields are drawn from hostile strategies:
strings with control characters, NUL and huge lengths; JSON of arbitrary
shape and depth, near-valid payloads with a field replaced, numbers at and
past 32- and 64-bit limits. Whatever the request, the server must answer
with a code a client can act on (never UNKNOWN or INTERNAL), never show a
traceback or the token, log no secret, and stay healthy.

Bounded for CI (100 examples per RPC and backend, about 30 s in all). A longer run, for developers:

    VMP_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from vmp_testplugins.skips import missing

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

EXAMPLES = int(os.environ.get("VMP_FUZZ_EXAMPLES", "100"))
TOKEN = "fuzz-token-9c41d7e2b05a"
SECRET = "fuzz-secret-77f3a1c9e4"  # sent as a credential: must never come back or be logged
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

# -- strategies -----------------------------------------------------------------

_hostile_chars = st.sampled_from(["\x00", "\n", "\r", "\x1b", "\x7f", "\u202e", "\ud7ff", "'", '"', "<", "&", "/", "%"])
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(
        st.one_of(st.characters(exclude_categories=("Cs",)), _hostile_chars), max_size=300
    ),  # protobuf cannot send lone surrogates
    st.sampled_from(["../../etc/passwd", "%00", "a\x00b", "br0\n<x/>", "$(reboot)", "'; DROP TABLE vms; --"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "\x00", "é"]), st.integers(250, 70_000)),
    st.sampled_from(["", " ", "vm", "alias:vm", "00000000-0000-0000-0000-000000000000", "default"]),
)
big_numbers = st.one_of(
    st.integers(-(2**31) - 2, -(2**31) + 2),
    st.integers(2**31 - 2, 2**31 + 2),
    st.integers(2**63 - 2, 2**63 + 2),
    st.integers(-(2**64), 2**64),
    st.integers(10**300, 10**301),
)
_scalars = st.one_of(st.none(), st.booleans(), big_numbers, st.floats(allow_nan=False), hostile_text)
any_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hostile_text, inner, max_size=5),
    max_leaves=30,
)

#: Valid payloads whose keys the near-valid strategy replaces one at a time.
PAYLOADS: dict[str, dict[str, Any] | list[Any]] = {
    "class_json": {"CPU": 2, "MemoryMiB": 1024, "Firmware": "BIOS", "ExtraConfig": {"a": "b"}},
    "image_json": {"URL": "http://127.0.0.1:1/i.qcow2", "Format": "qcow2"},
    "networks_json": [{"NetworkName": "default", "MacAddress": "52:54:00:12:34:56"}],
    "disks_json": [{"SizeGiB": 1, "Name": "data"}],
    "placement_json": {"Datastore": "default"},
    "customize_json": {"Hostname": "h", "Tags": ["a"]},
    "desired_json": {"Class": {"CPU": 1, "MemoryMiB": 512}},
    "storage_options_json": {"backend": "nfs", "server": "filer", "export": "/export", "path": "p", "uid": 0},
}


def _near(payload: dict[str, Any] | list[Any]) -> st.SearchStrategy[str]:
    """The payload with one value (or an entry of its list) replaced."""
    if isinstance(payload, list):
        return st.builds(lambda v: json.dumps([v, *payload[1:]], default=str), any_json)
    keys = st.sampled_from(sorted(payload))
    return st.builds(lambda k, v: json.dumps({**payload, k: v}, default=str), keys, any_json)


def json_field(name: str) -> st.SearchStrategy[str]:
    deep = st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)
    return st.one_of(
        st.just(json.dumps(PAYLOADS[name])),
        _near(PAYLOADS[name]),
        any_json.map(lambda v: json.dumps(v, default=str)),
        hostile_text,
        deep,
    )


def _field(message: Any, name: str) -> st.SearchStrategy[Any]:
    field = message.DESCRIPTOR.fields_by_name[name]
    if name.endswith("_json"):
        return json_field(name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return st.dictionaries(hostile_text, st.one_of(hostile_text, st.just(SECRET)), max_size=4)
    if field.is_repeated:
        return st.lists(hostile_text, max_size=20)
    if field.message_type is not None:  # TaskRef
        return st.builds(lambda i: pb.TaskRef(id=i), hostile_text)
    if field.enum_type is not None:
        return st.integers(-3, 7)
    if field.type == field.TYPE_BOOL:
        return st.booleans()
    if field.type == field.TYPE_BYTES:
        return st.one_of(st.binary(max_size=100), st.just(b"\x00" * 300_000))
    if field.type in (field.TYPE_INT32, field.TYPE_INT64):
        bits = 31 if field.type == field.TYPE_INT32 else 63
        return st.integers(-(2**bits), 2**bits - 1)
    return hostile_text


def request(rpc: str) -> st.SearchStrategy[Any]:
    method = pb.DESCRIPTOR.services_by_name["Provider"].methods_by_name[rpc]
    message = getattr(pb, method.input_type.name)
    fields = {f.name: _field(message, f.name) for f in message.DESCRIPTOR.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: message(**values))


RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["Provider"].methods]

# -- servers --------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sim", "libvirt"])
def server(request: pytest.FixtureRequest) -> Iterator[ProviderHarness]:
    table = {"uri": "test:///default"} if request.param == "libvirt" else {}
    if request.param == "libvirt":
        pytest.importorskip(
            "vm_provider_libvirt", reason=missing("the libvirt backend is not installed (make setup installs it)")
        )
    with ProviderHarness.for_backend(request.param, table, auth_token=SecretStr(TOKEN)) as h:
        yield h


def _call(h: ProviderHarness, rpc: str, message: Any) -> grpc.RpcError | None:
    try:
        getattr(h.stub, rpc)(message, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")])
    except grpc.RpcError as err:
        return err
    return None


@pytest.mark.slow
@pytest.mark.parametrize("rpc", RPCS)
def test_any_request_gets_an_answer_a_client_can_act_on(
    server: ProviderHarness, rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=os.environ.get("CI") == "true",
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(message=request(rpc))
    def one(message: Any) -> None:
        err = _call(server, rpc, message)
        if err is None:
            return
        details = err.details() or ""
        assert err.code() not in NEVER, f"{rpc} answered {err.code().name}: {details}"
        assert "Traceback" not in details, details
        assert 'File "' not in details, details
        assert TOKEN not in details, details
        assert SECRET not in details, details

    one()
    logged = caplog.text
    assert TOKEN not in logged
    assert SECRET not in logged
    health = health_pb2_grpc.HealthStub(server.channel)  # type: ignore[no-untyped-call]
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
