"""Storages and bridges per node, and the HTTP 500s of placing a VM wrong.

- A storage with a ``nodes`` list exists on those nodes only: pve-storage
  src/PVE/Storage.pm:264-276 (``storage_check_node``) dies with "storage 'X'
  is not available on node 'Y'" (a plain ``die``: HTTP 500 when it happens
  in the API call, pve-manager PVE/HTTPServer.pm:221-231). A create checks
  the storage's content type before its task (qemu-server
  PVE/API2/Qemu.pm ``$check_storage_access``) but allocates the disks inside
  it, where ``activate_storage`` (Storage.pm:1334-1339) makes the task fail
  with "unable to create VM N - storage 'X' is not available on node 'Y'".
- A clone checks its target storage on the local and the target node before
  its task (Qemu.pm:4454-4467), and refuses to put a VM with local disks on
  another node (Qemu.pm:4495-4496, "can't clone VM to node 'T' (VM uses
  local storage)").
- Bridges differ per node; ``/nodes/{node}/network?type=any_bridge`` lists
  the node's Linux and OVS bridges and the SDN vnets it has
  (pve-manager PVE/API2/Network.pm:427-452).

fakepve knows a storage's ``nodes`` for its content and download calls but
not for creating or cloning VMs, and lists the same bridge on every node.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .proxy import Call, Layer

DRIVE_KEY = re.compile(r"^(ide|sata|scsi|virtio)\d+$|^(efidisk|tpmstate)0$")
NEW_DISK = re.compile(r"^(?:([^/:\s]+):)?(\d+(?:\.\d+)?|cloudinit)$")


def _split(text: object) -> list[str]:
    return [item for item in re.split(r"[\s,;]+", str(text or "")) if item]


class Placement:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.bridges: dict[str, set[str]] = {}
        self.vnets: set[str] = {"vnet7"}
        layer.route("POST", r"/nodes/(?P<node>[^/]+)/qemu", self.create)
        layer.route("POST", r"/nodes/(?P<node>[^/]+)/qemu/(?P<vmid>\d+)/clone", self.clone)
        layer.route("GET", r"/nodes/(?P<node>[^/]+)/network", self.network)

    def bridges_of(self, node: str) -> set[str]:
        return self.bridges.get(node, {"vmbr0", "vmbr1", "vmbr9"})

    def restrict(self, storage: str, *nodes: str) -> None:
        """Make a storage available on these nodes only (storage.cfg ``nodes``)."""
        self.layer.pve.storages[storage]["nodes"] = ",".join(nodes)

    def unavailable(self, storage: str, node: str) -> str | None:
        """None when the storage is usable on the node, else PVE's words."""
        store = self.layer.pve.storages.get(storage)
        if store is None:
            return f"storage '{storage}' does not exist"
        if store.get("disable"):
            return f"storage '{storage}' is disabled"
        nodes = _split(store.get("nodes"))
        if nodes and node not in nodes:
            return f"storage '{storage}' is not available on node '{node}'"
        return None

    def _create_storages(self, params: dict[str, str]) -> list[str]:
        found = []
        for key, value in params.items():
            if not DRIVE_KEY.match(key):
                continue
            volume, *options = str(value).split(",")
            m = NEW_DISK.match(volume)
            if m and "media=cdrom" not in options:
                found.append(m.group(1) or params.get("storage", ""))
            for option in options:
                if option.startswith("import-from=") and ":" in option:
                    found.append(option.split("=", 1)[1].split(":", 1)[0])
        return [s for s in found if s]

    async def create(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        node, vmid = m["node"], call.params.get("vmid", "")
        if not vmid or self.layer.pve.vm(int(vmid)) is not None or node not in self.layer.pve.nodes:
            return None  # fakepve answers these before any task
        for storage in self._create_storages(call.params):
            problem = self.unavailable(storage, node)
            if problem and storage in self.layer.pve.storages:
                upid = await self.layer.task(node, "qmcreate", vmid, call.user, f"unable to create VM {vmid} - {problem}")
                return self.layer.answer(upid)
        return None

    async def clone(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        node = m["node"]
        source = self.layer.vm_on(node, m["vmid"])
        if source is None:
            return None
        target = call.params.get("target", "")
        target = "" if target in (node, "localhost") else target
        storage = call.params.get("storage", "")
        if storage:
            for where in (node, target) if target else (node,):
                problem = self.unavailable(storage, where)
                if problem:
                    return self.layer.error(500, problem)
        full = call.flag("full") if "full" in call.params else not source.template
        if target and not self._shared(source, storage if full else ""):
            return self.layer.error(500, f"can't clone VM to node '{target}' (VM uses local storage)")
        return None

    def _shared(self, vm: Any, storage: str) -> bool:
        stores = self.layer.pve.storages
        for key, value in vm.config.items():
            volume = str(value).split(",")[0]
            if not DRIVE_KEY.match(key) or "media=cdrom" in str(value) or ":" not in volume:
                continue
            sid = storage or volume.split(":", 1)[0]
            if not stores.get(sid, {}).get("shared"):
                return False
        return True

    async def network(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        node = m["node"]
        if node not in self.layer.pve.nodes:
            return None
        if not self.layer.pve.nodes[node].get("online", True):
            return self.layer.error(595, "No route to host")
        kind = call.params.get("type", "")
        out = [
            {"iface": name, "type": "bridge", "active": 1, "autostart": 1, "method": "manual"}
            for name in sorted(self.bridges_of(node))
        ]
        if kind in ("", "any_bridge", "vnet"):
            out += [{"iface": name, "type": "vnet", "active": 1} for name in sorted(self.vnets)]
        if kind in ("", "eth"):
            out.append({"iface": "eno1", "type": "eth", "active": 1, "method": "manual"})
        if kind == "vnet":
            out = [e for e in out if e["type"] == "vnet"]
        return self.layer.answer(out)
