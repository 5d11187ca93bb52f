"""HTTP health checks for Kubernetes probes (``[server] health_port``).

``GET /healthz`` answers 200 while the process lives: the answer comes
from the event loop that serves gRPC, so a stuck loop fails it.
``GET /readyz`` answers 200 while the backend is connected and the server
is not draining, else 503 saying which. ``GET /metrics`` answers the
Prometheus metrics (:mod:`provider_core.metrics`) unless they are off
(``[server] metrics = false``). Served by aiohttp on the serving
event loop, on all interfaces (IPv6 and IPv4 on one port where the host
has IPv6).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from aiohttp import web

from .errors import ConfigError
from .metrics import NoMetrics, exposition

log = logging.getLogger(__name__)


def bind(port: int) -> socket.socket:
    """A listening socket on ``port`` of every interface: IPv6 with IPv4
    mapped, or IPv4 alone where the host has no IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        sock = None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            sock.close()
            sock = None
    address: tuple[str, int] = ("::", port)
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", port)  # noqa: S104 - all interfaces, as the gRPC port
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = "another process listens on it" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"cannot serve health checks on port {port}: {why}; set health_port (--health-port)") from None
    sock.setblocking(False)
    return sock


class HealthHTTP:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a bound socket;
    ``not_ready()`` says why the provider is not ready, or None when it is."""

    def __init__(self, port: int, not_ready: Callable[[], str | None], metrics: NoMetrics | None = None) -> None:
        self.sock = bind(port)
        self.port: int = self.sock.getsockname()[1]
        self._not_ready = not_ready
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._metrics = metrics
        if metrics is not None and metrics.registry is not None:
            app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        why = self._not_ready()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def _scrape(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        body, content_type = exposition(self._metrics, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()

    async def stop(self) -> None:
        await self._runner.cleanup()
        self.sock.close()

    def close(self) -> None:
        """Give the port back without having served (a start that failed)."""
        self.sock.close()
