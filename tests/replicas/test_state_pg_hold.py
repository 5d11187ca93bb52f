"""The per-VM advisory locks of :class:`provider_core.state_pg.PostgresStore`,
in this process, on a database of the test's own."""

from __future__ import annotations

import asyncio

import psycopg

from provider_core.state_pg import PostgresStore, lock_id

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
