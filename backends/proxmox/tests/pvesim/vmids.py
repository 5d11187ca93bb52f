"""New VMIDs: ``nextid`` reserves nothing, and a clone checks its id twice.

- ``/cluster/nextid`` answers the lowest free id and reserves nothing, so
  clients that ask at the same time get the same one.
- A create checks and claims the id before it answers
  (qemu-server PVE/API2/Qemu.pm:1374-1375, ``create_and_lock_config``): a
  loser gets an HTTP 500 ("VM N already exists on node 'X'", or the config
  lock timeout), never a task.
- A clone checks the new id in two phases (bpg/terraform-provider-proxmox
  #1521): before its task, only whether the config file exists on the
  *local* node (Qemu.pm:4500-4502); inside the task it locks the id with a
  1 s timeout (Qemu.pm:4735, ``lock_config_full($newid, 1, ...)``), checks
  again (4584-4586) and writes a temporary config, which pmxcfs refuses when
  the id lives on another node (Qemu.pm:4613-4615; pve-common
  src/PVE/File.pm:97-99 "close (rename) atomic file ... failed: File
  exists"). So a clone that lost the race gets a UPID whose task fails, and
  the id belongs to the winner.

fakepve checks a clone's id cluster-wide before its task and finishes a
winner's clone inside its request, so no clone ever loses inside its task.
:meth:`VmidRace.race` arms the race: the next id ``nextid`` hands out is
also taken by another client's clone running on ``node``; the provider's
create or clone of that id then meets the winner the way Proxmox answers.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .proxy import Call, Layer

NODE_VM = r"/nodes/(?P<node>[^/]+)/qemu"


class VmidRace:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.armed: tuple[str, str] | None = None
        self.claimed: dict[int, tuple[str, str]] = {}
        self.winners: list[int] = []
        layer.route("GET", r"/cluster/nextid", self.nextid)
        layer.route("POST", NODE_VM, self.create)
        layer.route("POST", NODE_VM + r"/(?P<vmid>\d+)/clone", self.clone)

    def race(self, node: str = "pve1", name: str = "someone-elses") -> None:
        """Another client's clone takes the next id handed out, on ``node``."""
        self.armed = (node, name)

    async def nextid(self, call: Call, _m: re.Match[str]) -> web.StreamResponse | None:
        up = await self.layer.forward(call)
        if up.status == 200 and self.armed is not None and "vmid" not in call.params:
            self.claimed[int(up.data())] = self.armed
            self.armed = None
        return self.layer.relay(up)

    def _winner(self, vmid: int) -> Any:
        node, name = self.claimed.pop(vmid)
        self.winners.append(vmid)
        config = {"scsi0": f"local-lvm:vm-{vmid}-disk-0,size=4G", "description": "made by another client", "memory": "512"}
        return self.layer.pve.add_vm(vmid, name, node=node, status="running", config=config)

    async def create(self, call: Call, _m: re.Match[str]) -> web.StreamResponse | None:
        vmid = int(call.params.get("vmid", 0) or 0)
        if vmid in self.claimed:
            self._winner(vmid)  # its config exists: the create is refused before its task (fakepve's 500)
        return None

    async def clone(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        node, newid = m["node"], int(call.params.get("newid", 0) or 0)
        if newid in self.claimed:
            winner = self._winner(newid)
            if winner.node == node:  # the winner holds the id's lock on this node
                outcome = f"can't lock file '/var/lock/qemu-server/lock-{newid}.conf' - got timeout"
            else:
                outcome = f"close (rename) atomic file '/etc/pve/nodes/{node}/qemu-server/{newid}.conf' failed: File exists"
            return await self._failed_clone(call, m, outcome)
        other = self.layer.pve.vm(newid)
        if other is not None and other.node != node:  # the local check passes; pmxcfs refuses the file
            outcome = f"close (rename) atomic file '/etc/pve/nodes/{node}/qemu-server/{newid}.conf' failed: File exists"
            return await self._failed_clone(call, m, outcome)
        return None

    async def _failed_clone(self, call: Call, m: re.Match[str], outcome: str) -> web.StreamResponse:
        upid = await self.layer.task(m["node"], "qmclone", m["vmid"], call.user, outcome)
        return self.layer.answer(upid)
