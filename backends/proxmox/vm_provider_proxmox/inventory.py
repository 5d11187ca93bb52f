"""Where VMs are: cluster-wide lookup, ownership, and native state.

A VM lives on its own node, which is never assumed: a lookup asks the whole
cluster with ONE request, ``GET /cluster/resources?type=vm``, whose entries
carry node, name, status, lock, tags, CPU and memory. The node of each VM
seen is remembered (:attr:`Cluster.nodes`) so that Describe and the
operations can go straight to the VM's node; a stale entry (the VM migrated
or was deleted) is detected by Proxmox's "does not exist" answer and looked
up again.

That listing is not fresh: ``name``, ``status`` and ``template`` come from
the stats pvestatd sends every 10 s (pve-manager PVE/API2Tools.pm:81-114,
PVE/Service/pvestatd.pm:885; a VM made since has ``status: unknown`` and no
name), and ``status`` is QEMU's run state (``paused``; pvestatd.pm:341).
Only ``lock``, ``tags`` and the node are current. So every decision about a
VM's state reads the VM itself: :meth:`Cluster.state` (its
``status/current``: running or stopped, QEMU's run state, lock, HA).

Native states map to the four client words through :data:`QMP_STATES` and
:func:`power_state`, the one state table of this backend.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from provider_core import NotFound, PowerState

from .client import PveClient, backoff
from .errors import Locked
from .settings import ProxmoxSettings
from .versions import NodeVersions

VMID_RE = re.compile(r"^[1-9][0-9]{2,8}$")
TAG_SPLIT_RE = re.compile(r"[;,\s]+")

#: QEMU run states (``qmpstatus``) of a running process, to client words.
#: A paused guest is never Off: it is Suspended.
QMP_STATES: dict[str, PowerState] = {
    "running": PowerState.ON,
    "paused": PowerState.SUSPENDED,
    "suspended": PowerState.SUSPENDED,
    "prelaunch": PowerState.SUSPENDED,
    "inmigrate": PowerState.SUSPENDED,
    "postmigrate": PowerState.SUSPENDED,
    "finish-migrate": PowerState.SUSPENDED,
    "save-vm": PowerState.SUSPENDED,
    "restore-vm": PowerState.SUSPENDED,
    "io-error": PowerState.SUSPENDED,
    "watchdog": PowerState.SUSPENDED,
    "debug": PowerState.SUSPENDED,
    "shutdown": PowerState.OFF,
    "stopped": PowerState.OFF,
    "guest-panicked": PowerState.UNKNOWN,
    "internal-error": PowerState.UNKNOWN,
}


def power_state(status: str, qmpstatus: str | None = None, lock: str = "") -> PowerState:
    """Client word for PVE's ``status`` (running/stopped/unknown, or in the
    cluster listing QEMU's run state itself), the QEMU ``qmpstatus`` when
    known, and the VM's lock. A VM hibernated to disk (stopped with lock
    ``suspended``) is Suspended."""
    if status == "stopped":
        return PowerState.SUSPENDED if lock == "suspended" else PowerState.OFF
    if status == "running":
        if qmpstatus is None:
            return PowerState.ON
        return QMP_STATES.get(qmpstatus, PowerState.UNKNOWN)
    return QMP_STATES.get(status, PowerState.UNKNOWN)


def parse_tags(text: object) -> frozenset[str]:
    """PVE tags, however separated (PVE normalises them only at create)."""
    if not isinstance(text, str):
        return frozenset()
    return frozenset(t.lower() for t in TAG_SPLIT_RE.split(text) if t)


def parse_vmid(vm_id: str) -> int:
    """The VMID of a VM id; NotFound for anything that cannot be one."""
    text = vm_id.strip()
    if not VMID_RE.match(text):
        raise NotFound(f"VM {vm_id!r} does not exist (Proxmox VM ids are numbers from 100)")
    return int(text)


#: QEMU run states of a running VM that ``resume`` continues.
PAUSED = frozenset({"paused", "suspended", "prelaunch"})


class _Placed:
    """A VM on a node: its id as clients give it, its API path."""

    vmid: int
    node: str

    @property
    def id(self) -> str:
        return str(self.vmid)

    @property
    def path(self) -> str:
        return f"nodes/{self.node}/qemu/{self.vmid}"


@dataclass(frozen=True)
class VmState(_Placed):
    """One VM as it is now: its node and its ``status/current``, read from
    the VM's own node (qemu-server ``vm_status``: the config and QEMU)."""

    vmid: int
    node: str
    current: dict[str, Any] = field(compare=False)

    @property
    def status(self) -> str:
        return str(self.current.get("status", "unknown"))

    @property
    def qmpstatus(self) -> str | None:
        value = self.current.get("qmpstatus")
        return str(value) if value else None

    @property
    def running(self) -> bool:
        """A QEMU process runs (paused ones included)."""
        return self.status == "running"

    @property
    def paused(self) -> bool:
        return self.running and self.qmpstatus in PAUSED

    @property
    def lock(self) -> str:
        return str(self.current.get("lock", "") or "")

    @property
    def template(self) -> bool:
        return bool(int(self.current.get("template", 0) or 0))

    @property
    def ha(self) -> dict[str, Any]:
        ha = self.current.get("ha")
        return ha if isinstance(ha, dict) else {}

    @property
    def ha_managed(self) -> bool:
        """Proxmox hands this VM's start, stop and shutdown to ha-manager."""
        return bool(int(self.ha.get("managed", 0) or 0))

    @property
    def power(self) -> PowerState:
        return power_state(self.status, self.qmpstatus, self.lock)


@dataclass(frozen=True)
class Listing:
    """One ``/cluster/resources`` answer: VMs, nodes, and where each storage is."""

    vms: list[VmRef]
    nodes: dict[str, dict[str, Any]]
    storages: dict[str, set[str]]

    def online(self) -> list[str]:
        """Online nodes, the one with the most free memory first."""
        up = [(n, e) for n, e in self.nodes.items() if e.get("status") == "online"]
        return [n for n, _ in sorted(up, key=lambda t: (-(int(t[1].get("maxmem", 0) or 0) - int(t[1].get("mem", 0) or 0)), t[0]))]


@dataclass(frozen=True)
class VmRef(_Placed):
    """One VM as /cluster/resources shows it."""

    vmid: int
    node: str
    name: str
    status: str
    lock: str = ""
    template: bool = False
    tags: frozenset[str] = frozenset()
    entry: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def settled(self) -> bool:
        """Whether the listing shows this VM's name: pvestatd has reported it,
        and no create or clone is still writing its configuration."""
        return bool(self.entry.get("name")) and self.lock not in ("create", "clone")

    @classmethod
    def from_entry(cls, e: dict[str, Any]) -> VmRef:
        return cls(
            vmid=int(e["vmid"]),
            node=str(e.get("node", "")),
            name=str(e.get("name", "")),
            status=str(e.get("status", "unknown")),
            lock=str(e.get("lock", "") or ""),
            template=bool(int(e.get("template", 0) or 0)),
            tags=parse_tags(e.get("tags")),
            entry=e,
        )


class Cluster:
    """The client plus what the backend knows about the cluster."""

    def __init__(self, client: PveClient, settings: ProxmoxSettings) -> None:
        self.client = client
        self.settings = settings
        self.versions = NodeVersions(client)
        self.nodes: dict[int, str] = {}
        #: Config key of each VM's boot disk, where known (ListVMs names it).
        self.boot_disks: dict[int, str] = {}
        #: Name and tags read from the configs of VMs the listing shows
        #: without a name yet (pvestatd has not reported them).
        self.settled: dict[int, tuple[str, frozenset[str]]] = {}
        #: VMIDs of the temporary clones this process is making (never listed).
        self.temporary: set[int] = set()

    def vm_path(self, vmid: int, node: str) -> str:
        return f"nodes/{node}/qemu/{vmid}"

    def owned(self, ref: VmRef) -> bool:
        return self.settings.owner_tag in ref.tags

    # -- lookups (one request each) ------------------------------------------

    def vms(self) -> list[VmRef]:
        """Every QEMU VM of the cluster (templates included), in ONE request."""
        entries: list[dict[str, Any]] = self.client.get("cluster/resources", type="vm") or []
        return self._refs(entries)

    def _refs(self, entries: list[dict[str, Any]]) -> list[VmRef]:
        refs = [VmRef.from_entry(e) for e in entries if e.get("type", "qemu") == "qemu" and "vmid" in e]
        self.nodes = {r.vmid: r.node for r in refs}
        self.settled = {r.vmid: known for r in refs if not r.settled and (known := self.settled.get(r.vmid))}
        return refs

    def listing(self) -> Listing:
        """VMs, nodes and storages in ONE request. A storage is listed on
        the nodes where it is enabled, and only when the token may audit it
        (pve-manager PVE/API2/Cluster.pm:641-658): one not listed at all is
        unknown, not missing."""
        entries: list[dict[str, Any]] = self.client.get("cluster/resources") or []
        nodes = {str(e["node"]): e for e in entries if e.get("type") == "node" and e.get("node")}
        storages: dict[str, set[str]] = {}
        for e in entries:
            if e.get("type") == "storage" and e.get("storage") and e.get("node"):
                storages.setdefault(str(e["storage"]), set()).add(str(e["node"]))
        return Listing(self._refs(entries), nodes, storages)

    def state(self, vm_id: str, allow: Iterable[str] = ()) -> VmState:
        """The VM as it is now, from its own node; wait (within the caller's
        deadline) while another operation holds a lock on it, then Locked
        (ABORTED). NotFound when it does not exist."""
        allowed = set(allow)
        vmid = parse_vmid(vm_id)
        end = time.monotonic() + self.client.budget()
        attempt = 0
        while True:
            st = self._current(vmid)
            if not st.lock or st.lock in allowed:
                return st
            pause = backoff(attempt)
            if time.monotonic() + pause > end:
                raise Locked(
                    f"VM {vmid} is locked ({st.lock}) by another Proxmox operation; gave up waiting, retry later", st.lock
                )
            time.sleep(pause)
            attempt += 1

    def _current(self, vmid: int) -> VmState:
        node = self.node_of(vmid)
        if node is not None:
            try:
                return VmState(vmid, node, self.client.get(f"nodes/{node}/qemu/{vmid}/status/current"))
            except NotFound:
                self.forget(vmid)  # moved or deleted: ask the cluster
        ref = self.find(str(vmid))
        return VmState(vmid, ref.node, self.client.get(f"{ref.path}/status/current"))

    def find(self, vm_id: str) -> VmRef:
        """The VM with this id, wherever it runs; NotFound otherwise."""
        vmid = parse_vmid(vm_id)
        for ref in self.vms():
            if ref.vmid == vmid:
                return ref
        raise NotFound(f"VM {vmid} does not exist in the Proxmox cluster")

    def by_name(self, name: str, refs: Iterable[VmRef] | None = None) -> list[VmRef]:
        return sorted((r for r in (self.vms() if refs is None else refs) if r.name == name), key=lambda r: r.vmid)

    def node_of(self, vmid: int) -> str | None:
        return self.nodes.get(vmid)

    def remember(self, vmid: int, node: str) -> None:
        self.nodes[vmid] = node

    def forget(self, vmid: int) -> None:
        self.nodes.pop(vmid, None)

    def learn_boot_disk(self, vmid: int, key: str | None) -> None:
        if key:
            self.boot_disks[vmid] = key
