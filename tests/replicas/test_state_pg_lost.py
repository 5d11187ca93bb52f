"""A held per-VM lock whose database session ends while its operation's
work runs (:class:`provider_core.state_pg.PostgresStore`): PostgreSQL frees
a session-level advisory lock with its session, silently. The store checks
its holds at each heartbeat and takes such locks again, or reports that
another session took them first. Sessions are ended from another session
with ``pg_terminate_backend``, as a database restart or a cut would."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
import pytest
from vmp_testplugins.memory import MemoryBackend, MemorySettings

from provider_core import operations
from provider_core.metrics import Metrics
from provider_core.runtime import Runtime
from provider_core.state_pg import PostgresStore, _PgHold, lock_id

SCOPE = "test:///lost"
LEASE = 3.0
"""A heartbeat, and so a check of the holds, every second."""


def taken_elsewhere(url: str, key: str) -> bool:
    """Whether another session holds ``key``'s lock (it cannot take it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id(SCOPE, key),)).fetchone()
        assert row is not None
        return not row[0]


async def just_beaten(url: str, store: PostgresStore) -> None:
    """Return right after the store's heartbeat wrote its beat: the next
    one, and so the next check of the holds, is a third of the lease away."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

        async def beat() -> object:
            cur = await conn.execute("SELECT beat FROM vmp_replicas WHERE id = %s", (store.replica,))
            row = await cur.fetchone()
            assert row is not None
            return row[0]

        first = await beat()
        deadline = time.monotonic() + 3 * LEASE
        while await beat() == first:
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the beat's other statements and the checks of the holds


async def held(store: PostgresStore, key: str) -> tuple[_PgHold, str, list[bool]]:
    """A hold of ``key`` with a running task on it (as the runtime takes
    them), and the outcomes of lost locks the store reports."""
    lost: list[bool] = []
    store.on_lock_lost(lost.append)
    hold = await store.hold([key])
    assert isinstance(hold, _PgHold)
    task_id = await store.start("create", key, hold)
    return hold, task_id, lost


async def test_a_lock_whose_session_ended_is_taken_again_and_its_task_ends_well(database: str) -> None:
    store = PostgresStore(database, scope=SCOPE, lease=LEASE, pool_size=4)
    await store.open()
    try:
        hold, task_id, lost = await held(store, "vm-a")
        old = hold.conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s, 5000)", (old,))
        deadline = time.monotonic() + 3 * LEASE
        while not await asyncio.to_thread(taken_elsewhere, database, "vm-a"):
            assert time.monotonic() < deadline, "the lock was not taken again"
            await asyncio.sleep(0.1)
        assert hold.conn.info.backend_pid != old
        assert lost == [True]
        assert not hold.lost
        await store.finish(task_id, "", kind="create", subject="vm-a", hold=hold)
        await hold.release()
        state = await store.get(task_id)
        assert state is not None
        assert state.done
        assert state.error == ""
        assert not await asyncio.to_thread(taken_elsewhere, database, "vm-a")
    finally:
        await store.close()


async def test_a_lock_another_session_took_meanwhile_fails_the_task_loudly(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(database, scope=SCOPE, lease=LEASE, pool_size=4)
    await store.open()
    try:
        hold, task_id, lost = await held(store, "vm-b")
        await just_beaten(database, store)
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as other:
            # Another replica takes the VM's lock in the instant its session is gone.
            with caplog.at_level(logging.ERROR, logger="provider_core.state_pg"):
                await other.execute(
                    "SELECT pg_terminate_backend(%s, 5000), pg_advisory_lock(%s)",
                    (hold.conn.info.backend_pid, lock_id(SCOPE, "vm-b")),
                )
                deadline = time.monotonic() + 3 * LEASE
                while not lost:
                    assert time.monotonic() < deadline, "the lost lock went unnoticed"
                    await asyncio.sleep(0.1)
            assert lost == [False]
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert any("vm-b" in message and task_id in message for message in errors), errors
            # The work ends well, but its task is reported failed.
            await store.finish(task_id, "", kind="create", subject="vm-b", hold=hold)
            state = await store.get(task_id)
            assert state is not None
            assert state.done
            assert "lock of VM vm-b was lost" in state.error
            assert "another replica took it" in state.error
            await other.execute("SELECT pg_advisory_unlock_all()")
        await hold.release()
        assert lost == [False]  # said once
        assert not await asyncio.to_thread(taken_elsewhere, database, "vm-b")
    finally:
        await store.close()


async def test_a_lock_lost_since_the_last_heartbeat_is_caught_when_the_task_ends(database: str) -> None:
    """The work ends before the next heartbeat: writing its end on the
    hold's connection fails, the locks are checked then, and the end is
    written with the loss."""
    store = PostgresStore(database, scope=SCOPE, lease=30.0, pool_size=4)  # no heartbeat in the test's time
    await store.open()
    try:
        hold, task_id, lost = await held(store, "vm-c")
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as other:
            await other.execute(
                "SELECT pg_terminate_backend(%s, 5000), pg_advisory_lock(%s)",
                (hold.conn.info.backend_pid, lock_id(SCOPE, "vm-c")),
            )
            await store.finish(task_id, "", kind="create", subject="vm-c", hold=hold)
            assert lost == [False]
            state = await store.get(task_id)
            assert state is not None
            assert state.done
            assert "lock of VM vm-c was lost" in state.error
        await hold.release()
    finally:
        await store.close()


async def test_through_the_runtime_the_client_learns_of_the_loss(database: str) -> None:
    """A Create whose background work runs while its VM's lock is lost to
    another session: the work ends well, its task reports the loss, and the
    metric counts it."""
    backend = MemoryBackend(MemorySettings(background=True))
    store = PostgresStore(database, scope=SCOPE, lease=LEASE, pool_size=4)
    metrics = Metrics("memory")
    runtime = Runtime(backend, "memory", store=store, metrics=metrics)
    await store.open()
    try:
        assert await runtime.connect()
        backend.gate.clear()  # the work waits inside the backend
        _, task_id = await runtime.call(operations.CREATE, {"name": "slow-d"}, timeout=30)
        assert task_id
        await just_beaten(database, store)
        key = lock_id(SCOPE, "slow-d")
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as other:
            cur = await other.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
                " AND ((classid::bigint << 32) | objid::bigint) = %s",
                (key,),
            )
            holder = await cur.fetchone()
            assert holder is not None
            await other.execute("SELECT pg_terminate_backend(%s, 5000), pg_advisory_lock(%s)", (holder[0], key))
            deadline = time.monotonic() + 3 * LEASE
            lost = ("vm_provider_state_locks_lost_total", {"outcome": "taken_by_another"})
            while metrics.registry is not None and not metrics.registry.get_sample_value(lost[0], lost[1]):
                assert time.monotonic() < deadline, "the lost lock went unnoticed"
                await asyncio.sleep(0.1)
            state = await runtime.task_status(task_id, timeout=5)
            assert not state.done  # the work still runs: a client told it ended would go on
            await other.execute("SELECT pg_advisory_unlock_all()")
        backend.gate.set()
        deadline = time.monotonic() + 10
        while not (state := await runtime.task_status(task_id, timeout=5)).done:
            assert time.monotonic() < deadline, "the task did not end"
            await asyncio.sleep(0.1)
        assert "slow-d" in backend.vms  # the work itself went well
        assert "lock of VM slow-d was lost" in state.error
        assert metrics.registry is not None
        assert metrics.registry.get_sample_value("vm_provider_tasks_failed_total", {"kind": "create"}) == 1.0
    finally:
        backend.gate.set()
        await runtime.drain(5.0)  # closes the store
