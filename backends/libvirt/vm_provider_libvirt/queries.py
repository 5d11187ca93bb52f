"""Read-only operations: Validate, Describe, ListVMs, GetDiskInfo.

Costs: Describe makes one libvirt call (``state()``), and a second
(``XMLDesc()``) when what it last read of the VM's XML is not recent
(:meth:`~vm_provider_libvirt.readcache.Parsed.recent`: older than
:data:`~vm_provider_libvirt.readcache.DESCRIBE_TTL` seconds, or a change or a
new state since). A running VM adds one lease query per network of the VM
at most every ``DESCRIBE_TTL`` seconds (shared by all VMs), and an agent or
ARP query only when the leases know nothing. Domain handles and what is
read from an XML are reused (:mod:`~vm_provider_libvirt.readcache`).
ListVMs makes one
``getAllDomainStats`` call (which skips the stats that would wait for a
domain's job: one VM stuck in a job does not stall the list), one lease query per network shared by all VMs,
and one XML call per domain whose XML was not read recently (by the same
rule as Describe).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libvirt

from provider_core import (
    Disk,
    DiskDetails,
    FailedPrecondition,
    Nic,
    NotFound,
    ProviderError,
    ValidationReport,
    VMInfo,
    VMStatus,
)

from . import cidata, domxml, errors, images, marks, networks, readcache, states, storage
from .connection import safe_uri
from .host import version_text
from .session import Session

GIB = storage.GIB
ACTIVE = frozenset(
    {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTDOWN}
)


def _pools(session: Session, facts: list[str], problems: list[str]) -> None:
    """Validate's look at the pool and where cloud-init seeds go."""
    try:
        pool = session.pool()
        with session.translated():
            facts.append(f"pool {pool.name()!r} ({storage.pool_type(pool)})")
    except (NotFound, FailedPrecondition) as exc:
        problems.append(f"{exc} (setting 'pool')")
    except ProviderError as exc:
        problems.append(f"storage pool {session.settings.pool!r}: {exc}")
    else:
        try:
            with session.translated():
                seeds = cidata.pool_for(session, pool)
            if seeds.name() != pool.name():
                facts.append(f"cloud-init seeds in pool {seeds.name()!r}")
        except ProviderError as exc:
            # VMs without cloud-init data still work; a seed_pool that does not is a problem.
            (problems if session.settings.seed_pool else facts).append(str(exc))


def validate(session: Session) -> ValidationReport:
    uri = safe_uri(session.settings.uri)
    try:
        host = session.host()
    except ProviderError as exc:
        return ValidationReport(ok=False, message=f"cannot use libvirt at {uri}: {exc}")
    facts = [
        f"libvirt {version_text(host.libvirt_version)} at {uri} ({host.hostname or 'local'}), "
        f"{host.driver} {version_text(host.hypervisor_version)}, guests {host.arch}"
    ]
    problems: list[str] = []
    _pools(session, facts, problems)
    network = session.settings.network
    if network:
        try:
            with session.translated():
                net = session.find_network(network)
                if net is None:
                    problems.append(f"network {network!r} (setting 'network'): not found")
                elif net.isActive():
                    facts.append(f"network {network!r}")
                else:
                    problems.append(f"network {network!r} is not active (virsh net-start {network})")
        except ProviderError as exc:
            problems.append(f"network {network!r} (setting 'network'): {exc}")
    if session.settings.domain_type == "kvm" and "kvm" not in host.domain_types and not host.is_test:
        problems.append("domain_type is 'kvm' but this host does not offer KVM")
    try:
        facts.append(f"domain type {session.domain_type()}")
    except ProviderError as exc:
        problems.append(f"cannot choose the domain type: {exc}")
    if problems:
        return ValidationReport(ok=False, message="; ".join(problems + facts))
    return ValidationReport(ok=True, message="; ".join(facts))


# -- Describe and ListVMs ----------------------------------------------------------


def raw_details(root: ET.Element) -> dict[str, Any]:
    """Describe's provider_raw_json without the native state: the domain's
    facts (the caller adds ``state`` and ``reason``)."""
    return _raw(root, marks.read(root), domxml.disks(root), domxml.nics(root))


def _raw(
    root: ET.Element, mark: marks.Mark | None, disks: list[domxml.DomainDisk], nics: list[domxml.DomainNic]
) -> dict[str, Any]:
    current, maximum = domxml.vcpus(root)
    raw: dict[str, Any] = {
        "uuid": root.findtext("uuid") or "",
        "name": root.findtext("name") or "",
        "id": int(root.get("id", "-1")),
        "domain_type": root.get("type", ""),
        "vcpus": current,
        "max_vcpus": maximum,
        "memory_mib": domxml.memory_mib(root, "currentMemory"),
        "max_memory_mib": domxml.memory_mib(root, "memory"),
        "machine": domxml.machine(root),
        "firmware": domxml.firmware(root),
        "managed": mark is not None,
        "disks": [{"target": d.target, "path": d.path, "format": d.format, "device": d.device, "boot": d.boot} for d in disks],
        "nics": [{"mac": n.mac, "type": n.kind, "source": n.source, "model": n.model, "vlan": n.vlan} for n in nics],
    }
    if mark is not None:
        raw.update(tags=list(mark.tags), spec_hash=mark.spec_hash, created=mark.created)
        if mark.source_kind:
            raw["source"] = {"kind": mark.source_kind, "ref": mark.source_ref}
        if mark.clone_of:
            raw["clone_of"] = mark.clone_of
    return raw


def _facts(xml: str, console_host: str) -> readcache.Facts:
    """Everything Describe and ListVMs read from one domain XML, in one parse."""
    root = domxml.parse(xml)
    mark = marks.read(root)
    disks = domxml.disks(root)
    nics = domxml.nics(root)
    raw = _raw(root, mark, disks, nics)
    return readcache.Facts(
        xml=xml,
        raw=raw,
        nics=nics,
        agent=domxml.agent_connected(root),
        console=domxml.console_url(root, console_host),
        managed=mark is not None,
        listing=_listing(raw, mark, disks, nics),
    )


def _listing(
    raw: dict[str, Any], mark: marks.Mark | None, disks: list[domxml.DomainDisk], nics: list[domxml.DomainNic]
) -> readcache.Listing:
    static = _static_ips(mark)
    listed = {
        "uuid": raw["uuid"],
        "domain_type": raw["domain_type"],
        "machine": raw["machine"],
        "managed": "true" if mark is not None else "false",
    }
    if mark is not None and mark.tags:
        listed["tags"] = ",".join(mark.tags)
    return readcache.Listing(
        uuid=raw["uuid"],
        name=raw["name"],
        cpu=raw["vcpus"],
        memory_mib=raw["memory_mib"],
        disks=tuple((d.target, d.path, d.format) for d in disks if d.device != "cdrom"),
        networks=tuple(
            Nic(name=n.source, mac=n.mac, ip_address=static[i] if i < len(static) else "") for i, n in enumerate(nics)
        ),
        raw=listed,
    )


def describe(session: Session, vm_id: str) -> VMStatus:
    with session.reading_domain(vm_id) as dom:
        epoch = session.quiet()
        state, reason = dom.state()
        uuid = dom.UUIDString()  # kept in the handle: the key whatever id the caller gave
        facts = session.facts(dom, uuid, state, epoch, lambda text: _facts(text, session.console_host()))
        active = state in ACTIVE
        ips = networks.addresses(dom, facts.nics, facts.agent, session.leases()) if active else []
    raw = {**facts.raw, "state": states.native(state).name, "reason": states.reason(state, reason)}
    return VMStatus(power_state=states.power_state(state), ips=ips, console_url=facts.console if active else "", raw=raw)


def owns(session: Session, vm_id: str) -> bool:
    """Whether the domain carries our mark (one XML read)."""
    with session.reading_domain(vm_id) as dom:
        return marks.read(domxml.parse(dom.XMLDesc(0))) is not None


#: ListVMs' stats skip what would wait for a domain's job (a migration, a
#: save, a call stuck on a hung QEMU) instead of stalling the whole list:
#: ``VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT`` (libvirt 4.5; 0 where
#: libvirt-python was built without it).
STATS_NOWAIT: int = getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)


def all_domain_stats(conn: libvirt.virConnect) -> list[tuple[libvirt.virDomain, dict[str, Any]]]:
    """State and block stats of every domain, never waiting for a domain's
    job (a daemon older than 4.5 refuses the flag: then asked without)."""
    kinds = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BLOCK
    if STATS_NOWAIT:
        with errors.ignoring(errors.is_flag_refused):
            return list(conn.getAllDomainStats(kinds, STATS_NOWAIT))
    return list(conn.getAllDomainStats(kinds, 0))


def list_vms(session: Session) -> list[VMInfo]:
    conn = session.conn()
    managed_only = session.settings.list_scope == "managed"
    console_host = session.console_host()
    out: list[VMInfo] = []
    epoch = session.quiet()
    with session.translated("listing VMs"):
        stats = all_domain_stats(conn)
        leases = readcache.Leases(conn)
        for dom, st in stats:
            uuid = dom.UUIDString()  # kept in the handle: no call to the daemon
            state = int(st.get("state.state", libvirt.VIR_DOMAIN_NOSTATE))
            facts: readcache.Facts | None = None
            with errors.ignoring(errors.is_missing_domain):  # undefined since the listing: left out
                facts = session.facts(dom, uuid, state, epoch, lambda text: _facts(text, console_host))
            if facts is None:
                continue
            if managed_only and not facts.managed:
                continue
            out.append(_info(dom, facts, st, leases))
    return out


def _info(dom: libvirt.virDomain, facts: readcache.Facts, st: dict[str, Any], leases: readcache.Leases) -> VMInfo:
    """A ListVMs entry. Every value is built and typed here, so the models
    are constructed without validating them again."""
    listing = facts.listing
    state = int(st.get("state.state", libvirt.VIR_DOMAIN_NOSTATE))
    native = states.native(state)
    ips = networks.addresses(dom, facts.nics, facts.agent, leases, arp=False) if state in ACTIVE else []
    disks: list[Disk] = []
    if listing.disks:
        capacity = {
            st.get(f"block.{i}.name"): int(st.get(f"block.{i}.capacity", 0)) for i in range(int(st.get("block.count", 0)))
        }
        disks = [
            Disk.model_construct(id=target, path=path, size_gib=capacity.get(target, 0) // GIB, format=fmt)
            for target, path, fmt in listing.disks
        ]
    raw = {"state": native.name, "reason": states.reason(state, int(st.get("state.reason", 0))), **listing.raw}
    return VMInfo.model_construct(
        id=listing.uuid or dom.UUIDString(),
        name=listing.name,
        power_state=native.power,
        ips=ips,
        cpu=listing.cpu,
        memory_mib=listing.memory_mib,
        disks=disks,
        networks=list(listing.networks),
        raw=raw,
    )


def _static_ips(mark: marks.Mark | None) -> list[str]:
    """StaticIP of each NIC as networks_json gave it at Create ("" for DHCP)."""
    if mark is None or not mark.networks_json:
        return []
    try:
        items = json.loads(mark.networks_json)
    except ValueError:
        return []
    return [str(item.get("static_ip", "")) if isinstance(item, dict) else "" for item in items]


# -- GetDiskInfo --------------------------------------------------------------------


def pick_disk(session: Session, dom: libvirt.virDomain, disk_id: str) -> domxml.DomainDisk:
    """The disk named by target, path or file name; the primary one for ""."""
    disks = [d for d in session.domain_disks(dom) if d.device != "cdrom"]
    if not disk_id:
        if not disks:
            raise FailedPrecondition(f"VM {dom.name()!r} has no disk")
        return disks[0]
    for d in disks:
        if disk_id in (d.target, d.path, Path(d.path).name):
            return d
    raise NotFound(f"VM {dom.name()!r} has no disk {disk_id!r} (its disks: {', '.join(d.target for d in disks) or 'none'})")


def disk_info(session: Session, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
    dom = session.lookup(vm_id)
    disk = pick_disk(session, dom, disk_id)
    metadata = {"target": disk.target, "bus": disk.bus, "domain": dom.name()}
    with session.translated(f"VM {vm_id!r}"):
        snapshots = [s.getName() for s in dom.listAllSnapshots(0)]
        if snapshot_id and snapshot_id not in snapshots:
            raise NotFound(f"VM {dom.name()!r} has no snapshot {snapshot_id!r}")
        vol = session.volume_at(disk.path)
        if vol is not None:
            info = storage.describe(vol)
            fmt, virtual, actual, backing = info.format, info.capacity, info.allocation, info.backing_path
            metadata.update(pool=info.pool, volume=info.name)
        else:
            fmt, virtual, actual, backing = _local_image(session, disk)
    if snapshot_id:
        metadata["snapshot"] = snapshot_id
    return DiskDetails(
        disk_id=disk.target,
        format=fmt or disk.format,
        virtual_size_bytes=virtual,
        actual_size_bytes=actual,
        path=disk.path,
        is_bootable=disk.boot,
        snapshots=snapshots,
        backing_file=backing,
        metadata=metadata,
    )


def _local_image(session: Session, disk: domxml.DomainDisk) -> tuple[str, int, int, str]:
    """qemu-img facts of a disk outside any pool, when libvirt runs here and
    this process may read it; else the format its XML says and no sizes
    (libvirt streams only pool volumes)."""
    parts = urlsplit(session.settings.uri)
    if parts.hostname or not os.access(disk.path, os.R_OK):
        return disk.format, 0, 0, ""
    try:
        meta = images.info(disk.path)
    except Exception:  # noqa: BLE001 - facts of a foreign file are best effort
        return disk.format, 0, 0, ""
    return (
        str(meta.get("format", disk.format)),
        int(meta.get("virtual-size", 0)),
        int(meta.get("actual-size", 0)),
        str(meta.get("full-backing-filename") or meta.get("backing-filename") or ""),
    )
