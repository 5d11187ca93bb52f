"""A real vm-provider server for tests, in-process, on 127.0.0.1 port 0.

    with ProviderHarness.for_backend("sim") as h:
        vm = h.stub.Create(pb.CreateRequest(name="web-1"))
        h.wait(vm.task)

The server runs its own event loop in a background thread, so tests use the
ordinary blocking gRPC stub like any client. Nothing is mocked: requests go
over a real socket through the same server ``vm-provider`` runs.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from . import plugins
from .backend import Backend
from .config import ServerSettings
from .pb import provider_pb2 as pb
from .pb import provider_pb2_grpc as pb_grpc
from .server import ProviderServer, new_event_loop


class TaskFailed(AssertionError):
    """A task polled by :meth:`ProviderHarness.wait` ended with an error."""


class ProviderHarness:
    """Start a ProviderServer in a thread; connect a blocking stub to it."""

    def __init__(self, backend: Backend, name: str, settings: ServerSettings | None = None, **server: Any) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vm-provider-test-")
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "state_dir": Path(self._tmp.name),
            "grace_seconds": 5.0,
            "allow_addresses": ["loopback"],  # test servers for images, exports and S3 listen on 127.0.0.1
        }
        values.update(server)
        self.settings = settings or ServerSettings(**values)
        self.backend = backend
        self.name = name
        self._loop = new_event_loop(self.settings.event_loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="vm-provider-harness", daemon=True)
        self.server: ProviderServer | None = None
        self.channel: grpc.Channel | None = None

    @classmethod
    def for_backend(cls, name: str, table: Mapping[str, Any] | None = None, **server: Any) -> ProviderHarness:
        """Load an installed backend by name, with its settings table."""
        return cls(plugins.load(name, table or {}, environ={}), name, **server)

    # -- life cycle -------------------------------------------------------------

    def _run(self, coro: Any, timeout: float | None = 60) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> ProviderHarness:
        self._thread.start()

        async def make() -> ProviderServer:
            server = ProviderServer(self.backend, self.name, self.settings)
            await server.start()
            return server

        self.server = self._run(make())
        self.channel = self.make_channel()
        return self

    def make_channel(self, credentials: grpc.ChannelCredentials | None = None, **options: Any) -> grpc.Channel:
        target = f"127.0.0.1:{self.port}"
        opts = list(options.items())
        if credentials is not None:
            return grpc.secure_channel(target, credentials, options=opts)
        return grpc.insecure_channel(target, options=opts)

    def stop(self, grace: float | None = 1.0) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.server is not None:
            self._run(self.server.stop(grace), timeout=None)
            self.server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
        self._tmp.cleanup()

    def __enter__(self) -> ProviderHarness:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    # -- conveniences ------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self.server is not None, "harness not started"
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stub(self) -> pb_grpc.ProviderStub:
        assert self.channel is not None, "harness not started"
        return pb_grpc.ProviderStub(self.channel)  # type: ignore[no-untyped-call]

    def wait(self, task: pb.TaskRef | None, timeout: float = 120.0, interval: float = 0.05) -> None:
        """Poll TaskStatus until the task is done; raise TaskFailed on error.
        An absent or empty task means the operation already finished."""
        wait_task(self.stub, task, timeout, interval)


def wait_task(stub: pb_grpc.ProviderStub, task: pb.TaskRef | None, timeout: float = 120.0, interval: float = 0.05) -> None:
    """Poll TaskStatus like a client until done; raise TaskFailed on error."""
    if task is None or not task.id:
        return
    end = time.monotonic() + timeout
    while True:
        status = stub.TaskStatus(pb.TaskStatusRequest(task=task), timeout=10)
        if status.done:
            if status.error:
                raise TaskFailed(f"task {task.id} failed: {status.error}")
            return
        if time.monotonic() > end:
            raise TimeoutError(f"task {task.id} still running after {timeout}s")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)
