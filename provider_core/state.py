"""Where the runtime keeps what outlives a call: task records, and the
locks that serialise operations on one VM across processes.

One interface, :class:`StateStore`, chosen by the server's ``state_url``
(:func:`open_store`):

- unset: :class:`LocalStore`, the task records in a SQLite file of the
  state directory (:class:`~provider_core.tasks.TaskRegistry`); one process
  owns the directory, so the runtime's in-process locks are all the locks
  there are;
- ``postgresql://...``: :class:`~provider_core.state_pg.PostgresStore`,
  task records shared by every replica that names the same database, and
  a session-level advisory lock per VM held on a connection for as long as
  the operation and its background work run.

The runtime always takes its in-process per-VM locks first
(:class:`~provider_core.runtime.KeyedLocks`); :meth:`StateStore.hold` then
takes the same keys across processes, where a store shares them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .errors import Unavailable
from .models import TaskState
from .tasks import TaskRegistry
from .workers import WorkerPool

log = logging.getLogger(__name__)
T = TypeVar("T")


class Hold:
    """Locks held across processes for one operation: release them once."""

    async def add(self, key: str) -> None:
        """Also hold ``key`` (a new VM's id, once the backend returned it)."""

    async def release(self) -> None:
        """Let the keys go (idempotent; never raises)."""


class StateStore:
    """Task records and cross-process locks. ``healthy`` says whether the
    store answers; callbacks of :meth:`on_health` hear of each change."""

    shared = False
    """Whether other processes see this store's records and locks."""

    def __init__(self) -> None:
        self.healthy = True
        self._on_health: list[Callable[[bool], None]] = []
        self._on_lock_lost: list[Callable[[bool], None]] = []

    def on_health(self, callback: Callable[[bool], None]) -> None:
        self._on_health.append(callback)

    def on_lock_lost(self, callback: Callable[[bool], None]) -> None:
        """``callback(retaken)`` hears of each held lock whose session ended
        while its operation ran: taken again (True) or by someone else first."""
        self._on_lock_lost.append(callback)

    def _lock_lost(self, *, retaken: bool) -> None:
        for callback in self._on_lock_lost:
            callback(retaken)

    def _set_healthy(self, value: bool, why: str = "") -> None:
        if value == self.healthy:
            return
        self.healthy = value
        if value:
            log.info("state store %s is reachable again", self.describe())
        else:
            log.warning("state store %s is unreachable: %s", self.describe(), why)
        for callback in self._on_health:
            callback(value)

    def describe(self) -> str:
        """Where the state is, for logs (never a secret)."""
        raise NotImplementedError

    async def open(self) -> None:
        """Get ready to serve; ConfigError when the store cannot be used."""

    async def close(self) -> None:
        """Let go of everything; this process's running tasks stay open,
        to be reported interrupted."""

    async def hold(self, keys: Sequence[str]) -> Hold | None:
        """Hold ``keys`` across processes (None when nothing is shared);
        Unavailable when the store cannot be reached."""
        return None

    async def start(self, kind: str, subject: str, hold: Hold | None = None) -> str:
        """Record a new running task; its id. The record is stored when this
        returns. ``hold``: what the task's operation holds (a store may write
        through it)."""
        raise NotImplementedError

    async def finish(self, task_id: str, error: str = "", *, kind: str = "", subject: str = "", hold: Hold | None = None) -> str:
        """Record a task's end (``error`` empty: success); ``kind`` and
        ``subject`` make the record if its start never reached the store;
        ``hold`` is what the task holds, let go once the end is recorded
        (a store may do both at once). Never raises: an end the store
        cannot take now is kept and written later. Returns the error
        recorded: ``error``, or more (a lock lost while the task ran)."""
        raise NotImplementedError

    async def get(self, task_id: str) -> TaskState | None:
        """A task's state; None when no record has its id."""
        raise NotImplementedError


class LocalStore(StateStore):
    """Task records in one process's SQLite file (or in memory).

    Every read and write runs in one thread of its own, never on the event
    loop: a commit waits for the disk (and for another connection's write
    lock, a backup's say) while the loop goes on serving. One thread keeps
    SQLite's one connection used by one thread at a time, and the records'
    order: what :meth:`start` wrote before it returned, a later
    :meth:`get` finds."""

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self.path = path
        self.registry = TaskRegistry(path)
        self._thread = WorkerPool(1, "state-sqlite")

    def describe(self) -> str:
        return str(self.path.parent) if self.path else "memory"  # the state directory

    async def close(self) -> None:
        await self._thread.run(self.registry.close)  # after every write queued before it
        self._thread.shutdown()

    async def start(self, kind: str, subject: str, hold: Hold | None = None) -> str:
        return await self._thread.run(self._records, self.registry.start, kind, subject)

    async def finish(self, task_id: str, error: str = "", *, kind: str = "", subject: str = "", hold: Hold | None = None) -> str:
        await self._thread.run(self._records, self.registry.finish, task_id, error)
        return error

    async def get(self, task_id: str) -> TaskState | None:
        return await self._thread.run(self._records, self.registry.get, task_id)

    def _records(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the records; SQLite refusing it (its write lock
        held past the busy timeout, a full disk) is Unavailable: the caller
        retries, and a task's work runs all the same (its end is recorded)."""
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise Unavailable(f"the task records cannot be written or read ({exc}); retry") from None


__all__ = ["Hold", "LocalStore", "StateStore"]
