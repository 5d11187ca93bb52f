"""Snapshots: libvirt internal snapshots (stored inside the qcow2 disks).

- A running (or paused) VM is snapshotted with its memory: reverting brings
  it back running where it was. QEMU cannot take an internal snapshot of a
  running VM's disks alone, and libvirt 9 cannot revert external (disk-only
  overlay) snapshots, so ``include_memory=false`` on a running VM still
  records memory; the snapshot's raw XML says ``memory snapshot='internal'``.
- A stopped VM gets a disk-only snapshot (``qemu-img snapshot`` on each
  qcow2 disk); reverting to it leaves the VM stopped.

A running VM with UEFI firmware in pflash (OVMF: every UEFI VM libvirt's
firmware auto-selection makes) cannot be snapshotted: libvirt refuses
internal snapshots of an active domain with pflash firmware
(qemu_snapshot.c: "internal snapshots of a VM with pflash based firmware
are not supported"), and libvirt before 9.7 cannot revert the external
snapshots it would take instead. That is FAILED_PRECONDITION before any
work, saying to snapshot it powered off, which works (disk-only, as any
stopped VM; the NVRAM variables are not part of it).

A running VM whose vCPUs were hot-plugged since it started cannot be
snapshotted with memory (QEMU 7.2 restores the state before libvirt plugs
the vCPUs back: "Unknown savevm section ... cpu_common"): FAILED_PRECONDITION
until it is powered off and on.

All disks must be qcow2 (raw disks cannot hold internal snapshots:
FAILED_PRECONDITION saying so); the cloud-init CD-ROM is read-only and left
out. The snapshot id is its name: the name hint made safe and unique
(``-2``, ``-3`` ... appended), or ``snap-<UTC timestamp>``. Snapshots of a
running VM run as a task (memory is written out); the rest finish within
the call. Deleting a VM removes its snapshots with it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import libvirt

from provider_core import FailedPrecondition, NotFound, Outcome, SnapshotSpec

from . import domxml, errors, marks, power
from .session import Session

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def snapshot_name(hint: str, taken: set[str]) -> str:
    base = UNSAFE.sub("-", hint).strip("-.")[:60] or datetime.now(UTC).strftime("snap-%Y%m%dT%H%M%SZ")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def snapshot_xml(name: str, description: str, disks: list[tuple[str, str]]) -> str:
    """``disks``: (target, internal|no) for every disk of the domain."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    if description:
        ET.SubElement(root, "description").text = description
    if disks:
        el = ET.SubElement(root, "disks")
        for target, mode in disks:
            ET.SubElement(el, "disk", name=target, snapshot=mode)
    return ET.tostring(root, encoding="unicode")


def create(session: Session, spec: SnapshotSpec) -> Outcome[str]:
    dom = session.lookup(spec.vm_id)
    context = f"snapshot of VM {dom.name()!r}"
    with session.translated(context):
        disks = []
        for disk in session.domain_disks(dom):
            if disk.device == "cdrom" or disk.readonly:
                disks.append((disk.target, "no"))
            elif disk.format != "qcow2" and not session.host().is_test:
                raise FailedPrecondition(f"disk {disk.target} of VM {dom.name()!r} is {disk.format}; snapshots need qcow2 disks")
            else:
                disks.append((disk.target, "internal"))
        running = dom.state()[0] not in power.STOPPED
        if running:
            live = domxml.parse(dom.XMLDesc(0))
            if domxml.pflash_firmware(live):
                raise FailedPrecondition(
                    f"VM {dom.name()!r} is running with UEFI (pflash) firmware: libvirt takes no internal snapshot of "
                    "it while it runs, with or without memory; power it off and snapshot it stopped (disks only)"
                )
            mark = marks.read(live)
            if mark is not None and mark.extra.get(marks.VCPU_HOTPLUG):
                raise FailedPrecondition(
                    f"vCPUs of VM {dom.name()!r} were hot-plugged since it started: QEMU could not restore a memory "
                    "snapshot of it; power it off and on again first, or snapshot it stopped"
                )
        name = snapshot_name(spec.name, set(dom.snapshotListNames(0)))
        xml = snapshot_xml(name, spec.description, disks)

        def take() -> None:
            with session.translated(context):
                dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)

        if running:
            return Outcome.later(name, take)
        take()
    return Outcome.done(name)


def _lookup(session: Session, dom: libvirt.virDomain, snapshot_id: str) -> libvirt.virDomainSnapshot:
    with session.translated(f"VM {dom.name()!r}"), errors.ignoring(errors.is_missing_snapshot):
        return dom.snapshotLookupByName(snapshot_id, 0)
    raise NotFound(f"VM {dom.name()!r} has no snapshot {snapshot_id!r}")


def revert(session: Session, vm_id: str, snapshot_id: str) -> Outcome[None]:
    dom = session.lookup(vm_id)
    snap = _lookup(session, dom, snapshot_id)
    with session.translated(f"reverting VM {dom.name()!r} to {snapshot_id!r}"):
        dom.revertToSnapshot(snap, 0)
    return Outcome.done(None)


def delete(session: Session, vm_id: str, snapshot_id: str) -> Outcome[None]:
    dom = session.lookup(vm_id)
    snap = _lookup(session, dom, snapshot_id)
    with session.translated(f"deleting snapshot {snapshot_id!r} of VM {dom.name()!r}"):
        snap.delete(0)
    return Outcome.done(None)
