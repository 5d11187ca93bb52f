"""HA resources: a power request only hands the VM to ha-manager.

For a VM managed by HA, qemu-server's start, stop and shutdown calls run a
short task that asks ha-manager for the new state and return
(qemu-server PVE/API2/Qemu.pm:3631-3642 ``hastart`` with ``ha-manager set
vm:N --state started``; 3749-3768 ``hastop`` with ``crm-command stop vm:N
0``; 3932-3945 ``hastop`` with the shutdown timeout). The task is OK as soon
as the request is written; the CRM and the LRM act in their own rounds of
about 10 s (pve-ha-manager src/PVE/HA/CRM.pm:363, LRM.pm:469). A stop with
``overrule-shutdown`` is refused for HA resources (Qemu.pm:3754-3755), and
``status/current`` shows the HA state (Qemu.pm:3478).

fakepve models HA resources (``vm.ha_state``) but at time_scale 0 applies the
new state inside the request; here the state changes ``delay`` real seconds
after the request, as ha-manager does it later. ``/cluster/ha/resources``
lists the VMs that have an HA state.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from .proxy import Call, Layer

VM_STATUS = r"/nodes/(?P<node>[^/]+)/qemu/(?P<vmid>\d+)/status/(?P<action>start|stop|shutdown)"


class HaManager:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        #: Real seconds until ha-manager carries a request out.
        self.delay = 1.0
        #: What ha-manager was asked for, and what it carried out: (vmid, state).
        self.requests: list[tuple[int, str]] = []
        self.carried: list[tuple[int, str]] = []
        layer.route("POST", VM_STATUS, self.power)
        layer.route("GET", r"/cluster/ha/resources", self.resources)

    async def power(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        vm = self.layer.vm_on(m["node"], m["vmid"])
        if vm is None or vm.ha_state is None or vm.template:
            return None
        action = m["action"]
        if action == "stop" and call.flag("overrule-shutdown"):
            return self.layer.error(
                400, "Parameter verification failed.", {"overrule-shutdown": "Not applicable for HA resources."}
            )
        state = "started" if action == "start" else "stopped"
        verb = "start" if action == "start" else "stop"
        vm.ha_state = state  # ha-manager writes the request at once
        self.requests.append((vm.vmid, state))
        self.layer.loop.call_later(self.delay, self._carry_out, vm, state)
        upid = await self.layer.task(vm.node, f"ha{verb}", vm.vmid, call.user, log=(f"Requesting HA {verb} for VM {vm.vmid}",))
        return self.layer.answer(upid)

    def _carry_out(self, vm: Any, state: str) -> None:
        if vm.ha_state != state:
            return  # a later request superseded this one
        self.carried.append((vm.vmid, state))
        if state == "started":
            vm.apply_pending()
            vm.status = vm.qmpstatus = "running"
            vm.started_at = time.time()
        else:
            vm.status = vm.qmpstatus = "stopped"

    async def resources(self, call: Call, _m: re.Match[str]) -> web.StreamResponse | None:
        managed = [vm for vm in self.layer.pve.vms if vm.ha_state is not None]
        return self.layer.answer(
            [{"sid": f"vm:{vm.vmid}", "type": "vm", "state": vm.ha_state, "max_restart": 1, "max_relocate": 1} for vm in managed]
        )
