"""The server around the service: health, reflection, TLS, mutual TLS, tokens."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from pydantic import SecretStr

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.testing import ProviderHarness

Pki = Any  # conftest.Pki

pytestmark = pytest.mark.needs_test_plugins

Harness = Callable[..., ProviderHarness]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.02)


# -- health --------------------------------------------------------------------------


@pytest.mark.parametrize(("loop", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_event_loop_is_a_setting(harness: Harness, loop: str, module: str) -> None:
    h = harness("memory", event_loop=loop)
    h.stub.Create(pb.CreateRequest(name="vm"))
    assert h.stub.Describe(pb.DescribeRequest(id="vm"), timeout=10).exists
    assert type(h._loop).__module__.partition(".")[0] == module


def test_serving_once_the_backend_connected(memory: ProviderHarness) -> None:
    assert health(memory.channel) == SERVING  # type: ignore[arg-type]
    assert health(memory.channel, "provider.v1.Provider") == SERVING  # type: ignore[arg-type]
    assert memory.backend.connects == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("failure", ["unavailable", "crash"])
def test_not_serving_while_the_backend_cannot_connect(harness: Harness, tmp_path: Path, failure: str) -> None:
    flag = tmp_path / "down"
    flag.write_text(failure)
    h = harness("memory", {"fail_connect_file": str(flag)}, health_interval=0.05)
    assert health(h.channel) == NOT_SERVING  # type: ignore[arg-type]
    assert health(h.channel, "provider.v1.Provider") == NOT_SERVING  # type: ignore[arg-type]
    # The provider itself still answers.
    assert not h.stub.Describe(pb.DescribeRequest(id="x")).exists
    flag.unlink()
    eventually(lambda: health(h.channel) == SERVING, "reconnected")  # type: ignore[arg-type]
    assert health(h.channel, "provider.v1.Provider") == SERVING  # type: ignore[arg-type]
    flag.write_text(failure)
    eventually(lambda: health(h.channel) == NOT_SERVING, "a failed ping noticed")  # type: ignore[arg-type]
    flag.unlink()
    eventually(lambda: health(h.channel) == SERVING, "reconnected again")  # type: ignore[arg-type]
    assert h.backend.connects >= 3  # type: ignore[attr-defined]


def test_watch_streams_changes(harness: Harness, tmp_path: Path) -> None:
    flag = tmp_path / "down"
    flag.write_text("unavailable")
    h = harness("memory", {"fail_connect_file": str(flag)}, health_interval=0.05)
    stream = health_pb2_grpc.HealthStub(h.channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
    assert next(stream).status == NOT_SERVING
    flag.unlink()
    assert next(stream).status == SERVING
    stream.cancel()


CORRUPT = b"\x0a\xff\xff\xff"


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("/grpc.health.v1.Health/Check", "unary_unary"),
        ("/grpc.health.v1.Health/Watch", "unary_stream"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "stream_stream"),
    ],
)
def test_corrupt_health_and_reflection_requests_are_invalid_argument(memory: ProviderHarness, method: str, kind: str) -> None:
    call = getattr(memory.channel, kind)(method)
    send = {
        "unary_unary": lambda: call(CORRUPT, timeout=10),
        "unary_stream": lambda: list(call(CORRUPT, timeout=10)),
        "stream_stream": lambda: list(call(iter([CORRUPT]), timeout=10)),
    }[kind]
    with pytest.raises(grpc.RpcError) as info:
        send()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid grpc." in info.value.details()


def test_an_unknown_service_is_not_found(memory: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        health(memory.channel, "nosuch.Service")  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- reflection ----------------------------------------------------------------------


def test_reflection_lists_and_describes_the_provider(memory: ProviderHarness) -> None:
    db = ProtoReflectionDescriptorDatabase(memory.channel)
    services = set(db.get_services())
    assert {"provider.v1.Provider", "grpc.health.v1.Health"} <= services
    service = DescriptorPool(db).FindServiceByName("provider.v1.Provider")
    assert len(service.methods) == 18
    describe = service.methods_by_name["Describe"]
    assert (describe.input_type.full_name, describe.output_type.full_name) == (
        "provider.v1.DescribeRequest",
        "provider.v1.DescribeResponse",
    )
    assert [f.number for f in describe.output_type.fields] == [1, 2, 3, 4, 5]


# -- TLS -----------------------------------------------------------------------------


def _validate(channel: grpc.Channel) -> pb.ValidateResponse:
    try:
        return pb_grpc.ProviderStub(channel).Validate(pb.ValidateRequest(), timeout=5)
    finally:
        channel.close()


def test_tls(harness: Harness, pki: Pki) -> None:
    h = harness("memory", tls_cert=pki.server_cert, tls_key=pki.server_key)
    assert _validate(h.make_channel(grpc.ssl_channel_credentials(pki.ca.read_bytes()))).ok
    # A plaintext client cannot talk to it, nor one that trusts another CA.
    with pytest.raises(grpc.RpcError) as plain:
        _validate(h.make_channel())
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as wrong_ca:
        _validate(h.make_channel(grpc.ssl_channel_credentials(pki.other_ca)))
    assert wrong_ca.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(harness: Harness, pki: Pki) -> None:
    h = harness("memory", tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    ca = pki.ca.read_bytes()
    assert _validate(h.make_channel(grpc.ssl_channel_credentials(ca, pki.client_key, pki.client_cert))).ok
    with pytest.raises(grpc.RpcError) as no_cert:
        _validate(h.make_channel(grpc.ssl_channel_credentials(ca)))
    assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as foreign_cert:
        _validate(h.make_channel(grpc.ssl_channel_credentials(ca, pki.other_client_key, pki.other_client_cert)))
    assert foreign_cert.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError):
        _validate(h.make_channel())
    assert h.backend.calls["validate"] == 1  # type: ignore[attr-defined]


# -- bearer tokens -------------------------------------------------------------------

TOKEN = "0123456789abcdef-token"


@pytest.fixture
def guarded(harness: Harness) -> ProviderHarness:
    return harness("memory", auth_token=SecretStr(TOKEN))


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Bearer wrong")],
        [("authorization", TOKEN)],
        [("authorization", f"Basic {TOKEN}")],
        [("x-token", TOKEN)],
    ],
    ids=["missing", "wrong", "no-scheme", "basic", "other-header"],
)
def test_a_missing_or_wrong_token_is_unauthenticated(guarded: ProviderHarness, metadata: list[tuple[str, str]]) -> None:
    for call in (
        lambda: guarded.stub.Validate(pb.ValidateRequest(), metadata=metadata, timeout=5),
        lambda: guarded.stub.Create(pb.CreateRequest(name="vm"), metadata=metadata, timeout=5),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert TOKEN not in info.value.details()
    assert sum(guarded.backend.calls.values()) == 0  # type: ignore[attr-defined]


def test_no_method_answers_without_the_token(guarded: ProviderHarness) -> None:
    """Every method of the provider service, whatever its shape, and a
    method no service has: UNAUTHENTICATED before anything else runs."""
    service = pb.DESCRIPTOR.services_by_name["Provider"]
    paths = [f"/{service.full_name}/{m.name}" for m in service.methods] + [f"/{service.full_name}/NoSuchMethod"]
    for path in paths:
        method = service.methods_by_name.get(path.rsplit("/", 1)[1])
        streams = (method.client_streaming, method.server_streaming) if method else (False, False)
        kind = ("stream_" if streams[0] else "unary_") + ("stream" if streams[1] else "unary")
        call = getattr(guarded.channel, kind)(path)
        request: Any = iter([b""]) if streams[0] else b""
        with pytest.raises(grpc.RpcError) as info:
            list(call(request, timeout=5)) if streams[1] else call(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
    assert sum(guarded.backend.calls.values()) == 0  # type: ignore[attr-defined]


def test_the_right_token_works(guarded: ProviderHarness) -> None:
    auth = [("authorization", f"Bearer {TOKEN}")]
    guarded.stub.Create(pb.CreateRequest(name="vm"), metadata=auth)
    assert guarded.stub.Describe(pb.DescribeRequest(id="vm"), metadata=auth).exists


def test_health_needs_no_token(guarded: ProviderHarness) -> None:
    assert health(guarded.channel) == SERVING  # type: ignore[arg-type]


def test_reflection_needs_the_token(guarded: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ProtoReflectionDescriptorDatabase(guarded.channel).get_services()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_and_tls_together(harness: Harness, pki: Pki) -> None:
    h = harness("memory", tls_cert=pki.server_cert, tls_key=pki.server_key, auth_token=SecretStr(TOKEN))
    call_creds = grpc.access_token_call_credentials(TOKEN)
    creds = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(pki.ca.read_bytes()), call_creds)
    assert _validate(h.make_channel(creds)).ok


async def test_guarded_registrar_keeps_every_call_shape_and_refuses_corrupt_requests() -> None:
    """Each shape, in both streaming styles grpc.aio offers (yield, context.write)."""
    from provider_core.status import GuardedRegistrar

    request, response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse

    async def unary(req: Any, ctx: Any) -> Any:
        return response(status=len(req.service))

    async def unary_yields(req: Any, ctx: Any) -> Any:
        for _ in range(2):
            yield response(status=len(req.service))

    async def gather(reqs: Any, ctx: Any) -> Any:
        return response(status=len([r async for r in reqs]))

    async def stream_writes(reqs: Any, ctx: Any) -> None:
        async for r in reqs:
            await ctx.write(response(status=len(r.service)))

    shapes = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, request.FromString, response.SerializeToString),
        "UnaryYields": grpc.unary_stream_rpc_method_handler(unary_yields, request.FromString, response.SerializeToString),
        "Gather": grpc.stream_unary_rpc_method_handler(gather, request.FromString, response.SerializeToString),
        "StreamWrites": grpc.stream_stream_rpc_method_handler(stream_writes, request.FromString, response.SerializeToString),
    }
    server = grpc.aio.server()
    GuardedRegistrar(server).add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Shapes", shapes),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            good = request(service="ab").SerializeToString()
            parse = response.FromString
            assert parse(await ch.unary_unary("/test.Shapes/Unary")(good)).status == 2
            assert [parse(r).status async for r in ch.unary_stream("/test.Shapes/UnaryYields")(good)] == [2, 2]
            assert parse(await ch.stream_unary("/test.Shapes/Gather")(iter([good, good, good]))).status == 3
            assert [parse(r).status async for r in ch.stream_stream("/test.Shapes/StreamWrites")(iter([good]))] == [2]
            calls = [
                lambda: ch.unary_unary("/test.Shapes/Unary")(CORRUPT),
                lambda: _drain(ch.unary_stream("/test.Shapes/UnaryYields")(CORRUPT)),
                lambda: ch.stream_unary("/test.Shapes/Gather")(iter([good, CORRUPT])),
                lambda: _drain(ch.stream_stream("/test.Shapes/StreamWrites")(iter([good, CORRUPT]))),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call()
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid grpc.health.v1.HealthCheckRequest" in (info.value.details() or "")
    finally:
        await server.stop(None)


async def _drain(stream: Any) -> list[Any]:
    return [r async for r in stream]
