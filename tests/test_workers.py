"""The worker threads that run blocking backend calls for the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from provider_core.workers import WorkerPool


async def test_results_and_errors_reach_the_caller() -> None:
    pool = WorkerPool(4, "t")
    assert await pool.run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(KeyError, match="missing"):
        await pool.run(lambda: {}["missing"])
    pool.shutdown()


@pytest.mark.parametrize("exc", [SystemExit(2), KeyboardInterrupt(), StopIteration(), asyncio.CancelledError()])
async def test_exceptions_that_would_stop_the_loop_become_runtime_errors(exc: BaseException) -> None:
    def boom() -> None:
        raise exc

    pool = WorkerPool(1, "t")
    with pytest.raises(RuntimeError, match=f"backend code raised {type(exc).__name__}") as info:
        await pool.run(boom)
    assert info.value.__cause__ is exc
    assert await pool.run(lambda: "still serving") == "still serving"
    pool.shutdown()


async def test_calls_run_in_parallel_up_to_the_limit() -> None:
    pool = WorkerPool(3, "t")
    gate = threading.Event()
    inside = threading.Semaphore(0)

    def held(n: int) -> int:
        inside.release()
        gate.wait()
        return n

    calls = [pool.run(held, n) for n in range(5)]
    for _ in range(3):
        assert await asyncio.to_thread(inside.acquire, True, 10)
    assert pool.busy == 3
    assert not inside.acquire(timeout=0.2), "a fourth call started beyond the limit"
    gate.set()
    assert await asyncio.gather(*calls) == [0, 1, 2, 3, 4]
    assert pool.busy == 0
    names = await asyncio.gather(*(pool.run(lambda: threading.current_thread().name) for _ in range(6)))
    assert set(names) <= {"t-0", "t-1", "t-2"}
    pool.shutdown()


async def test_shutdown_cancels_queued_calls_and_refuses_new_ones() -> None:
    pool = WorkerPool(1, "t")
    gate = threading.Event()
    started = threading.Event()

    def first() -> bool:
        started.set()
        return gate.wait(10)

    running = pool.run(first)
    queued = pool.run(lambda: "never")
    assert await asyncio.to_thread(started.wait, 10)
    pool.shutdown()
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run(lambda: None)
    gate.set()
    assert await running is True


async def test_a_cancelled_caller_does_not_break_delivery() -> None:
    pool = WorkerPool(2, "t")
    gate = threading.Event()
    abandoned = pool.run(gate.wait, 10)
    abandoned.cancel()
    gate.set()
    assert await pool.run(lambda: 7) == 7
    pool.shutdown()
