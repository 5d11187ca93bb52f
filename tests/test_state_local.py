"""The SQLite task records (LocalStore) are read and written off the event
loop: a commit that waits (for the disk, for another connection's write
lock) holds up neither other calls nor anything else the loop runs, and a
task's id is still answered only once its record is committed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from provider_core.models import TaskState
from provider_core.pb import provider_pb2 as pb
from provider_core.state import LocalStore
from provider_core.testing import ProviderHarness

Harness = Callable[..., ProviderHarness]
HELD = 0.5
"""Seconds another connection holds the database's write lock (SQLite's busy timeout is 5 s)."""


@pytest.fixture
def writer_lock(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to the task records of ``tmp_path``, which
    takes the write lock with ``BEGIN IMMEDIATE`` (as a backup would)."""
    conn = sqlite3.connect(tmp_path / "tasks.sqlite3", isolation_level=None, check_same_thread=False)
    yield conn
    conn.close()


def test_a_write_waiting_for_the_lock_leaves_the_loop_running(tmp_path: Path, writer_lock: sqlite3.Connection) -> None:
    async def main() -> tuple[int, str]:
        store = LocalStore(tmp_path / "tasks.sqlite3")
        loop = asyncio.get_running_loop()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        writer_lock.execute("BEGIN IMMEDIATE")
        loop.call_later(HELD, writer_lock.rollback)  # on the loop: never runs while a write blocks it
        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        before = ticks
        try:
            task_id = await store.start("create", "vm")
            during = ticks - before
            assert await store.get(task_id) == TaskState(done=False)
            await store.finish(task_id, "")
            assert await store.get(task_id) == TaskState(done=True)
        finally:
            ticking.cancel()
            await store.close()
        return during, task_id

    during, task_id = asyncio.run(main())
    assert task_id.startswith("task-")
    assert during > 0, "the loop ran nothing while the task's record waited for the write lock"


def test_a_closed_store_has_written_what_was_queued(tmp_path: Path) -> None:
    async def main() -> list[str]:
        store = LocalStore(tmp_path / "tasks.sqlite3")
        ids = await asyncio.gather(*(store.start("create", f"vm-{n}") for n in range(20)))
        finishing = [asyncio.ensure_future(store.finish(task_id, "")) for task_id in ids]
        await asyncio.sleep(0)  # queued, maybe not yet written
        await store.close()
        await asyncio.gather(*finishing)
        return ids

    ids = asyncio.run(main())
    with sqlite3.connect(tmp_path / "tasks.sqlite3") as conn:
        rows = dict(conn.execute("SELECT id, finished IS NOT NULL FROM tasks").fetchall())
    assert rows == dict.fromkeys(ids, 1)


@pytest.mark.needs_test_plugins
def test_calls_are_served_while_a_task_record_waits(harness: Harness, tmp_path: Path, writer_lock: sqlite3.Connection) -> None:
    h = harness("memory", {"background": True}, state_dir=tmp_path)
    h.wait(h.stub.Create(pb.CreateRequest(name="first")).task)  # the file exists, the store has written
    writer_lock.execute("BEGIN IMMEDIATE")
    try:
        creating = h.stub.Create.future(pb.CreateRequest(name="second"), timeout=30)
        deadline = time.monotonic() + 10
        while h.backend.calls["create"] < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        time.sleep(0.2)  # the backend returned: the core now writes the record, and waits for the lock
        assert h.stub.Describe(pb.DescribeRequest(id="first"), timeout=2).exists
        assert not creating.done(), "the task's id was answered before its record was committed"
    finally:
        writer_lock.rollback()
    task = creating.result().task
    h.wait(task)
    assert h.stub.TaskStatus(pb.TaskStatusRequest(task=task), timeout=5) == pb.TaskStatusResponse(done=True)


@pytest.mark.needs_test_plugins
def test_a_caller_gone_while_the_record_waits_leaves_the_vm_unlocked(
    harness: Harness, tmp_path: Path, writer_lock: sqlite3.Connection
) -> None:
    """A caller whose deadline passes while its task's record waits for the
    write lock: the record is still written, the work still runs, and the
    VM's lock is let go when it ends (the next call on the VM is served)."""
    h = harness("memory", {"background": True}, state_dir=tmp_path)
    h.wait(h.stub.Create(pb.CreateRequest(name="first")).task)  # the file exists, the store has written
    writer_lock.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(grpc.RpcError) as gone:
            h.stub.Create(pb.CreateRequest(name="second"), timeout=1)
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        writer_lock.rollback()
    deadline = time.monotonic() + 10
    while not h.stub.Describe(pb.DescribeRequest(id="second"), timeout=5).exists and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.stub.Describe(pb.DescribeRequest(id="second"), timeout=5).exists, "the work of the caller gone never ran"
    h.wait(h.stub.Delete(pb.DeleteRequest(id="second"), timeout=10).task)
    assert not h.stub.Describe(pb.DescribeRequest(id="second"), timeout=5).exists


@pytest.mark.needs_test_plugins
def test_a_record_refused_by_sqlite_is_unavailable_and_leaves_the_vm_unlocked(
    harness: Harness, tmp_path: Path, writer_lock: sqlite3.Connection
) -> None:
    """The write lock held past SQLite's busy timeout (5 s): the caller
    hears UNAVAILABLE, the work runs all the same, and the VM is let go."""
    h = harness("memory", {"background": True}, state_dir=tmp_path)
    h.wait(h.stub.Create(pb.CreateRequest(name="first")).task)
    writer_lock.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            h.stub.Create(pb.CreateRequest(name="second"), timeout=30)
    finally:
        writer_lock.rollback()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    assert "task records" in (refused.value.details() or "")
    deadline = time.monotonic() + 10
    while not h.stub.Describe(pb.DescribeRequest(id="second"), timeout=5).exists and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.stub.Describe(pb.DescribeRequest(id="second"), timeout=5).exists, "the work never ran"
    h.wait(h.stub.Delete(pb.DeleteRequest(id="second"), timeout=10).task)
    assert not h.stub.Describe(pb.DescribeRequest(id="second"), timeout=5).exists
