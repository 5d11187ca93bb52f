"""The grpc.aio server: provider.v1, health, reflection, TLS, auth, drain."""

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
from .auth import BearerTokenInterceptor
from .backend import Backend
from .config import ServerSettings, default_state_dir, endpoint
from .errors import ConfigError
from .listening import check_address, security, server_credentials, split_listen
from .pb import provider_pb2
from .runtime import Runtime
from .service import ProviderService, add_to_server
from .status import GuardedRegistrar
from .tasks import StateDir

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


class ProviderServer:
    """A configured, running provider: call :meth:`start`, then :meth:`stop`.

    Built, it holds its state directory's lock and its port: a second
    provider on either refuses to start (ConfigError naming what is taken).
    """

    def __init__(self, backend: Backend, name: str, settings: ServerSettings) -> None:
        self.settings = settings
        urls.allow(settings.allow_addresses)
        creds = server_credentials(settings)  # checks the TLS files before anything is taken
        self.state = StateDir.open(settings.state_dir or default_state_dir(name, backend.settings))
        try:
            self.runtime = Runtime(
                backend,
                name,
                state_dir=self.state.path,
                workers=settings.workers,
                task_workers=settings.task_workers,
                health_interval=settings.health_interval,
            )
            self.endpoint = endpoint(backend.settings)
            self.auth = BearerTokenInterceptor(settings.auth_token.get_secret_value()) if settings.auth_token else None
            # grpc shares a port with other processes unless told not to: two
            # providers would then split the clients between them, each with its own state.
            options = [("grpc.so_reuseport", 1 if settings.reuse_port else 0)]
            self.server = grpc.aio.server(interceptors=[self.auth] if self.auth else [], options=options)
            add_to_server(ProviderService(self.runtime), self.server)
            self.health = health.aio.HealthServicer()
            guarded = GuardedRegistrar(self.server)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), guarded)
            check_address(settings.listen, settings.reuse_port)
            self.port: int
            try:
                if creds is None:
                    self.port = self.server.add_insecure_port(settings.listen)
                else:
                    self.port = self.server.add_secure_port(settings.listen, creds)
            except RuntimeError as exc:
                raise ConfigError(f"cannot listen on {settings.listen}: {exc}") from None
        except BaseException:
            self.state.release()
            raise
        self._monitor: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self.runtime.on_health(self._health_changed)

    @property
    def address(self) -> str:
        """The address served, with the port bound (for port 0)."""
        parsed = split_listen(self.settings.listen)
        if parsed is None:
            return self.settings.listen
        host = parsed[0] if ":" not in parsed[0] else f"[{parsed[0]}]"
        return f"{host}:{self.port}"

    def _health_changed(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self._pending.add(asyncio.ensure_future(self.health.set(service, status)))
        self._pending = {f for f in self._pending if not f.done()}

    async def start(self) -> None:
        self._health_changed(False)
        await self.server.start()
        await self.runtime.connect()
        self._monitor = asyncio.create_task(self.runtime.monitor())
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        where = f" at {self.endpoint}" if self.endpoint else ""
        log.info(
            "serving %s on %s (%s); backend %s%s; state in %s; event loop %s",
            SERVICE_NAME,
            self.address,
            security(self.settings),
            self.runtime.name,
            where,
            self.state.path,
            loop,
        )
        if self.settings.auth_token and not self.settings.tls_cert:
            log.warning("auth_token is set but TLS is off: the token crosses the network in clear text; set tls_cert and tls_key")

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones and tasks finish within
        grace; then release the state directory."""
        grace = self.settings.grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        end = loop.time() + grace  # one grace period for calls and background tasks together
        await self.health.enter_graceful_shutdown()
        if self._monitor:
            self._monitor.cancel()
            with suppress(asyncio.CancelledError):
                await self._monitor
        await self.server.stop(grace)
        await self.runtime.drain(max(0.0, end - loop.time()))
        self.state.release()

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then drain."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: draining for up to %.0fs", self.settings.grace_seconds)
        await self.stop()
        log.info("stopped")
