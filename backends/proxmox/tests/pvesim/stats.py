"""``/cluster/resources`` as pve-manager builds it: from pvestatd's stats.

- pvestatd broadcasts each VM's stats every 10 s (pve-manager
  PVE/Service/pvestatd.pm:884-885, ``$updatetime = 10``), and its ``status``
  is QEMU's run state when the VM runs: ``$d->{qmpstatus} || $d->{status}``
  (pvestatd.pm:341), so a paused VM is ``paused`` there, not ``running``.
- The resources call takes ``name``, ``status``, ``template``, uptime and the
  sizes from those stats (PVE/API2Tools.pm:81-114, ``extract_vm_stats``); a
  VM without stats yet is listed with ``status: unknown`` and no name. Only
  ``lock`` and ``tags`` are read from the VM's config at request time
  (PVE/API2/Cluster.pm:554-560, ``get_guest_config_properties``), and the
  node from the cluster's VM list, so those are fresh.

By default pvestatd is taken to have just run before each request (no lag,
QEMU's run state still shown); :meth:`Pvestatd.freeze` makes the answers lag
until :meth:`Pvestatd.tick`, as they do on a real cluster for up to 10 s.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .proxy import Call, Layer

#: Fields of a VM's /cluster/resources entry that come from pvestatd's stats.
STATS = ("name", "status", "template", "uptime", "maxcpu", "cpu", "maxmem", "mem", "memhost", "maxdisk", "disk")
STATS += ("netin", "netout", "diskread", "diskwrite")


class Pvestatd:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.live = True
        self.rrd: dict[int, dict[str, Any]] = {}
        layer.route("GET", r"/cluster/resources", self.resources)

    def freeze(self) -> None:
        """From now on, answer from the stats of the last cycle (taken now)."""
        self.tick()
        self.live = False

    def tick(self) -> None:
        """One pvestatd cycle: every VM's stats as it is now."""
        self.rrd = {vm.vmid: self._stats(vm) for vm in self.layer.pve.vms}

    @staticmethod
    def _stats(vm: Any) -> dict[str, Any]:
        running = vm.status == "running"
        return {"name": vm.name, "status": vm.qmpstatus if running else vm.status, "template": 1 if vm.template else 0}

    async def resources(self, call: Call, _m: re.Match[str]) -> web.StreamResponse | None:
        up = await self.layer.forward(call)
        if up.status != 200:
            return self.layer.relay(up)
        if self.live:
            self.tick()
        entries: list[dict[str, Any]] = up.data() or []
        for entry in entries:
            if entry.get("type") != "qemu" or entry.get("status") == "unknown":
                continue  # on a node that does not answer: fakepve's answer stands
            stats = self.rrd.get(int(entry["vmid"]))
            if stats is None:  # no stats yet: API2Tools.pm:81-90
                for key in STATS:
                    entry.pop(key, None)
                entry["status"] = "unknown"
            else:  # the sizes stay fakepve's (fresh); name, status and template lag
                entry.update(stats)
            vm = self.layer.pve.vm(int(entry["vmid"]))
            if vm is not None and vm.config.get("vcpus") and "maxcpu" in entry:
                entry["maxcpu"] = int(vm.config["vcpus"])  # qemu-server QemuServer.pm:2572, fakepve: cores*sockets
        return self.layer.answer(entries)
