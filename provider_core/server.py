"""The grpc.aio server: provider.v1, health, reflection, TLS, auth, drain."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from . import urls
from .backend import Backend
from .config import ServerSettings, default_state_dir
from .errors import ConfigError
from .pb import provider_pb2
from .runtime import Runtime
from .service import ProviderService, add_to_server
from .status import GuardedRegistrar

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE_NAME = provider_pb2.DESCRIPTOR.services_by_name["Provider"].full_name
HEALTH_PREFIX = "/grpc.health.v1.Health/"


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


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Require ``authorization: Bearer <token>`` on every call but health checks."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(HEALTH_PREFIX):
            return await continuation(details)
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        return self._deny


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    cert = _read(settings.tls_cert, "TLS certificate")
    key = _read(settings.tls_key, "TLS key")
    ca = _read(settings.tls_client_ca, "client CA") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class ProviderServer:
    """A configured, running provider: call :meth:`start`, then :meth:`stop`."""

    def __init__(self, backend: Backend, name: str, settings: ServerSettings) -> None:
        self.settings = settings
        urls.allow(settings.allow_addresses)
        self.runtime = Runtime(
            backend,
            name,
            state_dir=settings.state_dir or default_state_dir(name),
            workers=settings.workers,
            task_workers=settings.task_workers,
            health_interval=settings.health_interval,
        )
        interceptors = [BearerTokenInterceptor(settings.auth_token.get_secret_value())] if settings.auth_token else []
        self.server = grpc.aio.server(interceptors=interceptors)
        add_to_server(ProviderService(self.runtime), self.server)
        self.health = health.aio.HealthServicer()
        guarded = GuardedRegistrar(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), guarded)
        creds = server_credentials(settings)
        self.port: int
        try:
            if creds is None:
                self.port = self.server.add_insecure_port(settings.listen)
            else:
                self.port = self.server.add_secure_port(settings.listen, creds)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {settings.listen}: {exc}") from None
        self._monitor: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self.runtime.on_health(self._health_changed)

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
        log.info("serving %s on port %d (backend %s, event loop %s)", SERVICE_NAME, self.port, self.runtime.name, loop)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones and tasks finish within grace."""
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
