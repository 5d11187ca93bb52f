"""fakepve and the layer in front of it, served on one private event loop.

Both listen on 127.0.0.1 with a port the system picks and the same
self-signed certificate (fakepve's ``make_cert``), which the provider trusts
as its CA. Only fakepve's public API is used: ``FakePve``, ``start``,
``stop`` and ``settle``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fakepve import FakePve, settle
from fakepve.certs import make_cert

__all__ = ["Serving", "make_pki"]
from .cluster import RealCluster

T = TypeVar("T")
TIMEOUT = 30


def make_pki(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    certfile, keyfile, _ = make_cert(directory, hosts=("127.0.0.1",))
    return certfile, keyfile


class Serving:
    """A FakePve (tasks finish at once: time_scale 0) behind a RealCluster."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.cafile = certfile
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="pvesim", daemon=True)
        self.thread.start()
        self.pve: Any = FakePve(user="root@pam", password="secret", host="127.0.0.1", port=0)
        self.pve.time_scale = 0
        self.call(self.pve.start(self.cafile, keyfile))
        self.cluster = RealCluster(self.pve, self.loop, self.cafile)
        self.call(self.cluster.start(self.cafile, keyfile))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the simulator's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a function on the simulator's loop (between two requests)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    def stop(self) -> None:
        try:
            self.call(self.cluster.stop())
            self.call(settle())
            self.call(self.pve.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)


def add_second_node_and_shared_dir(pve: Any) -> None:
    """The layout the tests and benchmarks share, on top of fakepve's node
    pve1 and its storages: a second node ``pve2``, and ``cloud``, a directory
    storage shared by both holding images, ISOs, imports and snippets."""
    pve.add_node("pve2")
    pve.storages["cloud"] = {
        "type": "dir",
        "path": "/mnt/pve/cloud",
        "content": "images,iso,import,snippets",
        "active": 1,
        "files": set(),
        "shared": 1,
    }
