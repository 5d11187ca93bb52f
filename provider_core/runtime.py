"""Dispatch of operations to a backend: threads, per-VM locks, tasks.

The gRPC layer hands each request's fields to :meth:`Runtime.call` with its
entry of the one table (:mod:`provider_core.operations`); this module knows
nothing of protobuf. Backend methods block, so they
run in worker threads: requests in one pool, background task work in
another, so that long tasks never starve Describe or health. Mutating
operations on one VM are serialised with per-VM locks (held until their
background work ends), across processes too where the state store shares
them (:mod:`provider_core.state`); different VMs proceed in parallel. Operations the
table marks ``owned`` change a VM only when the backend says it made it
(:meth:`Backend.owns <provider_core.backend.Backend.owns>`), unless the
server's ``manage_foreign_vms`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from pydantic import ValidationError

from . import calls, deadline, urls
from .backend import Backend, Outcome
from .capabilities import REFINES, Offer
from .config import env_prefix
from .errors import (
    Aborted,
    CapabilityMissing,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ProviderError,
    Unavailable,
)
from .metrics import NoMetrics
from .models import Request, TaskState
from .operations import TASK_STATUS, Operation
from .specs import invalid
from .state import Hold, LocalStore, StateStore
from .status import code_name, internal_error
from .tasks import PREFIX
from .workers import WorkerPool

log = logging.getLogger(__name__)
T = TypeVar("T")
L = TypeVar("L")
FOREIGN_ENV = env_prefix("server") + "MANAGE_FOREIGN_VMS"
"""The environment variable of the server's ``manage_foreign_vms``."""


class _Users(Generic[L]):
    """Locks by key, each with the count of those holding or waiting for
    it: made on a key's first use, dropped with its last user."""

    def __init__(self, make: Callable[[], L]) -> None:
        self._make = make
        self._locks: dict[Hashable, tuple[L, int]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._locks

    def join(self, key: Hashable) -> L:
        """``key``'s lock, with one user more."""
        lock, users = self._locks[key] if key in self._locks else (self._make(), 0)
        self._locks[key] = (lock, users + 1)
        return lock

    def lock(self, key: Hashable) -> L:
        """``key``'s lock (while it has users)."""
        return self._locks[key][0]

    def leave(self, key: Hashable) -> bool:
        """One user of ``key`` less; True when that was the last (its lock is dropped)."""
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
            return True
        self._locks[key] = (lock, users - 1)
        return False

    def users(self, key: Hashable) -> int:
        """How many hold or wait for ``key``'s lock."""
        return self._locks[key][1] if key in self._locks else 0


def _unheard(done: asyncio.Future[Any]) -> None:
    """Take the outcome of work whose caller went away (nobody else will):
    an Unavailable store is already reported by the task's own end."""
    exc = None if done.cancelled() else done.exception()
    if exc is not None and not isinstance(exc, Unavailable):
        log.warning("a call whose caller went away failed after its backend call: %s", exc)


class KeyedLocks:
    """asyncio locks by key, created on demand and dropped when unused.

    A key may stand for another while that one is in use (:meth:`alias`):
    a new VM's id for the name it was created under, so that a call naming
    it by id waits for the work its creation still runs."""

    def __init__(self) -> None:
        self._locks: _Users[asyncio.Lock] = _Users(asyncio.Lock)
        self._aliases: dict[str, str] = {}

    def alias(self, key: str, target: str) -> None:
        """Until nobody uses ``target`` any more, ``key`` means ``target``."""
        target = self._aliases.get(target, target)
        if key != target and target in self._locks:
            self._aliases[key] = target

    def users(self, key: str) -> int:
        """How many calls hold or wait for ``key``'s lock."""
        return self._locks.users(self._aliases.get(key, key))

    async def acquire(self, keys: Iterable[str]) -> list[str]:
        held: list[str] = []
        try:
            for key in sorted({self._aliases.get(k, k) for k in keys}):  # one global order: no deadlocks
                lock = self._locks.join(key)
                held.append(key)
                await lock.acquire()
        except BaseException:
            self._drop(held, acquired=held[:-1])
            raise
        return held

    def release(self, keys: list[str]) -> None:
        self._drop(keys, acquired=keys)

    def _drop(self, keys: list[str], acquired: list[str]) -> None:
        for key in keys:
            if key in acquired:
                self._locks.lock(key).release()
            if self._locks.leave(key):
                for alias in [a for a, target in self._aliases.items() if target == key]:
                    del self._aliases[alias]


class KeyedThreadLocks:
    """The thread-side twin of :class:`KeyedLocks`, for code that runs in
    worker threads (a backend's): one holder per key at a time, a key's
    lock made on demand and dropped when unused. Keep one per backend
    instance, so that two endpoints served in one process never wait for
    each other."""

    def __init__(self) -> None:
        self._locks: _Users[threading.Lock] = _Users(threading.Lock)
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        """Hold ``key``'s lock for the block, waiting for its holder first."""
        with self._guard:
            lock = self._locks.join(key)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                self._locks.leave(key)

    def users(self, key: Hashable) -> int:
        """How many threads hold or wait for ``key``'s lock."""
        with self._guard:
            return self._locks.users(key)


@dataclass
class Held:
    """The locks one mutation holds: in this process (:class:`KeyedLocks`
    keys) and, where the state store shares them, across processes."""

    local: list[str]
    shared: Hold | None = None


class Runtime:
    """Runs one backend on behalf of the gRPC service. ``store`` keeps the
    task records and holds the per-VM locks across processes (default: a
    :class:`~provider_core.state.LocalStore` in ``state_dir``)."""

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        state_dir: Path | None = None,
        store: StateStore | None = None,
        workers: int = 64,
        task_workers: int = 32,
        health_interval: float = 5.0,
        manage_foreign_vms: bool = False,
        metrics: NoMetrics | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics or NoMetrics()
        self.name = name
        self.declared = backend.declared()
        self.offer: Offer | None = None  # what the endpoint offers, known once connected
        self.store = store if store is not None else LocalStore(state_dir / "tasks.sqlite3" if state_dir else None)
        self._calls = WorkerPool(workers, f"{name}-call")
        self._work = WorkerPool(task_workers, f"{name}-task")
        self._locks = KeyedLocks()
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._health_interval = health_interval
        self.manage_foreign_vms = manage_foreign_vms
        self.connected = False
        self._on_health: list[Callable[[bool], None]] = []
        self._settling: set[asyncio.Future[Any]] = set()
        self.store.on_health(lambda _: self._tell_health())
        self.store.on_lock_lost(self.metrics.lock_lost)

    # -- threads --------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None, operation: str = "") -> T:
        """Run a blocking backend call in a worker thread with the caller's
        deadline visible through provider_core.deadline, timed as the
        hypervisor call ``operation`` (by default ``fn``'s name)."""
        ctx = contextvars.copy_context()
        ctx.run(deadline.set_remaining, timeout)
        timed = self.metrics.timed(operation or getattr(fn, "__name__", "call"), fn, code_name)
        return await self._calls.run(ctx.run, timed, *args)

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)``, work of the core's own that takes long enough to
        hold up other calls (converting a long answer), in a worker thread."""
        return await self._calls.run(contextvars.copy_context().run, fn, *args)

    # -- health and life cycle -------------------------------------------------

    def on_health(self, callback: Callable[[bool], None]) -> None:
        """``callback(serving)`` on each change of :attr:`serving`."""
        self._on_health.append(callback)

    @property
    def serving(self) -> bool:
        """The backend is connected and the state store answers."""
        return self.connected and self.store.healthy

    def _tell_health(self) -> None:
        for cb in self._on_health:
            cb(self.serving)

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            log.info("backend %s is %s", self.name, "connected" if value else "unreachable")
        self.connected = value
        self.metrics.reachable(value)
        self._tell_health()

    async def connect(self) -> bool:
        try:
            await self._call(self.backend.connect)
            offer = await self._call(self.backend.offer)
        except ProviderError as exc:
            log.warning("backend %s cannot connect: %s", self.name, exc)
            self._set_connected(False)
        except Exception as exc:  # noqa: BLE001 - an untranslated error still means "cannot connect"
            internal_error(exc, "connect")
            self._set_connected(False)
        else:
            self._take(offer)
            self._set_connected(True)
        return self.connected

    def _take(self, offer: Offer) -> None:
        beyond = offer.beyond(self.declared)
        if beyond:
            log.error("backend %s offers more than its class declares, ignored: %s", self.name, ", ".join(beyond))
            offer = offer.within(self.declared)
        orphans = [c for c in offer.capabilities if c in REFINES and REFINES[c] not in offer.capabilities]
        if orphans:
            log.error("backend %s offers %s without what they refine, ignored", self.name, ", ".join(c.value for c in orphans))
            offer = offer.without(*orphans)
        offer = offer.staged(urls.roots().backends())
        if offer != self.offer:
            missing = sorted(c.value for c in self.declared.capabilities - offer.capabilities)
            log.info(
                "backend %s offers %s", self.name, "everything it declares" if not missing else f"all but {', '.join(missing)}"
            )
        self.offer = offer

    def offered(self) -> Offer:
        """What the endpoint offers; Unavailable before the backend first connected."""
        if self.offer is None:
            raise Unavailable(f"backend {self.name} has not connected yet: what it offers is not known")
        return self.offer

    async def monitor(self) -> None:
        """Ping the backend periodically; reconnect when it stopped answering."""
        while True:
            await asyncio.sleep(self._health_interval)
            if self.connected:
                try:
                    await self._call(self.backend.ping)
                except ProviderError as exc:
                    log.warning("backend %s stopped answering: %s", self.name, exc)
                    self._set_connected(False)
                except Exception as exc:  # noqa: BLE001 - a broken ping must not kill the monitor
                    internal_error(exc, "ping")
                    self._set_connected(False)
            if not self.connected:
                await self.connect()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for backend calls and background tasks, then stop."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        # Calls whose callers went away still run in their threads (and may
        # yet start background work): they get the grace period too.
        if self._calls.busy:
            log.info("waiting up to %.1fs for %d backend call(s)", grace, self._calls.busy)
        await self._calls.idle(grace)
        pending = list(self._running.values())
        if pending:
            grace = max(0.0, end - loop.time())
            log.info("waiting up to %.1fs for %d background task(s)", grace, len(pending))
            _, unfinished = await asyncio.wait(pending, timeout=grace)
            for job in unfinished:  # their records stay open: the next start reports them interrupted
                job.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
        self._calls.shutdown()
        self._work.shutdown()
        stuck = self._calls.busy + self._work.busy
        if stuck:
            log.warning("abandoning %d backend call(s) still running after the grace period", stuck)
        if self._settling:
            await asyncio.wait(self._settling)
        await asyncio.get_running_loop().run_in_executor(None, self.backend.close)
        await self.store.close()

    # -- the machinery of mutating operations ----------------------------------

    async def _mutate(
        self,
        op: Operation,
        fn: Callable[..., Outcome[T]],
        *args: Any,
        vm: str | None = None,
        new_vm: str | None = None,
        names: tuple[str, ...] = (),
        timeout: float | None,
        missing_ok: bool = False,
        wait: bool = False,
    ) -> tuple[T, str]:
        """Run a mutating backend call under the locks of the VM ``vm``, of
        the VM named ``new_vm`` (both by :meth:`_key`: one lock per VM, by
        whichever id or name a call gives) and of ``names`` (an image's).
        While background work runs, the id the call returned locks as
        ``new_vm`` does.

        Returns the value and a task id ("" when finished). With
        ``missing_ok`` a NotFound from the backend counts as success. With
        ``wait`` the caller waits for background work while its deadline
        allows, and then gets the final value and no task.
        """
        started = time.monotonic()
        new_key = None if new_vm is None else await self._key(new_vm, timeout)
        keys = [*[k for k in (None if vm is None else await self._key(vm, timeout), new_key) if k is not None], *names]
        held = Held(await self._locks.acquire(keys))
        try:
            held.shared = await self.store.hold(sorted(set(keys)))
        except BaseException:
            self._locks.release(held.local)
            raise
        if timeout is not None:  # waiting for the lock used part of the caller's deadline
            timeout -= time.monotonic() - started
        lock_key = self.backend.lock_key

        def change(*call_args: Any) -> tuple[Outcome[T], str | None]:
            """The backend call and, for a new VM whose work runs on, the lock
            key of the id it returned (in the same worker: nothing to await
            between the call and the alias)."""
            outcome = fn(*call_args)
            made = lock_key(str(outcome.value)) if new_key is not None and outcome.work is not None else None
            return outcome, made

        call = asyncio.ensure_future(self._call(change, *args, timeout=timeout, operation=op.method))
        try:
            outcome, made = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The caller went away, the backend still runs the operation: the
            # VM stays locked until it has finished, and its work still runs.
            settle = functools.partial(self._settle, op=op, keys=keys, held=held, missing_ok=missing_ok, new_key=new_key)
            call.add_done_callback(settle)
            raise
        except NotFound:
            await self._release(held)
            if missing_ok:
                return cast(T, None), ""  # only asked for by operations whose value is None
            raise
        except BaseException:
            await self._release(held)
            raise
        if outcome.work is None:
            await self._release(held)
            return outcome.value, outcome.native_task
        # Claiming the id and storing the task's record await the store: a
        # caller that goes away meanwhile leaves them to finish, or the work
        # would never run and the VM stay locked.
        tracking = self._claim_and_track(op, keys, outcome, held, missing_ok=missing_ok, made=made, new_key=new_key)
        try:
            task_id, job = await asyncio.shield(tracking)
        except asyncio.CancelledError:
            self._settling.add(tracking)
            tracking.add_done_callback(_unheard)
            tracking.add_done_callback(self._settling.discard)
            raise
        if wait:
            budget = None if timeout is None else timeout - 2.0
            if budget is None or budget > 0:
                done, _ = await asyncio.wait({job}, timeout=budget)
                if done:
                    value, failure = job.result()
                    if failure is not None:
                        raise failure
                    return value, ""
        return outcome.value, task_id

    async def _release(self, held: Held) -> None:
        self._locks.release(held.local)
        if held.shared is not None:
            await held.shared.release()

    def _claim_and_track(
        self,
        op: Operation,
        keys: list[str],
        outcome: Outcome[T],
        held: Held,
        *,
        missing_ok: bool,
        made: str | None,
        new_key: str | None,
    ) -> asyncio.Future[tuple[str, asyncio.Task[tuple[T, ProviderError | None]]]]:
        """Lock a new VM's id as its name is locked, while its work runs:
        in this process by alias, at once (a call naming the id next waits
        for the work), across processes by holding it too; then run the
        work as a task (:meth:`_track`). The future of the latter."""
        if made is not None and new_key is not None:
            self._locks.alias(made, new_key)
        return asyncio.ensure_future(
            self._share_and_track(op, keys, outcome, held, missing_ok=missing_ok, shared=made if made != new_key else None)
        )

    async def _share_and_track(
        self, op: Operation, keys: list[str], outcome: Outcome[T], held: Held, *, missing_ok: bool, shared: str | None
    ) -> tuple[str, asyncio.Task[tuple[T, ProviderError | None]]]:
        if shared is not None and held.shared is not None:
            try:
                await held.shared.add(shared)
            except BaseException:
                await self._release(held)  # no work runs to let the VM go
                raise
        return await self._track(op, keys, outcome, held, missing_ok)

    async def _track(
        self, op: Operation, keys: list[str], outcome: Outcome[T], held: Held, missing_ok: bool
    ) -> tuple[str, asyncio.Task[tuple[T, ProviderError | None]]]:
        """Run an outcome's work as a task; it releases ``held`` when done.
        The task's record is stored before its id is returned; when the
        store cannot take it, the work runs on all the same (its end is
        recorded) and the caller hears UNAVAILABLE."""
        subject = ",".join(keys)
        try:
            task_id = await self.store.start(op.kind, subject, held.shared)
            unrecorded: Unavailable | None = None
        except Unavailable as exc:
            task_id, unrecorded = PREFIX + uuid.uuid4().hex, exc
        self.metrics.task_started(op.kind)
        job = asyncio.create_task(self._background(task_id, op, outcome, held, subject=subject, missing_ok=missing_ok))
        self._running[task_id] = job
        if unrecorded is not None:
            raise unrecorded
        return task_id, job

    def _settle(
        self,
        call: asyncio.Future[tuple[Outcome[T], str | None]],
        *,
        op: Operation,
        keys: list[str],
        held: Held,
        missing_ok: bool,
        new_key: str | None,
    ) -> None:
        """Finish a mutation whose caller went away once the backend returned."""
        job = asyncio.ensure_future(self._settled(call, op=op, keys=keys, held=held, missing_ok=missing_ok, new_key=new_key))
        self._settling.add(job)
        job.add_done_callback(self._settling.discard)

    async def _settled(
        self,
        call: asyncio.Future[tuple[Outcome[T], str | None]],
        *,
        op: Operation,
        keys: list[str],
        held: Held,
        missing_ok: bool,
        new_key: str | None,
    ) -> None:
        if call.cancelled() or call.exception() is not None or call.result()[0].work is None:
            await self._release(held)
            return
        outcome, made = call.result()
        with contextlib.suppress(Unavailable):  # nobody waits for the answer
            await self._claim_and_track(op, keys, outcome, held, missing_ok=missing_ok, made=made, new_key=new_key)

    async def _background(
        self, task_id: str, op: Operation, outcome: Outcome[T], held: Held, *, subject: str, missing_ok: bool
    ) -> tuple[T, ProviderError | None]:
        assert outcome.work is not None
        value = outcome.value
        failure: ProviderError | None = None
        work = self.metrics.timed(f"{op.method}_work", outcome.work, code_name)
        try:
            try:
                result = await self._work.run(contextvars.copy_context().run, work)
                if result is not None:
                    value = result
            except NotFound as exc:
                if not missing_ok:
                    failure = exc
            except ProviderError as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - a task's failure is reported, never raised
                failure = Internal(internal_error(exc, f"task {op.kind}"))
            error = "" if failure is None else (str(failure) or type(failure).__name__)
            # Recorded before the VM is let go: whoever locks it next finds the task ended.
            recorded = await self.store.finish(task_id, error, kind=op.kind, subject=subject, hold=held.shared)
            if recorded != error:  # the VM's lock was lost to another operation meanwhile
                error, failure = recorded, Aborted(recorded)
            self.metrics.task_finished(op.kind, failed=bool(error))
        finally:
            await self._release(held)
            self._running.pop(task_id, None)
        if error:
            log.info("task %s (%s) failed: %s", task_id, op.kind, error)
        return value, failure

    # -- operations ------------------------------------------------------------

    def _gate(self, op: Operation) -> None:
        if op.capability is not None and op.capability not in self.offered().capabilities:
            raise CapabilityMissing(op.capability.value, self.name)

    def request(self, op: Operation, fields: Mapping[str, Any]) -> Request:
        """The checked request of ``op`` from a request's fields (by their
        protocol names): capability first (an endpoint that does not offer
        the RPC refuses it whatever the request), then the request model
        (InvalidArgument naming the field), then what the request's options
        need (refining capabilities, a format, a staging backend and a
        transfer mode the endpoint offers: ``auto`` becomes the mode used)."""
        self._gate(op)
        try:
            spec = op.request.model_validate(fields)
        except ValidationError as exc:
            raise invalid(exc) from None
        for field, capability in op.refines:
            if getattr(spec, field) and capability not in self.offered().capabilities:
                raise CapabilityMissing(capability.value, self.name)
        if op.formats:
            allowed: tuple[str, ...] = getattr(self.offered(), op.formats)
            fmt = getattr(spec, "format")  # noqa: B009 - every request with formats has a format field
            if fmt not in allowed:
                problem = f"format {fmt!r} is not supported; use one of {', '.join(allowed) or '(none)'}"
                raise InvalidArgument.field("format", problem)
        if op.backends:
            spec_fields = dict(spec)
            mode = self.offered().transfer_mode(op.backends, spec_fields["backend_type"], spec_fields["transfer_mode"])
            spec = spec.model_copy(update={"transfer_mode": mode})
        return spec

    async def run(self, op: Operation, spec: Request, timeout: float | None) -> tuple[Any, str]:
        """Run ``op`` on the backend with a request :meth:`request` checked:
        its value and a task id ("" when finished, a native task id, or a
        task of the core's)."""
        if op is TASK_STATUS:  # the core's own tasks, or the backend's native ones
            (task_id,) = spec.args()
            calls.note(task=task_id)
            return await self.task_status(task_id, timeout), ""
        fn = getattr(self.backend, op.method)
        if (op.owned or op.copies) and not self.manage_foreign_vms:
            fn = self._own_only(fn, getattr(spec, op.vm), copy=op.copies)
        if not op.mutates:
            try:
                return await self._call(fn, *spec.args(), timeout=timeout, operation=op.method), ""
            except NotFound:
                if op.missing_ok:
                    return None, ""
                raise
        vm = getattr(spec, op.vm) if op.vm else None
        new_vm = getattr(spec, op.new_vm) if op.new_vm else None
        names = tuple([await self._key(key.format_map(dict(spec)), timeout) for key in op.names])
        return await self._mutate(
            op,
            fn,
            *spec.args(),
            vm=vm,
            new_vm=new_vm,
            names=names,
            timeout=timeout,
            missing_ok=op.missing_ok,
            wait=op.wait,
        )

    def _own_only(self, fn: Callable[..., T], vm_id: str, copy: bool = False) -> Callable[..., T]:
        """``fn``, first refusing a VM this provider did not make (asked in
        the same worker, under the VM's lock); one that is only copied may
        also be one the backend lets anyone copy. A missing VM passes: the
        operation says NotFound, or Delete succeeds."""
        owns = self.backend.copyable if copy else self.backend.owns

        def guarded(*args: Any) -> T:
            try:
                own = owns(vm_id)
            except NotFound:
                own = True
            if not own:
                raise FailedPrecondition(
                    f"VM {vm_id!r} was not made by this provider; changing it needs the server setting"
                    f" manage_foreign_vms = true ([server] in plugins.toml, or {FOREIGN_ENV}=true)"
                )
            return fn(*args)

        return guarded

    async def call(self, op: Operation, fields: Mapping[str, Any], timeout: float | None) -> tuple[Any, str]:
        """:meth:`request`, then :meth:`run`: what the servicer does for each
        RPC. The VM and the task it answers go to the call's record
        (:mod:`provider_core.calls`), for the access log."""
        named = op.vm or op.new_vm
        if named:  # as the caller named it: a request refused names it too
            calls.note(vm=str(fields.get(named, "")))
        spec = self.request(op, fields)
        value, task = await self.run(op, spec, timeout)
        if op.new_vm and value is not None:
            calls.note(vm=str(value))
        if task:
            calls.note(task=task)
        return value, task

    async def _key(self, vm_id: str, timeout: float | None) -> str:
        """The lock key of a VM or an image: its id or name, or the
        backend's one name for it."""
        if type(self.backend).lock_key is Backend.lock_key:
            return vm_id  # no hop to a worker for the default
        return await self._call(self.backend.lock_key, vm_id, timeout=timeout)

    async def task_status(self, task_id: str, timeout: float | None) -> TaskState:
        if not task_id:  # clients treat an absent task as finished
            return TaskState(done=True)
        if task_id.startswith(PREFIX):
            state = await self.store.get(task_id)
            if state is None:
                raise NotFound(f"task {task_id!r} not found")
            return state
        return await self._call(self.backend.task_status, task_id, timeout=timeout)


__all__ = ["KeyedLocks", "KeyedThreadLocks", "Runtime"]
