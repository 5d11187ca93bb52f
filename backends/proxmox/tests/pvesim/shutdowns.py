"""A graceful shutdown in progress, and what a stop does meanwhile.

A shutdown task holds the VM's config lock while it waits for the guest
(qemu-server PVE/QemuServer.pm:6358-6371: ``vm_stop`` runs inside
``lock_config``, whose timeout is 10 s). A plain stop needs the same lock,
so during a shutdown it waits 10 s and fails with "can't lock file
'/var/lock/qemu-server/lock-N.conf' - got timeout". Since qemu-server 8.1.2
(bug #4474) a stop with ``overrule-shutdown=1`` first aborts the VM's
running ``qmshutdown`` tasks (PVE/API2/Qemu.pm:3714-3719, 3776-3782); older
versions refuse the parameter (it is not in their schema).

fakepve finishes a shutdown inside its request at time_scale 0. Here
:meth:`Shutdowns.hold` makes the VM's next shutdown a task that keeps
running, holding the lock (fakepve's own task and lock model), until a stop
overrules it or :meth:`Shutdowns.release` lets the guest power off.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from fakepve import TaskError

from .packages import Packages
from .proxy import Call, Layer

OVERRULE_SINCE = (8, 1, 2)
STATUS = r"/nodes/(?P<node>[^/]+)/qemu/(?P<vmid>\d+)/status/"
UNKNOWN_PARAMETER = "property is not defined in schema and the schema does not allow additional properties"


class Shutdowns:
    def __init__(self, layer: Layer, packages: Packages) -> None:
        self.layer = layer
        self.packages = packages
        self.held: set[int] = set()
        self.running: dict[int, list[tuple[str, asyncio.Future[str]]]] = {}
        self._tasks: set[asyncio.Future[str]] = set()
        layer.route("POST", STATUS + "shutdown", self.shutdown)
        layer.route("POST", STATUS + "stop", self.stop)

    def hold(self, vmid: int) -> None:
        """The VM's guest takes its time: its next shutdown keeps running."""
        self.held.add(vmid)

    def release(self, vmid: int) -> None:
        """The guest powers off: held shutdowns of the VM end OK."""
        self.held.discard(vmid)
        for _upid, outcome in self.running.pop(vmid, []):
            if not outcome.done():
                outcome.set_result("OK")

    async def shutdown(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        vm = self.layer.vm_on(m["node"], m["vmid"])
        if vm is None or vm.vmid not in self.held or vm.ha_state is not None or vm.status != "running":
            return None
        outcome: asyncio.Future[str] = self.layer.loop.create_future()

        async def body() -> None:
            result = await outcome
            if result != "OK":
                raise TaskError(result)
            vm.status = vm.qmpstatus = "stopped"

        task = asyncio.ensure_future(self.layer.pve.task(vm.node, "qmshutdown", str(vm.vmid), call.user, body, vm=vm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        for _ in range(100):
            if vm.lock_holder is not None:
                break
            await asyncio.sleep(0)  # the task starts and takes the config lock
        upid = self._newest(vm)
        self.running.setdefault(vm.vmid, []).append((upid, outcome))
        return self.layer.answer(upid)

    def _newest(self, vm: Any) -> str:
        tasks = self.layer.pve.tasklog
        return str(next(t["upid"] for t in reversed(tasks) if t["type"] == "qmshutdown" and t["id"] == str(vm.vmid)))

    async def stop(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        if "overrule-shutdown" not in call.params:
            return None
        if not self.packages.has(m["node"], "qemu-server", OVERRULE_SINCE):
            return self.layer.error(400, "Parameter verification failed.", {"overrule-shutdown": UNKNOWN_PARAMETER})
        vm = self.layer.vm_on(m["node"], m["vmid"])
        if vm is None or vm.ha_state is not None or not call.flag("overrule-shutdown"):
            return None
        aborted = self.running.pop(vm.vmid, [])
        for _upid, outcome in aborted:
            if not outcome.done():
                outcome.set_result("interrupted by signal")
        while aborted and vm.lock_holder is not None:
            await asyncio.sleep(0)  # the aborted task releases the config lock
        return None
