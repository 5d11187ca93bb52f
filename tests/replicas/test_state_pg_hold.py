"""The per-VM advisory locks of :class:`provider_core.state_pg.PostgresStore`,
in this process, on a database of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit

import psycopg

from provider_core.state_pg import PostgresStore, _PgHold, lock_id

SCOPE = "test:///hold"


def taken_elsewhere(url: str, key: str) -> bool:
    """Whether another session holds ``key``'s lock (it cannot take it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id(SCOPE, key),)).fetchone()
        assert row is not None
        return not row[0]


async def test_a_release_cancelled_midway_still_lets_the_lock_go_and_returns_the_connection(database: str) -> None:
    store = PostgresStore(database, scope=SCOPE, lease=30.0, pool_size=3)
    await store.open()
    try:
        hold = await store.hold(["vm-a"])
        assert hold is not None
        assert await asyncio.to_thread(taken_elsewhere, database, "vm-a")
        # The task releasing the hold is cancelled while its unlock is on the wire
        # (a server stopping, a call's task cancelled).
        releasing = asyncio.ensure_future(hold.release())
        await asyncio.sleep(0)
        releasing.cancel()
        await asyncio.gather(releasing, return_exceptions=True)
        await asyncio.sleep(0.2)
        assert not await asyncio.to_thread(taken_elsewhere, database, "vm-a")
        # Every connection of the pool comes back: three holds at once still fit.
        holds = [await asyncio.wait_for(store.hold([f"vm-{n}"]), 10) for n in range(3)]
        for each in holds:
            assert each is not None
            await each.release()
    finally:
        await store.close()


class Relay:
    """A TCP relay on 127.0.0.1 to the database that can go silent: while
    ``frozen`` it passes nothing on and closes nothing (a partition, a
    database host that hangs), as no refusal or reset would tell."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self.thawed.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.thawed.wait()
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()


async def test_a_database_that_goes_silent_turns_health_off_and_back_on(database: str) -> None:
    parts = urlsplit(database)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    url = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}").geturl()
    store = PostgresStore(url, scope=SCOPE, lease=1.5, pool_size=3)
    await store.open()
    try:
        assert store.healthy
        relay.freeze()
        deadline = time.monotonic() + 10
        while store.healthy:
            assert time.monotonic() < deadline, "health stayed SERVING with the database silent"
            await asyncio.sleep(0.1)
        relay.thaw()
        deadline = time.monotonic() + 20
        while not store.healthy:
            assert time.monotonic() < deadline, "health did not come back with the database"
            await asyncio.sleep(0.1)
    finally:
        relay.thaw()
        await store.close()
        await relay.close()


async def test_the_server_ends_a_vanished_replicas_sessions_within_the_lease(database: str) -> None:
    """A replica whose node vanishes sends no FIN: its sessions, and so its
    VMs' locks, end when the server's TCP keepalives give up. Each session
    sets them within the lease; options of the URL's own are kept."""
    url = f"{database}?options=-c%20statement_timeout%3D7000"
    store = PostgresStore(url, scope=SCOPE, lease=6.0, pool_size=2)
    await store.open()
    try:
        hold = await store.hold(["vm-k"])
        assert isinstance(hold, _PgHold)
        cur = await hold.conn.execute(
            "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'),"
            " current_setting('tcp_keepalives_count'), current_setting('statement_timeout')"
        )
        assert await cur.fetchone() == ("2", "1", "3", "7s")
        await hold.release()
    finally:
        await store.close()


async def test_closing_while_the_database_is_silent_leaves_no_task_behind(database: str) -> None:
    parts = urlsplit(database)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    url = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}").geturl()
    store = PostgresStore(url, scope=SCOPE, lease=1.5, pool_size=2)
    await store.open()
    try:
        relay.freeze()
        deadline = time.monotonic() + 10
        while store.healthy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < 10
        left = [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().cr_code.co_filename.endswith("state_pg.py")]
        assert left == []
    finally:
        relay.thaw()
        await relay.close()
