"""Delete: power off, remove the VM's own volumes, undefine.

A domain carrying our mark loses exactly the volumes the mark lists: root
and data disks, the cloud-init ISO, and frozen bases of linked clones once
nothing is backed by them any more. A template or image the VM was made
from is never touched.

A domain without our mark (deleted only when the server's
``manage_foreign_vms`` lets the core call this) loses its definition and
those of its disks that are surely its alone: a writable disk (not a
CD-ROM, not ``<readonly/>`` or ``<shareable/>``) that is a volume of a
libvirt storage pool, that no other domain of the host names, and that
backs no other volume. Everything else stays: files outside any pool (the
provider cannot tell what else uses them), block devices, network disks,
shared and backing images. Which disks stayed is logged.

Volumes go before the definition, so a Delete interrupted half-way is
finished by the next one (a missing volume is skipped); once the domain is
gone the core turns the NotFound of a repeated Delete into success.
Snapshot metadata, managed save images, NVRAM and TPM state go with the
definition.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import libvirt

from provider_core import Outcome

from . import domxml, errors, marks, storage
from .marks import Mark, VolumeRef
from .session import Session

log = logging.getLogger(__name__)

UNDEFINE_ALL = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_TPM
)
#: What every driver that has snapshots accepts (the test driver refuses
#: the NVRAM, TPM and checkpoint flags).
UNDEFINE_BASIC = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA


def delete(session: Session, vm_id: str) -> Outcome[None]:
    dom = session.lookup(vm_id)
    name = dom.name()
    with session.translated(f"deleting VM {name!r}"):
        root = domxml.parse(dom.XMLDesc(0))
        mark = marks.read(root)
        if dom.isActive():
            with errors.ignoring(errors.is_invalid_in_state):  # went off meanwhile
                dom.destroy()
        if mark is not None:
            delete_volumes(session, mark)
        else:
            delete_foreign_disks(session, dom, root)
        if dom.isPersistent():
            undefine(dom)
    log.info("deleted VM %s", name)
    return Outcome.done(None)


def undefine(dom: libvirt.virDomain) -> None:
    undefined = False
    with errors.ignoring(errors.is_flag_refused):
        dom.undefineFlags(UNDEFINE_ALL)
        undefined = True
    if not undefined:
        dom.undefineFlags(UNDEFINE_BASIC)


def delete_volumes(session: Session, mark: Mark) -> None:
    """Delete the volumes the mark lists; shared bases only when unused."""
    owned = [v for v in mark.volumes if v.role != "base"]
    for ref in owned:
        vol = _volume(session, ref)
        if vol is not None:
            storage.delete(vol)
    for ref in mark.volumes:
        if ref.role == "base":
            delete_base_if_unused(session, ref)


def delete_foreign_disks(session: Session, dom: libvirt.virDomain, root: ET.Element) -> None:
    """The disks of a domain we did not make that are surely its alone
    (see the module's docstring); the others are kept and named in the log."""
    uuid = dom.UUIDString()
    kept: list[str] = []
    doomed: list[libvirt.virStorageVol] = []
    elsewhere = _paths_of_other_domains(session, uuid)
    unshared = {target for target, el in _disk_elements(root) if el.find("readonly") is None and el.find("shareable") is None}
    for disk in domxml.disks(root):
        if disk.device != "disk" or not disk.path:
            continue
        vol = session.volume_at(disk.path) if disk.source_type in ("file", "volume") else None
        if disk.target not in unshared or vol is None or disk.path in elsewhere:
            kept.append(disk.path)
            continue
        if storage.backs_others(vol.storagePoolLookupByVolume(), disk.path):
            kept.append(disk.path)
            continue
        doomed.append(vol)
    for vol in doomed:
        storage.delete(vol)
    if kept:
        log.info("deleting VM %s, not made by vm-provider: kept its disks %s", dom.name(), ", ".join(kept))


def _disk_elements(root: ET.Element) -> list[tuple[str, ET.Element]]:
    out = []
    for el in root.findall("devices/disk"):
        target = el.find("target")
        out.append((target.get("dev", "") if target is not None else "", el))
    return out


def _paths_of_other_domains(session: Session, uuid: str) -> set[str]:
    """Every disk path named by another domain of the host (its inactive
    definition and, when running, its live one)."""
    paths: set[str] = set()
    for other in session.conn().listAllDomains(0):
        if other.UUIDString() == uuid:
            continue
        with errors.ignoring(errors.is_missing_domain):  # undefined since the listing
            xmls = [other.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)]
            if other.isActive():
                xmls.append(other.XMLDesc(0))
            for text in xmls:
                paths.update(d.path for d in domxml.disks(domxml.parse(text)) if d.path)
    return paths


def delete_base_if_unused(session: Session, ref: VolumeRef) -> None:
    vol = _volume(session, ref)
    if vol is None:
        return
    users = storage.backs_others(vol.storagePoolLookupByVolume(), vol.path())
    if users:
        log.debug("keeping base volume %s/%s: it backs %s", ref.pool, ref.name, ", ".join(users))
        return
    storage.delete(vol)


def _volume(session: Session, ref: VolumeRef) -> libvirt.virStorageVol | None:
    pool = session.find_pool(ref.pool)
    if pool is None:
        log.warning("pool %s of volume %s is gone", ref.pool, ref.name)
        return None
    return storage.lookup(pool, ref.name)
