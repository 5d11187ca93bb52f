"""NICs of new VMs (from networks_json) and the addresses of running ones.

A NIC joins a libvirt network (``NetworkName``, default ``settings.network``)
or a host bridge (``Bridge``). VLAN tags: libvirt tags traffic only where
the switch can: Open vSwitch bridges and networks (``<virtualport
type='openvswitch'/>``), and SR-IOV/macvtap passthrough networks. A plain
Linux bridge or a NAT/routed/isolated network refuses a tagged NIC when the
VM starts ("vlan tag ... not supported for this type of network"), so
Create refuses it at once for a libvirt network, saying so. A VLAN on a
``Bridge`` is taken to be an Open vSwitch bridge (the NIC gets
``<virtualport type='openvswitch'/>``); for a Linux bridge name the bridge
of that VLAN (``br0.10``) instead and leave VLAN at 0.

Addresses, cheapest first: the DHCP leases of the VM's libvirt networks
(one call per network, shared by all VMs in ListVMs, and by all Describe
calls within :data:`DESCRIBE_TTL` seconds), matched by MAC; else
the guest agent when its channel is connected; else (Describe only) the
host's ARP table. The test driver has no leases and answers from its own
made-up table.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import libvirt

from provider_core import FailedPrecondition, InvalidArgument
from provider_core.specs import NetworkAttachment

from . import domxml
from .domxml import NicPlan
from .domxml import parse as parse_xml

if TYPE_CHECKING:
    from .backend import LibvirtBackend

VLAN_FORWARD_MODES = frozenset({"hostdev", "passthrough", "private", "vepa"})

#: Seconds Describe reuses a network's DHCP leases (see :class:`Leases`).
DESCRIBE_TTL = 2.0


def plan(lv: LibvirtBackend, attachments: list[NetworkAttachment], macs: Iterable[str] = ()) -> list[NicPlan]:
    """NIC plans for networks_json (one NIC on ``settings.network`` when it
    is empty). ``macs`` replaces the MACs in order (clones get new ones)."""
    conn = lv.conn()
    given = list(macs)
    if not attachments:
        if not lv.settings.network:
            return []
        attachments = [NetworkAttachment()]
        default = True
    else:
        default = False
    out: list[NicPlan] = []
    for i, na in enumerate(attachments):
        field = f"networks_json[{i}]"
        if na.network_name and na.bridge:
            raise InvalidArgument.field(field, "give NetworkName or Bridge, not both")
        mac = given[i] if i < len(given) else (na.mac_address or domxml.random_mac())
        model = na.model or "virtio"
        if na.bridge:
            out.append(NicPlan("bridge", na.bridge, mac, model, na.vlan, openvswitch=bool(na.vlan)))
            continue
        name = na.network_name or lv.settings.network
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            if default or not na.network_name:
                raise FailedPrecondition(
                    f"the default network {name!r} (setting 'network') does not exist on this host; "
                    "create it or name one in networks_json NetworkName"
                ) from exc
            raise InvalidArgument.field(f"{field}.NetworkName", f"no libvirt network {name!r}") from exc
        if na.vlan:
            _check_vlan(net, name, na.vlan, f"{field}.VLAN")
        out.append(NicPlan("network", name, mac, model, na.vlan))
    return out


def _check_vlan(net: libvirt.virNetwork, name: str, vlan: int, field: str) -> None:
    """Refuse a VLAN on a network that cannot tag it (the NIC inherits an
    Open vSwitch network's virtualport)."""
    root = parse_xml(net.XMLDesc(0))
    forward = root.find("forward")
    mode = forward.get("mode", "nat") if forward is not None else "isolated"
    port = root.find("virtualport")
    if (port is not None and port.get("type") == "openvswitch") or mode in VLAN_FORWARD_MODES:
        return
    raise InvalidArgument.field(
        field,
        f"libvirt network {name!r} ({mode} mode) cannot tag VLAN {vlan}: libvirt tags VLANs only on Open vSwitch "
        "and SR-IOV/passthrough networks; attach the VM to a network or bridge of that VLAN with VLAN 0",
    )


# -- addresses ------------------------------------------------------------------


class Leases:
    """DHCP leases per libvirt network, fetched at most once per network
    every ``ttl`` seconds (by default once in the object's life: ListVMs
    makes one per listing).

    The backend keeps one with a short ``ttl`` for Describe (see
    :data:`DESCRIBE_TTL`): a lease is granted once per boot and renewed
    every hour or so, so an address shows up at most ``ttl`` seconds late,
    and a VM polling for its first address is not kept waiting noticeably.
    Thread-safe: an entry is replaced whole; two threads refreshing one
    network at once both fetch it, which is harmless."""

    def __init__(self, conn: libvirt.virConnect, ttl: float = math.inf) -> None:
        self.conn = conn
        self.ttl = ttl
        self._by_network: dict[str, tuple[float, dict[str, list[str]] | None]] = {}

    def for_network(self, name: str) -> dict[str, list[str]] | None:
        """MAC -> addresses on that network; None when the driver has no
        lease API (test driver) or the network is gone."""
        now = time.monotonic()
        hit = self._by_network.get(name)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        table = self._fetch(name)
        self._by_network[name] = (now, table)
        return table

    def _fetch(self, name: str) -> dict[str, list[str]] | None:
        try:
            leases: list[dict[str, Any]] = self.conn.networkLookupByName(name).DHCPLeases()
        except libvirt.libvirtError:
            return None
        out: dict[str, list[str]] = {}
        for lease in leases:
            mac = str(lease.get("mac", "")).lower()
            addr = str(lease.get("ipaddr", ""))
            if mac and addr:
                out.setdefault(mac, []).append(addr)
        return out


def addresses(
    dom: libvirt.virDomain, nics: list[domxml.DomainNic], agent: bool, leases: Leases, *, arp: bool = True
) -> list[str]:
    """Guest addresses of a running domain with these NICs (see the module
    doc); ``agent``: its XML says the guest agent is connected."""
    ips: list[str] = []
    unsupported = False
    for nic in nics:
        if nic.kind != "network":
            continue
        table = leases.for_network(nic.source)
        if table is None:
            unsupported = True
            continue
        ips.extend(table.get(nic.mac, []))
    if ips:
        return _usable(ips)
    sources: list[int] = []
    if agent:
        sources.append(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
    if unsupported:
        sources.append(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
    if arp and not unsupported:
        sources.append(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP)
    macs = {n.mac for n in nics}
    for source in sources:
        try:
            found = dom.interfaceAddresses(source, 0)
        except libvirt.libvirtError:
            continue
        for iface in found.values():
            if macs and str(iface.get("hwaddr", "")).lower() not in macs:
                continue
            ips.extend(str(a.get("addr", "")) for a in iface.get("addrs") or [])
        if ips:
            return _usable(ips)
    return []


def _usable(ips: list[str]) -> list[str]:
    """Drop loopback and link-local addresses and duplicates, keep order."""
    out: list[str] = []
    for ip in ips:
        if _routable(ip) and ip not in out:
            out.append(ip)
    return out


@functools.lru_cache(maxsize=4096)
def _routable(ip: str) -> bool:
    """An address, neither loopback nor link-local (asked on every Describe
    of a running VM: remembered)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local)
