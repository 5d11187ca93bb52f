"""CPU and memory hotplug of a running VM, as qemu-server applies it.

fakepve keeps every change of a running VM's ``vcpus`` and ``memory``
pending. qemu-server applies them at once where the VM's ``hotplug`` allows
(src/PVE/QemuServer.pm, ``vmconfig_hotplug_pending``: ``vcpus`` when it
holds ``cpu``, ``memory`` when it holds ``memory``):

- ``vcpus`` up to ``cores * sockets`` (``qemu_cpu_hotplug``: "you can't add
  more vcpus than maxcpus"; here such a change stays pending);
- ``memory`` in DIMMs above 1024 MiB of static memory: 32 of 512 MiB, then
  32 of 1024 MiB, doubling (src/PVE/QemuServer/Memory.pm,
  ``qemu_memory_hotplug`` and ``foreach_dimm``), so the VM ends at the
  first DIMM boundary at or above the asked size; with ``hugepages=1024``
  the static memory is 1024 MiB per socket and the DIMMs start at 1024 MiB
  (the same functions). Memory hotplug needs
  ``numa=1`` (Memory.pm ``config``: a VM without it does not start; here
  its change stays pending).

Left out: the host's maximum memory (from its physical address bits),
custom NUMA nodes, and the guest refusing to unplug.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .proxy import Call, Layer

CONFIG = r"/nodes/(?P<node>[^/]+)/qemu/(?P<vmid>\d+)/config"


def _features(config: dict[str, Any]) -> set[str]:
    value = str(config.get("hotplug", "network,disk,usb"))
    return {"network", "disk", "usb"} if value in ("1", "") else set(value.split(",")) - {"0"}


def _dimm_boundary(mib: int, config: dict[str, Any]) -> int:
    gib_pages = str(config.get("hugepages", "")) == "1024"
    size = 1024 * int(config.get("sockets", 1)) if gib_pages else 1024
    dimm = 1024 if gib_pages else 512
    for _ in range(8):
        for _ in range(32):
            if size >= mib:
                return size
            size += dimm
        dimm *= 2
    return size


class Hotplug:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        layer.route("PUT", CONFIG, self.config)
        layer.route("POST", CONFIG, self.config)

    async def config(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        vm = self.layer.vm_on(m["node"], m["vmid"])
        if vm is None or vm.status != "running" or not {"vcpus", "memory"} & set(call.params):
            return None
        up = await self.layer.forward(call)
        if up.status != 200:
            return self.layer.relay(up)
        hot = _features(vm.config)
        if "cpu" in hot and vm.pending.get("vcpus") is not None:
            most = int(vm.config.get("cores", 1)) * int(vm.config.get("sockets", 1))
            if int(vm.pending["vcpus"]) <= most:
                vm.config["vcpus"] = vm.pending.pop("vcpus")
        if "memory" in hot and str(vm.config.get("numa", "0")) == "1" and vm.pending.get("memory") is not None:
            asked = int(str(vm.pending.pop("memory")).split("=")[-1])
            vm.config["memory"] = str(_dimm_boundary(asked, vm.config))
        return self.layer.relay(up)
