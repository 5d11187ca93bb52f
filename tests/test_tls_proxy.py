"""The TLS layer's splice on its own: a TlsFront in front of a unix-socket
server of the test's, real sockets both sides. Bytes arrive whole and in
order, a slow reader holds the sender back instead of filling memory, an
end of output from the server ends the client's connection after the
data, and a client going away is seen by the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from provider_core import tls_proxy
from provider_core.listening import Credentials, TlsFiles, bind
from provider_core.server import run as serve_on
from provider_core.tls_proxy import TlsFront

from .test_tls import SERVER_NAME, Pki, pki  # noqa: F401  # pki is a fixture

MiB = 1 << 20


Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test on either loop the server may serve on (``event_loop``): their TLS transports are their own."""
    return lambda main: serve_on(main, request.param)


@contextlib.asynccontextmanager
async def tls_front(tmp_path: Path, pki: Pki) -> AsyncIterator[TlsFront]:  # noqa: F811
    cert, key = pki.server.files(tmp_path / "server")
    (tmp_path / "ca.pem").write_bytes(pki.ca.pem)
    creds = Credentials(TlsFiles(cert, key, tmp_path / "ca.pem"), "1.3")
    proxy = TlsFront(bind("127.0.0.1:0"), creds, [])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
    assert not proxy.directory.exists()


async def connect(front: TlsFront, pki: Pki, tmp_path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # noqa: F811
    context = ssl.create_default_context(cadata=pki.ca.pem.decode())
    context.load_cert_chain(*pki.manager.files(tmp_path / "client"))
    return await asyncio.open_connection("127.0.0.1", front.port, ssl=context, server_hostname=SERVER_NAME)


def pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def test_a_slow_reader_holds_the_sender_back_and_every_byte_arrives(run: Run, tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    size = 48 * MiB
    echoed = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal echoed
        while data := await reader.read(256 * 1024):
            echoed += len(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with tls_front(tmp_path, pki) as front:
            server = await asyncio.start_unix_server(echo, path=str(front.upstream))
            reader, writer = await connect(front, pki, tmp_path)
            sent = pattern(size)

            async def send() -> None:
                for i in range(0, size, MiB):
                    writer.write(sent[i : i + MiB])
                    await writer.drain()

            sending = asyncio.ensure_future(send())
            await asyncio.sleep(1.0)  # nobody reads the echo meanwhile
            assert not sending.done()
            assert echoed < size // 2, "the proxy kept reading although the echo could not be delivered"
            received = await reader.readexactly(size)
            await sending
            assert received == sent
            writer.close()
            server.close()

    run(main())


def test_the_servers_end_of_output_ends_the_connection_after_the_data(run: Run, tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.write(pattern(3 * MiB))
        writer.write_eof()  # half-close: TLS has none, so the client's connection ends
        await writer.drain()
        assert await reader.read() == b""  # the proxy closed its side too
        writer.close()

    async def main() -> None:
        async with tls_front(tmp_path, pki) as front:
            server = await asyncio.start_unix_server(answer, path=str(front.upstream))
            reader, writer = await connect(front, pki, tmp_path)
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.read(), 10) == pattern(3 * MiB)
            writer.close()
            server.close()

    run(main())


def test_a_client_going_away_is_seen_by_the_server(run: Run, tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    async def main() -> None:
        seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(await reader.read())  # until the end of input
            writer.close()

        async with tls_front(tmp_path, pki) as front:
            server = await asyncio.start_unix_server(collect, path=str(front.upstream))
            _, writer = await connect(front, pki, tmp_path)
            writer.write(b"last words")
            await writer.drain()
            writer.close()
            assert await asyncio.wait_for(seen, 10) == b"last words"
            server.close()

    run(main())


def test_a_client_that_never_shakes_hands_is_refused_naming_the_timeout(
    run: Run,
    tmp_path: Path,
    pki: Pki,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(tls_proxy, "HANDSHAKE_TIMEOUT", 0.3)
    caplog.set_level(logging.WARNING, "provider_core.tls_proxy")

    async def main() -> None:
        async with tls_front(tmp_path, pki) as front:
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)  # and says nothing
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

    run(main())
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a TLS connection")]
    assert line.endswith(": no handshake within 0s"), line
