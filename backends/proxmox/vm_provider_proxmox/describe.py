"""Describe and ListVMs.

ListVMs is ONE request at any VM count (``/cluster/resources?type=vm``
carries name, status, CPUs, memory, boot disk size, tags and node); it
reports every VM but templates, ExportDisk's temporary clones
(:func:`.cloning.temporary`) and clones still copying their first disk
(nameless, locked ``clone``), only those with the ownership tag when
``list_all`` is false, ``managed`` saying which carry the tag. That
answer's status is QEMU's run state (a paused VM is Suspended) as pvestatd
last reported it, up to 10 s ago: a VM made since is listed Unknown and
without a name until then (pve-manager PVE/API2Tools.pm:81-114). Only the
boot disk is listed (named by its config key where the provider knows it;
every disk is in Describe's raw JSON and GetDiskInfo).

Describe makes at most three requests, also for a VM whose node this
process does not know yet (made elsewhere since the cluster's VM list was
last read):

1. ``/cluster/resources?type=vm``, only when the node is not known: it
   finds the node (and tells a missing VM, or one on a node that does not
   answer);
2. ``status/current``: QEMU's run state, so running, paused and stopped are
   distinct, and whether the guest agent is enabled;
3. the guest agent's ``network-get-interfaces`` for the IPs, when the VM
   runs with the agent enabled (without VM.GuestAgent.Audit, PVE 9's
   privilege for it, Describe answers without IPs and says why in
   ``provider_raw_json``);

and ``pending`` (the configuration and the changes waiting for a reboot,
``config`` and ``pending`` in ``provider_raw_json``, and ``managed``: whether
the VM carries the owner tag) when that stays within
three. It does whenever the node is known; for a VM found by step 1 that
runs with the agent enabled, ``config`` and ``pending`` are null (the next
Describe, with the node known, has them). A VM that moved to another node
since its node was learnt costs one request more: its old node answers
"does not exist" first, so ``config`` and ``pending`` are null, and a
running one with the agent enabled makes four requests.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlencode

from provider_core import (
    Disk,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    PowerState,
    ProviderError,
    Unavailable,
    VMInfo,
    VMStatus,
)

from .cloning import temporary
from .errors import SECRET_PARAMS
from .inventory import Cluster, VmRef, parse_tags, parse_vmid, power_state
from .vmconfig import GIB, MIB, primary_disk


def console_url(endpoint: str, vmid: int, node: str, name: str) -> str:
    """The Proxmox web UI's noVNC console of the VM (needs a UI login)."""
    query = urlencode({"console": "kvm", "novnc": 1, "vmid": vmid, "vmname": name, "node": node, "resize": "off", "cmd": ""})
    return f"{endpoint}/?{query}"


def split_pending(entries: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """GET pending -> (current config, {key: {"pending": value} or {"delete": 1}})."""
    config: dict[str, Any] = {}
    pending: dict[str, Any] = {}
    for e in entries:
        key = str(e.get("key", ""))
        if not key:
            continue
        hidden = key in SECRET_PARAMS
        if "value" in e:
            config[key] = "**********" if hidden else e["value"]
        if "pending" in e:
            pending[key] = {"pending": "**********" if hidden else e["pending"]}
        if e.get("delete"):
            pending[key] = {"delete": 1}
    return config, pending


def guest_ips(interfaces: list[dict[str, Any]]) -> list[str]:
    """Addresses the agent reports, without loopback and link-local ones."""
    ips = []
    for iface in interfaces:
        for addr in iface.get("ip-addresses") or []:
            try:
                ip = ipaddress.ip_address(str(addr.get("ip-address", "")).split("%")[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified) and str(ip) not in ips:
                ips.append(str(ip))
    return ips


#: Requests one Describe may make (issue 4's benchmark).
MAX_REQUESTS = 3


def describe(cluster: Cluster, vm_id: str) -> VMStatus:
    client = cluster.client
    vmid = parse_vmid(vm_id)
    node = cluster.node_of(vmid)
    sent = 0
    status: dict[str, Any] | None = None
    if node is not None:
        sent += 1
        try:
            status = client.get(f"nodes/{node}/qemu/{vmid}/status/current")
        except (NotFound, Unavailable):
            cluster.forget(vmid)  # moved, deleted or its node is down: ask the cluster
    if status is None or node is None:
        ref = cluster.find(vm_id)
        node = ref.node
        sent += 2
        try:
            status = client.get(f"{ref.path}/status/current")
        except Unavailable as exc:
            return _unreachable(cluster, ref, exc)
    path = cluster.vm_path(vmid, node)
    state = power_state(str(status.get("status", "unknown")), status.get("qmpstatus"), str(status.get("lock", "") or ""))
    ask_agent = state is PowerState.ON and int(status.get("agent", 0) or 0) == 1
    raw: dict[str, Any] = {
        "vmid": vmid,
        "node": node,
        "status": status.get("status"),
        "qmpstatus": status.get("qmpstatus"),
        "lock": status.get("lock", ""),
        "template": bool(status.get("template", 0)),
        "native_status": status,
        "config": None,
        "pending": None,
    }
    config: dict[str, Any] = {}
    if sent + 1 + int(ask_agent) <= MAX_REQUESTS:
        config, raw["pending"] = split_pending(client.get(f"{path}/pending") or [])
        raw["config"] = config
        raw["managed"] = cluster.settings.owner_tag in parse_tags(config.get("tags"))
        boot = primary_disk(config)
        cluster.learn_boot_disk(vmid, boot.key if boot else None)
    ips: list[str] = []
    if ask_agent:
        try:
            answer = client.get(f"{path}/agent/network-get-interfaces")
            interfaces = answer.get("result", []) if isinstance(answer, dict) else []
            ips = guest_ips(interfaces)
            raw["agent"] = {"interfaces": interfaces}
        except (FailedPrecondition, Unavailable, PermissionDenied) as exc:
            raw["agent"] = {"error": str(exc)}
    name = str(status.get("name") or config.get("name") or "")
    return VMStatus(power_state=state, ips=ips, console_url=console_url(cluster.settings.endpoint, vmid, node, name), raw=raw)


def _unreachable(cluster: Cluster, ref: VmRef, exc: ProviderError) -> VMStatus:
    """The VM's node does not answer (offline, fenced): what the cluster knows."""
    raw = {"vmid": ref.vmid, "node": ref.node, "status": ref.status, "error": str(exc), "resources": ref.entry}
    return VMStatus(power_state=PowerState.UNKNOWN, raw=raw)


def _boot_disk(cluster: Cluster, ref: VmRef) -> list[Disk]:
    """The boot disk, sized as /cluster/resources reports it (``maxdisk``);
    its config key when known (VMs made, described or looked at by this
    provider), else empty. Other disks would cost a request per VM."""
    size = int(ref.entry.get("maxdisk", 0) or 0)
    if size <= 0:
        return []
    return [Disk(id=cluster.boot_disks.get(ref.vmid, ""), size_gib=size // GIB)]


def _half_made(ref: VmRef) -> bool:
    """A clone Proxmox is still copying the first disk of: its config holds
    only ``lock: clone`` until then (qemu-server's ``clone_vm``), so neither
    its name nor its tags say whose it is or what (ExportDisk's temporary
    clone, say). Adoption must not take it."""
    return ref.lock == "clone" and not ref.name


def list_vms(cluster: Cluster) -> list[VMInfo]:
    out = []
    for ref in cluster.vms():
        managed = cluster.owned(ref)
        if ref.template or temporary(cluster, ref) or _half_made(ref) or not (cluster.settings.list_all or managed):
            continue
        e = ref.entry
        raw = {
            "managed": "true" if managed else "false",
            "node": ref.node,
            "status": ref.status,
            "tags": ";".join(sorted(ref.tags)),
            "lock": ref.lock,
            "template": "1" if ref.template else "0",
            "maxdisk": str(e.get("maxdisk", 0)),
            "uptime": str(e.get("uptime", 0)),
        }
        out.append(
            VMInfo(
                id=ref.id,
                name=ref.name,
                power_state=power_state(ref.status, None, ref.lock),
                cpu=int(e.get("maxcpu", 0) or 0),
                memory_mib=int(e.get("maxmem", 0) or 0) // MIB,
                disks=_boot_disk(cluster, ref),
                raw=raw,
            )
        )
    return out
