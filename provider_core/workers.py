"""Worker threads for blocking backend calls, awaited from the event loop.

Like ``loop.run_in_executor`` with a ThreadPoolExecutor, at a lower cost per
call (it is paid on every RPC): no concurrent.futures.Future between the
thread and the loop, and results that finish together wake the loop once.
Threads are daemons, so a backend call that never returns cannot keep the
process alive after shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def reportable(exc: BaseException) -> BaseException:
    """An exception a future can carry and the event loop survives:
    SystemExit or KeyboardInterrupt from a library would stop the loop."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    wrapped = RuntimeError(f"backend code raised {type(exc).__name__}")
    wrapped.__cause__ = exc
    return wrapped


class WorkerPool:
    """Up to ``max_workers`` threads, started on demand."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # may overcount once every thread is busy: then no thread is started anyway
        self._running = 0
        self._outstanding = 0  # submitted and not yet returned (queued or running)
        self._numbers = itertools.count()
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._wakeup_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Call ``fn(*args)`` in a worker; await the returned future (from the loop)."""
        if self._closed:
            raise RuntimeError(f"worker pool {self._name} is shut down")
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((future, fn, args))
        with self._lock:
            self._outstanding += 1
            if self._idle:
                self._idle -= 1  # that idle thread takes a job
                return future
            if self._threads >= self._max:
                return future  # queued until a thread is free
            self._threads += 1
        threading.Thread(target=self._work, name=f"{self._name}-{next(self._numbers)}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            with self._lock:
                self._running += 1
            try:
                result = (True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                result = (False, reportable(exc))
            del job, fn, args
            with self._lock:
                self._running -= 1
                self._outstanding -= 1
                self._idle += 1
            self._post(future, *result)

    def _post(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        with self._lock:
            self._done.append((future, ok, value))
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody awaits these any more
            pass

    def _deliver(self) -> None:
        with self._lock:
            done = list(self._done)
            self._done.clear()
            self._wakeup_pending = False
        for future, ok, value in done:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    @property
    def busy(self) -> int:
        """Calls running now (not counting queued ones)."""
        with self._lock:
            return self._running

    async def idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no call is queued or running
        (including calls whose caller stopped waiting); whether it is so."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._outstanding:
            left = end - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.02, left))  # only while shutting down: a poll is cheap enough
        return True

    def shutdown(self) -> None:
        """Cancel queued calls and let idle threads end; running calls finish
        on their own (nobody waits for them). Call from the event loop."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
                with self._lock:
                    self._outstanding -= 1
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)
