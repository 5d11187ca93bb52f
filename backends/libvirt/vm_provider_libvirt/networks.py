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
calls within :data:`~vm_provider_libvirt.readcache.DESCRIBE_TTL` seconds,
see :class:`~vm_provider_libvirt.readcache.Leases`), matched by MAC; else
the guest agent when its channel is connected; else (Describe only) the
host's ARP table. The test driver has no leases and answers from its own
made-up table.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

import libvirt

from provider_core import FailedPrecondition, InvalidArgument
from provider_core.specs import NetworkAttachment

from . import domxml, errors
from .domxml import NicPlan
from .domxml import parse as parse_xml
from .readcache import Leases
from .session import Session

VLAN_FORWARD_MODES = frozenset({"hostdev", "passthrough", "private", "vepa"})


def plan(session: Session, attachments: list[NetworkAttachment], macs: Iterable[str] = ()) -> list[NicPlan]:
    """NIC plans for networks_json (one NIC on ``settings.network`` when it
    is empty). ``macs`` replaces the MACs in order (clones get new ones)."""
    given = list(macs)
    if not attachments:
        if not session.settings.network:
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
        name = na.network_name or session.settings.network
        net = session.find_network(name)
        if net is None:
            if default or not na.network_name:
                raise FailedPrecondition(
                    f"the default network {name!r} (setting 'network') does not exist on this host; "
                    "create it or name one in networks_json NetworkName"
                )
            raise InvalidArgument.field(f"{field}.NetworkName", f"no libvirt network {name!r}")
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
        found: dict[str, Any] = {}
        with errors.ignoring(errors.any_error):  # no agent, no lease API: this source knows nothing
            found = dom.interfaceAddresses(source, 0)
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
