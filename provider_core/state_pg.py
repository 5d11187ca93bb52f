"""The state store of several replicas: PostgreSQL (``state_url``).

psycopg 3 with an asyncio connection pool (psycopg_pool). What it keeps:

- ``vmp_tasks``: every task record, written before the client hears of
  the task, with the replica that runs it (``owner``);
- ``vmp_replicas``: each running replica and its heartbeat, written every
  third of ``lease`` seconds; a running task whose owner has not beaten for
  ``lease`` seconds (by the database's clock) is reported interrupted, by
  every replica;
- ``vmp_schema``: the schema's version. Startup migrates an older schema
  (one replica at a time, under a transaction-level advisory lock) and
  refuses a newer one.

Per-VM locks are session-level advisory locks (``pg_advisory_lock``) on a
64-bit hash of the VM's lock key and the endpoint, taken on a pooled
connection held for as long as the operation and its background work
run: when a replica dies its sessions end and its locks go with them.
A session can also end under a live replica (a database restart, a cut
connection), its locks silently freed: each heartbeat checks the holds'
connections, takes lost locks again on a new one, and fails the task of a
lock another session took first (:meth:`_PgHold.check`).

When the database cannot be reached, calls that need it raise Unavailable
and ``healthy`` turns false until a heartbeat gets through again; a task's
end that could not be written is kept and written then. The URL holds a
password: it never appears in a log or an error (:func:`redacted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ConfigError, Unavailable
from .models import TaskState
from .state import Hold, StateStore
from .tasks import INTERRUPTED, PREFIX
from .urls import redact

try:
    import psycopg
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
# The pool warns on every failed reconnection attempt; the store says once
# that the database is unreachable, and once that it answers again.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

SCHEMA_VERSION = 1
"""The schema this code writes; :data:`MIGRATIONS` brings older ones here."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE vmp_replicas (
            id text PRIMARY KEY,
            host text NOT NULL,
            started timestamptz NOT NULL DEFAULT clock_timestamp(),
            beat timestamptz NOT NULL DEFAULT clock_timestamp()
        )""",
        """CREATE TABLE vmp_tasks (
            id text PRIMARY KEY,
            kind text NOT NULL,
            subject text NOT NULL,
            owner text NOT NULL,
            started timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished timestamptz,
            error text NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX vmp_tasks_running ON vmp_tasks (owner) WHERE finished IS NULL",
        "CREATE INDEX vmp_tasks_finished ON vmp_tasks (finished)",
    ),
}
"""Statements that bring the schema from the version before each key to it."""

MIGRATION_LOCK = 0x766D702D6D696772  # "vmp-migr": one replica migrates at a time
CONNECT_TIMEOUT = 10.0
"""Seconds a start waits for the database before refusing to start."""
CALL_TIMEOUT = 5.0
"""Seconds a call waits for a free connection before answering UNAVAILABLE."""
RETENTION = 7 * 86400.0
"""Seconds finished task records are kept."""


def redacted(text: str, url: str) -> str:
    """``text`` without the URL or its password, as written in the URL or
    as libpq reads it (never raises: ``url`` may be one libpq refuses, and
    its error quotes the part it could not parse)."""
    secrets: set[str] = set()
    with contextlib.suppress(ValueError):
        written = urlsplit(url).password
        if written:
            secrets |= {written, unquote(written)}
    if psycopg is not None:
        with contextlib.suppress(psycopg.Error):
            secrets.add(str(psycopg.conninfo.conninfo_to_dict(url).get("password") or ""))
    text = text.replace(url, redact(url))
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def lock_id(scope: str, key: str) -> int:
    """The advisory lock number of a VM's lock key: a stable signed 64-bit
    hash of the key in its scope (the backend and its endpoint)."""
    digest = hashlib.blake2b(f"{scope}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _PgHold(Hold):
    """Advisory locks on one connection. Keys added are locked with the
    task's record (:meth:`insert`); a key someone else holds already is not
    waited for (a new VM's id: nobody else can know it yet).

    The store checks every hold at each heartbeat (:meth:`check`): a
    session that ended (a database restart, a cut connection) has lost its
    locks without a word, so they are taken again on a new connection, and
    a lock another session took meanwhile marks the hold :attr:`lost`."""

    def __init__(self, store: PostgresStore, pool: Any, conn: Any, keys: Sequence[str]) -> None:
        self._store = store
        self._pool = pool
        self.conn = conn
        self.pending: list[str] = []
        self.unlocked = False
        self._released = False
        self.keys = {lock_id(store.scope, key): key for key in keys}
        """The keys held, by advisory lock number."""
        self.missing: list[int] = []
        """Lock numbers not held since a session ended, taken again at each heartbeat."""
        self.sessions = {conn.info.backend_pid}
        """The server processes of this hold's connections, past ones included."""
        self.task_id = ""
        self.lost = ""
        """Why the task cannot be trusted: another session took a lock of its VM."""

    async def add(self, key: str) -> None:
        self.pending.append(key)

    async def insert(self, columns: str, params: tuple[Any, ...]) -> None:
        """Insert a task row, locking the pending keys in the same statement
        (one round trip: each costs a scheduling of the server's process)."""
        keys, self.pending = self.pending, []
        ids = [lock_id(self._store.scope, key) for key in keys]
        self.keys.update(zip(ids, keys, strict=True))
        marks = ", ".join(["%s"] * len(params))
        async with self._store.failing():
            await self.conn.execute(
                f"INSERT INTO vmp_tasks ({columns}) SELECT {marks}"  # noqa: S608 - our own column names and placeholders
                " FROM (SELECT count(pg_try_advisory_lock(k)) FROM unnest(%s::bigint[]) AS k) AS locked",
                (*params, ids),
            )

    async def end(self, statement: str, params: tuple[Any, ...]) -> None:
        """``statement`` (a task's end, returning a row), then every key let
        go, in one statement (a replica that takes a key in the instant
        before it commits finds the task still running; its callers poll)."""
        async with self._store.failing():
            await self.conn.execute(f"WITH ended AS ({statement} RETURNING 1) SELECT pg_advisory_unlock_all() FROM ended", params)  # noqa: S608 - our own statement
        self.unlocked = True

    async def check(self) -> None:
        """Whether the locks are still held: their connection answers. When
        it does not, its session (and so every lock it held) may be gone:
        the locks are taken again, without waiting, on a new connection. A
        lock held by a session of someone else's marks the hold lost (an
        ERROR, counted); one still held by this hold's own old session (a
        server that has not noticed the cut yet) is tried again at the next
        heartbeat, as is any lock not got."""
        if self._released or self.unlocked:
            return
        try:
            await self.conn.execute("SELECT 1")
        except psycopg.Error:
            await self._reconnect()
        if not self.missing:
            return
        cur = await self.conn.execute(
            "SELECT k, pg_try_advisory_lock(k), array(SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory'"
            " AND l.objsubid = 1 AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = k)"
            " FROM unnest(%s::bigint[]) AS k",
            (self.missing,),
        )
        rows = await cur.fetchall()
        self.missing = [k for k, got, _ in rows if not got]
        taken = sorted(self.keys[k] for k, got, pids in rows if not got and set(pids) - self.sessions)
        task = self.task_id or "none yet"
        if taken and not self.lost:
            self.lost = (
                f"the lock of VM {', '.join(taken)} was lost while this task ran (its database session ended)"
                " and another replica took it: two operations may have changed the VM at once; check its state"
            )
            log.error("lock of VM %s lost: another session took it while task %s ran", ", ".join(taken), task)
            self._store._lock_lost(retaken=False)
        elif not self.missing and not self.lost:
            keys = ", ".join(self.keys.values())
            log.warning("lock of VM %s taken again after its database session ended (task %s)", keys, task)
            self._store._lock_lost(retaken=True)

    async def _reconnect(self) -> None:
        """The hold's connection for a new one of the store's current pool;
        every lock is missing."""
        old, old_pool = self.conn, self._pool
        await old.close()
        pool = self._store.pool
        new = await pool.getconn()
        if self._released:  # let go meanwhile: the old connection is release's
            await pool.putconn(new)
            return
        self.conn, self._pool = new, pool
        self.sessions.add(new.info.backend_pid)
        self.missing = list(self.keys)
        log.warning("the database session holding the lock of VM %s ended; taking it again", ", ".join(self.keys.values()))
        await old_pool.putconn(old)

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._store._holds.discard(self)
        unlocked = self.unlocked
        try:
            if not unlocked:
                await self.conn.execute("SELECT pg_advisory_unlock_all()")
                unlocked = True
        except psycopg.Error:
            pass
        finally:
            # Whatever stopped the unlock (an error, a cancellation), the
            # connection goes back to the pool, closed when its locks may
            # still be held: its session's locks end with it.
            if not unlocked:
                await self.conn.close()
            await self._pool.putconn(self.conn)


class PostgresStore(StateStore):
    """Task records and per-VM locks in PostgreSQL, shared by replicas."""

    shared = True

    def __init__(self, url: str, *, scope: str, lease: float = 15.0, pool_size: int = 40) -> None:
        super().__init__()
        if psycopg is None:
            raise ConfigError("state_url needs PostgreSQL's client: pip install 'vm-provider[postgres]'")
        self.url = url
        self.scope = scope
        self.lease = lease
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"state_url is not a valid PostgreSQL URL: {redacted(str(exc), url)}") from None
        self._pool_size = pool_size
        self.pool = self._new_pool()
        self._beating: asyncio.Task[None] | None = None
        self._checking: asyncio.Future[None] | None = None
        self._beat_conn: Any = None
        self._closing: set[asyncio.Future[None]] = set()
        self._unsaved: dict[str, tuple[str, str, str]] = {}
        """Ends of tasks not written yet: id -> (error, kind, subject)."""
        self._holds: set[_PgHold] = set()
        """Holds not released yet, checked at each heartbeat."""

    def _connection_options(self) -> dict[str, Any]:
        """libpq parameters of every connection. TCP keepalives both ways,
        within the lease: the server ends the session of a replica whose
        node vanished (no FIN, no RST), and so frees its VMs' locks, within
        about ``lease`` seconds rather than the system's default two hours
        (``tcp_keepalives_*`` are settings any session may set); the
        replica notices a vanished server as soon. The URL's own
        ``options`` are kept, after ours (they win)."""
        idle, interval = max(1, int(self.lease / 3)), max(1, int(self.lease / 6))
        ours = f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count=3"
        given = psycopg.conninfo.conninfo_to_dict(self.url).get("options")
        return {
            "connect_timeout": int(CONNECT_TIMEOUT),
            "application_name": "vm-provider",
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": interval,
            "keepalives_count": 3,
            "options": f"{ours} {given}" if given else ours,
        }

    def _new_pool(self) -> Any:
        return AsyncConnectionPool(
            self.url,
            min_size=2,
            max_size=self._pool_size,
            open=False,
            timeout=CALL_TIMEOUT,
            kwargs={"autocommit": True, **self._connection_options()},
            name="vm-provider-state",
        )

    async def _recover(self) -> None:
        """After an outage: a pool that still cannot hand out a working
        connection (it backs off between reconnection attempts, up to
        minutes) is replaced by a fresh one."""
        try:
            await self._within(self._probe())
        except (psycopg.Error, PoolTimeout, TimeoutError):
            old, self.pool = self.pool, self._new_pool()
            await self.pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            job = asyncio.ensure_future(old.close(timeout=CALL_TIMEOUT))  # connections held out close as they come back
            self._closing.add(job)
            job.add_done_callback(self._closing.discard)

    async def _probe(self) -> None:
        async with self.pool.connection(timeout=1.0) as conn:
            await conn.execute("SELECT 1")

    async def _within(self, work: Coroutine[Any, Any, None]) -> None:
        """``work``, or TimeoutError after :attr:`_beat_timeout`. Work that
        does not end in time is cancelled but not waited for: psycopg then
        asks the server to cancel its query, which a silent server never
        answers."""
        job = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({job}, timeout=self._beat_timeout)
        if job in done:
            return job.result()
        job.cancel()
        self._closing.add(job)
        job.add_done_callback(self._closing.discard)
        job.add_done_callback(lambda j: j.cancelled() or j.exception())  # ends unheard of
        raise TimeoutError

    def describe(self) -> str:
        return redact(self.url)

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, PoolTimeout):
            return f"no connection within {CALL_TIMEOUT:g}s"
        return redacted(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, self.url)

    @contextlib.asynccontextmanager
    async def failing(self) -> AsyncIterator[None]:
        """Database errors inside become Unavailable (and health NOT_SERVING)."""
        try:
            yield
        except PoolTimeout:  # busy, not broken: health is the heartbeat's to judge
            raise Unavailable(
                f"all {self.pool.max_size} connections to the state database are in use (state_pool_size); retry"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            why = self._why(exc)
            self._failed(why)
            raise Unavailable(f"the state database is unreachable ({why}); retry") from None

    def _failed(self, why: str) -> None:
        """Health NOT_SERVING; the pool drops its broken connections now
        rather than one failed call at a time (connections are not checked
        when taken: that would cost every call a round trip)."""
        self._set_healthy(False, why)
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            await self.pool.check()

    # -- life cycle ------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self.pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except PoolTimeout:
            await self.pool.close()
            raise ConfigError(
                f"state_url: cannot reach the database at {redact(self.url)} within {CONNECT_TIMEOUT:g}s;"
                " check the URL, the password and that the server accepts connections"
            ) from None
        try:
            await self._migrate()
            await self._beat()
        except BaseException:
            await self.pool.close()
            raise
        self._beating = asyncio.create_task(self._heartbeat())
        log.info("state in PostgreSQL at %s (schema %d), replica %s", redact(self.url), SCHEMA_VERSION, self.replica)

    async def _migrate(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS vmp_schema (version integer NOT NULL)")
            row = await (await conn.execute("SELECT max(version) FROM vmp_schema")).fetchone()
            found = row[0] if row and row[0] is not None else 0
            if found > SCHEMA_VERSION:
                raise ConfigError(
                    f"state_url: the database's schema is version {found}, newer than this vm-provider's"
                    f" ({SCHEMA_VERSION}): run a vm-provider at least as new as the one that wrote it, or use another database"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)
                log.info("state database schema migrated to version %d", version)
            if found < SCHEMA_VERSION:
                await conn.execute("DELETE FROM vmp_schema")
                await conn.execute("INSERT INTO vmp_schema (version) VALUES (%s)", (SCHEMA_VERSION,))

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            await self._flush()
            async with self.pool.connection(timeout=2.0) as conn:
                # Our tasks still running are interrupted now, not after the lease.
                await conn.execute("DELETE FROM vmp_replicas WHERE id = %s", (self.replica,))
        if self._beat_conn is not None:
            await self._beat_conn.close()
        # What still runs in the background (a pool check, old pools closing,
        # waits given up on a silent database) ends here, not after the loop.
        # Cancelled again while psycopg, cancelled, asks a silent server to
        # cancel its query (which waits for that server).
        left = {job for job in (self._checking, *self._closing) if job is not None and not job.done()}
        until = time.monotonic() + CALL_TIMEOUT
        while left and time.monotonic() < until:
            for job in left:
                job.cancel()
            _, left = await asyncio.wait(left, timeout=0.2)
        await self.pool.close()

    # -- heartbeat -------------------------------------------------------------

    async def _beat(self) -> None:
        """The heartbeat, and the sweep of dead replicas' tasks and of old
        records, on a connection of its own: a pool busy with long tasks
        never delays it."""
        if self._beat_conn is None or self._beat_conn.closed:
            self._beat_conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **self._connection_options())
        conn = self._beat_conn
        try:
            await conn.execute(
                "INSERT INTO vmp_replicas (id, host) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET beat = clock_timestamp()",
                (self.replica, socket.gethostname()),
            )
            params = {"lease": self.lease, "error": INTERRUPTED, "retention": RETENTION}
            await conn.execute(
                "UPDATE vmp_tasks t SET finished = clock_timestamp(), error = %(error)s"
                " WHERE finished IS NULL AND NOT EXISTS"
                " (SELECT 1 FROM vmp_replicas r WHERE r.id = t.owner"
                " AND r.beat > clock_timestamp() - make_interval(secs => %(lease)s))",
                params,
            )
            await conn.execute(
                "DELETE FROM vmp_replicas WHERE beat <= clock_timestamp() - make_interval(secs => %(lease)s)", params
            )
            await conn.execute(
                "DELETE FROM vmp_tasks WHERE finished < clock_timestamp() - make_interval(secs => %(retention)s)", params
            )
        except BaseException:
            await conn.close()
            if self._beat_conn is conn:
                self._beat_conn = None
            raise

    async def _flush(self) -> None:
        for task_id, (error, kind, subject) in list(self._unsaved.items()):
            await self._write_end(task_id, error, kind, subject)
            self._unsaved.pop(task_id, None)

    @property
    def _beat_timeout(self) -> float:
        """Seconds a heartbeat waits for the database: a database that goes
        silent (a partition, a hung host) answers no error, ever."""
        return min(CALL_TIMEOUT, max(1.0, self.lease / 3))

    async def _heartbeat(self) -> None:
        """Beat every third of the lease (every second while unreachable)."""
        while True:
            await asyncio.sleep(self.lease / 3 if self.healthy else min(1.0, self.lease / 3))
            try:
                await self._within(self._beat())
                if not self.healthy:
                    await self._recover()
            except (psycopg.Error, PoolTimeout) as exc:
                self._failed(self._why(exc))
                continue
            except TimeoutError:
                self._beat_conn = None  # left to the beat that waits on it
                self._failed(f"no answer within {self._beat_timeout:g}s")
                continue
            self._set_healthy(True)
            with contextlib.suppress(psycopg.Error, PoolTimeout):  # kept for the next beat
                await self._flush()
            with contextlib.suppress(psycopg.Error, PoolTimeout, TimeoutError):  # checked again at the next beat
                await self._within(self._check_holds())

    async def _check_holds(self) -> None:
        """Every hold's locks still held, taken again, or reported lost."""
        holds = list(self._holds)
        results = await asyncio.gather(*(hold.check() for hold in holds), return_exceptions=True)
        for hold, result in zip(holds, results, strict=True):
            # A database error is tried again at the next beat; anything else
            # is logged, never raised: the heartbeat goes on.
            if isinstance(result, Exception) and not isinstance(result, (psycopg.Error, PoolTimeout)):
                log.error("checking the lock of VM %s failed", ", ".join(hold.keys.values()), exc_info=result)

    # -- locks -----------------------------------------------------------------

    async def hold(self, keys: Sequence[str]) -> Hold | None:
        pool = self.pool  # the one the connection goes back to, should the store replace its pool meanwhile
        async with self.failing():
            conn = await pool.getconn()
            try:
                for key in keys:
                    await conn.execute("SELECT pg_advisory_lock(%s)", (lock_id(self.scope, key),))
            except BaseException:
                await conn.close()  # a lock it may have got ends with the session
                await pool.putconn(conn)
                raise
        hold = _PgHold(self, pool, conn, keys)
        self._holds.add(hold)
        return hold

    # -- task records ----------------------------------------------------------

    async def start(self, kind: str, subject: str, hold: Hold | None = None) -> str:
        task_id = PREFIX + uuid.uuid4().hex
        params = (task_id, kind, subject, self.replica)
        if isinstance(hold, _PgHold):  # the connection the operation holds: no second one
            hold.task_id = task_id
            await hold.insert("id, kind, subject, owner", params)
            return task_id
        async with self.failing(), self.pool.connection() as conn:
            await conn.execute("INSERT INTO vmp_tasks (id, kind, subject, owner) VALUES (%s, %s, %s, %s)", params)
        return task_id

    async def _write_end(self, task_id: str, error: str, kind: str, subject: str, hold: Hold | None = None) -> None:
        statement = (
            "INSERT INTO vmp_tasks AS t (id, kind, subject, owner, finished, error)"
            " VALUES (%s, %s, %s, %s, clock_timestamp(), %s)"
            " ON CONFLICT (id) DO UPDATE SET finished = excluded.finished, error = excluded.error"
        )
        params = (task_id, kind, subject, self.replica, error)
        if isinstance(hold, _PgHold):  # written, then the locks let go
            await hold.end(statement, params)
            return
        async with self.pool.connection() as conn:
            await conn.execute(statement, params)

    async def finish(self, task_id: str, error: str = "", *, kind: str = "", subject: str = "", hold: Hold | None = None) -> str:
        for last in (False, True):
            if isinstance(hold, _PgHold) and hold.lost and hold.lost not in error:
                error = f"{error}; {hold.lost}" if error else hold.lost
            try:
                await self._write_end(task_id, error, kind, subject, hold)
                return error
            except (psycopg.Error, PoolTimeout, Unavailable) as exc:
                failure = exc
            if last or not isinstance(hold, _PgHold):
                break
            # The hold's session may have ended under the work since the last
            # heartbeat: its locks are checked (taken again, or lost) before
            # the end is written on the hold's connection again.
            with contextlib.suppress(psycopg.Error, PoolTimeout, TimeoutError):
                await self._within(hold.check())
        self._unsaved[task_id] = (error, kind, subject)
        self._failed(self._why(failure))
        log.warning("task %s ended; its record is written once the state database answers again", task_id)
        return error

    async def get(self, task_id: str) -> TaskState | None:
        if task_id in self._unsaved:
            return TaskState(done=True, error=self._unsaved[task_id][0])
        async with self.failing(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT t.finished IS NOT NULL, t.error,"
                " coalesce(r.beat > clock_timestamp() - make_interval(secs => %(lease)s), false)"
                " FROM vmp_tasks t LEFT JOIN vmp_replicas r ON r.id = t.owner WHERE t.id = %(id)s",
                {"lease": self.lease, "id": task_id},
            )
            row = await cur.fetchone()
        if row is None:
            return None
        finished, error, alive = row
        if not finished and not alive:
            return TaskState(done=True, error=INTERRUPTED)
        return TaskState(done=finished, error=error)


__all__ = ["SCHEMA_VERSION", "PostgresStore", "lock_id", "redacted"]
