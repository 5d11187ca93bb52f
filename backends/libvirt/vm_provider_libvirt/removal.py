"""Delete: power off, remove the VM's own volumes, undefine.

Only domains carrying our mark are deleted (FailedPrecondition otherwise: a
provider never destroys a VM it did not make). The volumes removed are
exactly those our mark lists: root and data disks, the cloud-init ISO, and
frozen bases of linked clones once nothing is backed by them any more. A
template or image the VM was made from is never touched.

Volumes go before the definition, so a Delete interrupted half-way is
finished by the next one (a missing volume is skipped); once the domain is
gone the core turns the NotFound of a repeated Delete into success.
Snapshot metadata, managed save images, NVRAM and TPM state go with the
definition.
"""

from __future__ import annotations

import logging

import libvirt

from provider_core import FailedPrecondition, Outcome

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
        mark = marks.read(domxml.parse(dom.XMLDesc(0)))
        if mark is None:
            raise FailedPrecondition(f"VM {name!r} was not created by vm-provider; refusing to delete it")
        if dom.isActive():
            with errors.ignoring(errors.is_invalid_in_state):  # went off meanwhile
                dom.destroy()
        delete_volumes(session, mark)
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
