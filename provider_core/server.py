"""The grpc.aio server: provider.v1, health (gRPC, and HTTP for probes), reflection, TLS, auth, drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from . import urls
from .auth import CallGuard, UnknownMethods
from .backend import Backend
from .config import INSECURE_ENV, ServerSettings, default_state_dir, endpoint, endpoint_id
from .errors import ConfigError
from .health_http import HealthHTTP
from .listening import Credentials, bind, check_address, security, split_listen, tls_files
from .metrics import Metrics, NoMetrics
from .observer import Observer
from .pb import provider_pb2
from .runtime import Runtime
from .service import ProviderService, add_to_server
from .state import LocalStore, StateStore
from .status import GuardedRegistrar
from .tasks import StateDir
from .tls_proxy import TlsFront

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE_NAME = provider_pb2.DESCRIPTOR.services_by_name["Provider"].full_name


def new_event_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """An event loop to serve on (``ServerSettings.event_loop``): uvloop's,
    on which grpc.aio spends about a tenth less CPU per call than on
    asyncio's own (bench/describe_throughput.py), or asyncio's. asyncio's
    where uvloop is not installed (it has no Windows build)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: serving on asyncio's event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], kind: str = "uvloop") -> T:
    """``asyncio.run(main)`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        return runner.run(main)


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # grpc ships no type hints
    """grpc's health service, whose Watch streams end when the server
    stops accepting calls: an open stream is no call to wait for."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({watch, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            closing.cancel()
        if not watch.cancelled() and watch.done():
            watch.result()
            return
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the provider is stopping")

    def close_watches(self) -> None:
        self._closing.set()


def state_store(backend: Backend, name: str, settings: ServerSettings) -> tuple[StateDir | None, StateStore]:
    """The state store ``settings`` choose: PostgreSQL for ``state_url``,
    else a SQLite file in the state directory, taken (and returned) here."""
    if settings.state_url is not None:
        from .state_pg import PostgresStore

        return None, PostgresStore(
            settings.state_url.get_secret_value().strip(),
            scope=f"{name}-{endpoint_id(backend.settings)}",
            lease=settings.state_lease,
            pool_size=settings.state_pool_size,
        )
    state = StateDir.open(settings.state_dir or default_state_dir(name, backend.settings))
    return state, LocalStore(state.path / "tasks.sqlite3")


class ProviderServer:
    """A configured, running provider: call :meth:`start`, then :meth:`stop`.

    Built, it holds its state directory's lock and its port: a second
    provider on either refuses to start (ConfigError naming what is taken).
    With ``state_url`` its state is in PostgreSQL, shared with every replica
    naming the same database, and no state directory is taken.
    """

    def __init__(self, backend: Backend, name: str, settings: ServerSettings) -> None:
        self.settings = settings
        urls.allow(settings.allow_addresses)
        urls.set_roots(settings.pvc_root, settings.nfs_root)
        self.tls = tls_files(settings)  # checks the TLS files before anything is taken
        creds = Credentials(self.tls, settings.tls_min_version) if self.tls else None
        self.front: TlsFront | None = None
        self.state, store = state_store(backend, name, settings)
        self.metrics = Metrics(name) if settings.metrics else NoMetrics()
        try:
            self.runtime = Runtime(
                backend,
                name,
                store=store,
                workers=settings.workers,
                task_workers=settings.task_workers,
                health_interval=settings.health_interval,
                manage_foreign_vms=settings.manage_foreign_vms,
                metrics=self.metrics,
            )
            self.endpoint = endpoint(backend.settings)
            check_sans = self.tls is not None and bool(settings.allowed_sans)
            token = settings.auth_token.get_secret_value() if settings.auth_token else None
            self.auth = CallGuard(token, check_sans=check_sans) if token or check_sans else None
            # grpc shares a port with other processes unless told not to: two
            # providers would then split the clients between them, each with its own state.
            options = [("grpc.so_reuseport", 1 if settings.reuse_port else 0)]
            self.server = grpc.aio.server(options=options)
            self.health = HealthServicer()
            self._add_services(settings)
            check_address(settings.listen, settings.reuse_port)
            self.port: int
            try:
                if creds is None:
                    self.port = self.server.add_insecure_port(settings.listen)
                else:  # TLS is terminated in front of grpc (tls_proxy), which listens only privately
                    self.front = TlsFront(bind(settings.listen, settings.reuse_port), creds, settings.allowed_sans)
                    self.port = self.front.port
                    self.server.add_insecure_port(f"unix:{self.front.upstream}")
                    self.front.secure_upstream()
            except RuntimeError as exc:
                raise ConfigError(f"cannot listen on {settings.listen}: {exc}") from None
            self._draining = False
            self.http = None
            if settings.health_port is not None:
                self.http = HealthHTTP(settings.health_port, self._not_ready, self.metrics)
        except BaseException:
            if self.front is not None:
                self.front.sock.close()
                self.front.remove()
            if self.state is not None:
                self.state.release()
            raise
        self._monitor: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self.runtime.on_health(self._health_changed)

    def _add_services(self, settings: ServerSettings) -> None:
        """Register the provider, health and reflection services, each
        method wrapped by the call guard (when one is set) and the observer."""
        wrappers = [*([self.auth.wrap] if self.auth else []), Observer(self.metrics, settings.access_log).wrap]
        guarded = GuardedRegistrar(self.server, wrappers)
        add_to_server(ProviderService(self.runtime, detailed_power=settings.power_states == "detailed"), guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), guarded)
        # after every service: methods none of them has, checked, counted and logged as the others
        guarded.add_generic_rpc_handlers((UnknownMethods(),))

    @property
    def address(self) -> str:
        """The address served, with the port bound (for port 0)."""
        parsed = split_listen(self.settings.listen)
        if parsed is None:
            return self.settings.listen
        host = parsed[0] if ":" not in parsed[0] else f"[{parsed[0]}]"
        return f"{host}:{self.port}"

    def _not_ready(self) -> str | None:
        """Why /readyz answers 503, or None."""
        if self._draining:
            return "draining: the provider is stopping"
        if not self.runtime.connected:
            return f"backend {self.runtime.name} is not connected"
        if not self.runtime.store.healthy:
            return "the state database is unreachable"
        return None

    def _health_changed(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self._pending.add(asyncio.ensure_future(self.health.set(service, status)))
        self._pending = {f for f in self._pending if not f.done()}

    async def start(self) -> None:
        self._health_changed(False)
        await self.runtime.store.open()
        if self.http is not None:
            await self.http.start()
        await self.server.start()
        if self.front is not None:
            await self.front.start()
        await self.runtime.connect()
        self._monitor = asyncio.create_task(self.runtime.monitor())
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        where = f" at {self.endpoint}" if self.endpoint else ""
        probes = f"; health http on [::]:{self.http.port}" if self.http is not None else ""
        log.info(
            "serving %s on %s (%s); backend %s%s; state in %s; event loop %s%s",
            SERVICE_NAME,
            self.address,
            security(self.settings, self.tls),
            self.runtime.name,
            where,
            self.runtime.store.describe(),
            loop,
            probes,
        )
        if self.tls is None and self.settings.tls_dir is not None:
            log.warning(
                "serving PLAINTEXT: tls_dir %s holds no TLS files and require_tls is off (as %s=true has it); "
                "anyone who reaches %s can call the provider, unencrypted",
                self.settings.tls_dir,
                INSECURE_ENV,
                self.address,
            )
        if self.settings.auth_token and self.tls is None:
            log.warning("auth_token is set but TLS is off: the token crosses the network in clear text; set tls_cert and tls_key")

    async def stop(self, grace: float | None = None, delay: float = 0.0, hurry: asyncio.Event | None = None) -> None:
        """Drain, all within ``grace`` seconds: health says NOT_SERVING at
        once; calls are still served for ``delay`` seconds (or until
        ``hurry`` is set), so that clients and probes watching health move
        away; then new calls are refused, in-flight ones and background
        tasks finish, and the state directory is released."""
        grace = self.settings.grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        end = loop.time() + grace  # one grace period for the whole stop
        self._draining = True  # /readyz: 503
        await self.health.enter_graceful_shutdown()
        if self._monitor:
            self._monitor.cancel()
            with suppress(asyncio.CancelledError):
                await self._monitor
        delay = min(delay, grace)
        if delay > 0:
            log.info("health is NOT_SERVING; still serving calls for %.1fs", delay)
            with suppress(TimeoutError):
                await asyncio.wait_for((hurry or asyncio.Event()).wait(), delay)
        self.health.close_watches()
        if self.front is not None:
            self.front.close()
        await self.server.stop(max(0.0, end - loop.time()))
        if self.front is not None:
            await self.front.stop()
        await self.runtime.drain(max(0.0, end - loop.time()))
        if self.http is not None:
            await self.http.stop()
        if self.state is not None:
            self.state.release()

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then drain; a second signal cuts
        the drain delay short. The signals are handled from before the
        start line, so that one arriving just after it drains too."""
        stop, hurry = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def received() -> None:
            (hurry if stop.is_set() else stop).set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, received)
        await self.start()
        await stop.wait()
        log.info("signal received: draining for up to %.0fs", self.settings.grace_seconds)
        await self.stop(delay=self.settings.drain_delay, hurry=hurry)
        log.info("stopped")
