"""The layer's plumbing: an HTTPS server that relays each API request to
fakepve unless one of the behaviours answers it (or rewrites the answer).

A behaviour registers routes, ``(method, path pattern, handler)``; the path
is the API path without ``/api2/json``. Handlers run in registration order;
the first that returns a response answers, ``None`` passes the request on.
Requests the layer answers itself are added to ``pve.requests`` in fakepve's
``(method, path, body)`` form, so that tests see every request the provider
sent, relayed or not. Answers keep Proxmox's shape: ``{"data": ...}``, and
errors carry the message as the HTTP reason phrase (which proxmoxer reads)
and in the body.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from fakepve import TaskError

API = "/api2/json"
Handler = Callable[["Call", "re.Match[str]"], Awaitable["web.StreamResponse | None"]]
SECRET_FORM = re.compile(r"((?:^|&)(?:password|new-password|cipassword)=)[^&]*")


@dataclass
class Call:
    """One API request as the layer sees it."""

    request: web.Request
    method: str
    path: str
    params: dict[str, str]
    body: bytes
    user: str
    answered_here: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def flag(self, name: str) -> bool:
        return str(self.params.get(name, "0")).lower() in ("1", "true", "on", "yes")


@dataclass
class Upstream:
    status: int
    reason: str
    body: bytes
    content_type: str

    def data(self) -> Any:
        return json.loads(self.body or b"{}").get("data")


class Layer:
    """The HTTPS server in front of fakepve."""

    def __init__(self, pve: Any, loop: asyncio.AbstractEventLoop, cafile: str) -> None:
        self.pve = pve
        self.loop = loop
        self.cafile = cafile
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern), handler))

    # -- serving ---------------------------------------------------------------

    async def start(self, certfile: str, keyfile: str) -> None:
        client_ctx = ssl.create_default_context(cafile=self.cafile)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx))
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(certfile, keyfile)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=server_ctx)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path[len(API) :] if request.path.startswith(API + "/") else request.path
        params = dict(request.query)
        if body and request.content_type == "application/x-www-form-urlencoded":
            params.update(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        call = Call(request, request.method, path, params, body, self._user(request))
        for method, pattern, handler in self.routes:
            m = pattern.fullmatch(path)
            if method != request.method or m is None:
                continue
            response = await handler(call, m)
            if response is not None:
                if call.answered_here:
                    self._record(call)
                return response
        return self.relay(await self.forward(call))

    def _user(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("PVEAPIToken="):
            return auth[len("PVEAPIToken=") :].partition("=")[0]
        session = self.pve.tickets.get(request.cookies.get("PVEAuthCookie", ""))
        return str(session["user"]) if session else "root@pam"

    def _record(self, call: Call) -> None:
        body = SECRET_FORM.sub(r"\1***", call.body.decode(errors="replace")).encode()
        self.pve.requests.append((call.method, call.request.path, body))

    # -- relaying --------------------------------------------------------------

    async def forward(self, call: Call, params: dict[str, str] | None = None) -> Upstream:
        """Send the request on to fakepve (with other form parameters when
        given); fakepve records it."""
        assert self._session is not None
        call.answered_here = False
        headers = {
            k: v for k, v in call.request.headers.items() if k.lower() in ("authorization", "cookie", "csrfpreventiontoken")
        }
        body = call.body
        if params is not None:
            body = urllib.parse.urlencode(params).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif "Content-Type" in call.request.headers:
            headers["Content-Type"] = call.request.headers["Content-Type"]
        url = self.pve.url + call.request.path_qs
        async with self._session.request(call.method, url, data=body or None, headers=headers) as resp:
            data = await resp.read()
            return Upstream(resp.status, resp.reason or "", data, resp.content_type)

    async def fetch(self, url: str) -> bytes | None:
        """GET a URL (the tests' image server on 127.0.0.1); None unless 200."""
        assert self._session is not None
        async with self._session.get(url) as resp:
            return bytes(await resp.read()) if resp.status == 200 else None

    @staticmethod
    def relay(up: Upstream) -> web.Response:
        return web.Response(status=up.status, reason=up.reason, body=up.body, content_type=up.content_type)

    @staticmethod
    def answer(data: Any) -> web.Response:
        return web.json_response({"data": data})

    @staticmethod
    def error(status: int, message: str, errors: dict[str, str] | None = None) -> web.Response:
        """PVE's error answer: the message as reason phrase and in the body
        (pve-http-server; PVE/HTTPServer.pm:221-231 makes a plain die a 500)."""
        body: dict[str, Any] = {"data": None, "message": message + "\n"}
        if errors:
            body["errors"] = errors
        return web.json_response(body, status=status, reason=message.splitlines()[0][:200])

    # -- tasks -----------------------------------------------------------------

    async def task(self, node: str, kind: str, vmid: object, user: str, outcome: str = "OK", log: tuple[str, ...] = ()) -> str:
        """A task that ends at once with ``outcome`` (its exit status)."""

        async def body() -> None:
            if outcome != "OK":
                raise TaskError(outcome)

        upid: str = await self.pve.task(node, kind, str(vmid), user, body, log=list(log))
        return upid

    def vm_on(self, node: str, vmid: str | int) -> Any:
        """The FakeVm with this id on this node, or None."""
        vm = self.pve.vm(int(vmid))
        return vm if vm is not None and vm.node == node else None
