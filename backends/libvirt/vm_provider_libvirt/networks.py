"""NICs of new VMs (from networks_json) and the addresses of running ones.

A NIC joins a libvirt network (``NetworkName``, default ``settings.network``)
or a host bridge (``Bridge``). VLAN tags: libvirt tags traffic only where
the switch can: Open vSwitch bridges and networks (``<virtualport
type='openvswitch'/>``), and SR-IOV/macvtap passthrough networks. A plain
Linux bridge or a NAT/routed/isolated network refuses a tagged NIC when the
VM starts ("vlan tag ... not supported for this type of network"), so
Create refuses it at once for a libvirt network, saying so.

A NIC on a libvirt network inherits the network's ``<virtualport>``: an
Open vSwitch network needs nothing on the NIC. A NIC on a host ``Bridge``
needs ``<virtualport type='openvswitch'/>`` whenever the bridge is an Open
vSwitch one, VLAN or not (without it libvirt attaches the tap device with
the Linux bridge ioctl, which an OVS bridge refuses: "Operation not
supported"). What the bridge is (:func:`bridge_kind`): a name listed in the
setting ``openvswitch_bridges`` is OVS; else libvirt's interface API is
asked: a Linux bridge is listed as ``<interface type='bridge'>``, an OVS
bridge device (kernel device type ``openvswitch``) as ``type='ethernet'``,
and a name listed as anything but a bridge can only work as an OVS bridge.
A bridge the interface API cannot see (none there, no interface driver or
a failing one, or a daemon in another network namespace than its udev) is
taken to be OVS only with a VLAN, as
a Linux bridge cannot tag; a VLAN on a known Linux bridge is refused
(INVALID_ARGUMENT): name the bridge of that VLAN (``br0.10``) instead and
leave VLAN at 0.

MACs of new NICs (:func:`new_macs`) are QEMU's ``52:54:00`` prefix and 24
random bits, checked against the MACs of every domain of the host (and of
the NICs planned with them) and drawn again on a clash: addresses are
matched to VMs by MAC.

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
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import libvirt

from provider_core import FailedPrecondition, InvalidArgument, ResourceExhausted
from provider_core.specs import NetworkAttachment

from . import domxml, errors
from .domxml import NicPlan
from .domxml import parse as parse_xml
from .readcache import Leases
from .session import Session

log = logging.getLogger(__name__)

VLAN_FORWARD_MODES = frozenset({"hostdev", "passthrough", "private", "vepa"})
#: Draws of a new MAC before giving up (each clashes with a probability of
#: the host's NIC count / 2**24).
MAC_DRAWS = 64


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
        mac = given[i] if i < len(given) else na.mac_address
        model = na.model or "virtio"
        if na.bridge:
            ovs = _bridge_openvswitch(session, na.bridge, na.vlan, f"{field}.VLAN")
            out.append(NicPlan("bridge", na.bridge, mac, model, na.vlan, openvswitch=ovs))
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
    fresh = iter(new_macs(session, sum(1 for n in out if not n.mac), taken={n.mac for n in out if n.mac}))
    return [n if n.mac else replace(n, mac=next(fresh)) for n in out]


def bridge_kind(session: Session, name: str) -> str:
    """``openvswitch``, ``linux``, or "" when the host cannot say (see the
    module doc)."""
    if name in session.settings.openvswitch_bridges:
        return "openvswitch"
    conn = session.conn()
    try:
        root = parse_xml(conn.interfaceLookupByName(name).XMLDesc(0))
    except libvirt.libvirtError as exc:
        # No such interface, no interface driver (a daemon built or installed
        # without it), or one that failed: the host cannot say.
        if not errors.is_missing_interface(exc):
            log.info("libvirt's interface API cannot tell what bridge %r is: %s", name, exc.get_error_message())
        return ""
    return "linux" if root.get("type") == "bridge" else "openvswitch"


def _bridge_openvswitch(session: Session, name: str, vlan: int, field: str) -> bool:
    """Whether a NIC on host bridge ``name`` needs the OVS virtualport."""
    kind = bridge_kind(session, name)
    if kind == "linux" and vlan:
        raise InvalidArgument.field(
            field,
            f"bridge {name!r} is a Linux bridge, which cannot tag VLAN {vlan}: name the bridge of that VLAN "
            f"(such as {name}.{vlan}) with VLAN 0, or list an Open vSwitch bridge in the setting openvswitch_bridges",
        )
    return kind == "openvswitch" or (kind == "" and bool(vlan))


def macs_in_use(conn: libvirt.virConnect) -> set[str]:
    """The MACs of every NIC of every domain of the host (lower case)."""
    used: set[str] = set()
    for dom in conn.listAllDomains(0):
        with errors.ignoring(errors.is_missing_domain):  # undefined since the listing
            used.update(n.mac for n in domxml.nics(parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))))
            if dom.isActive():
                used.update(n.mac for n in domxml.nics(parse_xml(dom.XMLDesc(0))))
    return used


def new_macs(session: Session, count: int, taken: Iterable[str] = ()) -> list[str]:
    """``count`` MACs in QEMU's ``52:54:00`` range that no domain of the host
    uses, none of ``taken`` and each different."""
    if count <= 0:
        return []
    with session.translated("reading the MACs in use"):
        used = macs_in_use(session.conn()) | {m.lower() for m in taken}
    out: list[str] = []
    for _ in range(count):
        for _draw in range(MAC_DRAWS):
            mac = domxml.random_mac()
            if mac not in used:
                break
        else:
            raise ResourceExhausted(f"no free MAC in 52:54:00:xx:xx:xx after {MAC_DRAWS} draws ({len(used)} in use)")
        used.add(mac)
        out.append(mac)
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
