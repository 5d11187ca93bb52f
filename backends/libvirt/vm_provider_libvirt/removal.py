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
from typing import TYPE_CHECKING

import libvirt

from provider_core import FailedPrecondition, Outcome

from . import domxml, marks, storage
from .marks import Mark, VolumeRef

if TYPE_CHECKING:
    from .backend import LibvirtBackend

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


def delete(lv: LibvirtBackend, vm_id: str) -> Outcome[None]:
    dom = lv.lookup(vm_id)
    name = dom.name()
    with lv.translated(f"deleting VM {name!r}"):
        mark = marks.read(domxml.parse(dom.XMLDesc(0)))
        if mark is None:
            raise FailedPrecondition(f"VM {name!r} was not created by vm-provider; refusing to delete it")
        if dom.isActive():
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # went off meanwhile
                    raise
        delete_volumes(lv, mark)
        if dom.isPersistent():
            undefine(dom)
    log.info("deleted VM %s", name)
    return Outcome.done(None)


def undefine(dom: libvirt.virDomain) -> None:
    try:
        dom.undefineFlags(UNDEFINE_ALL)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefineFlags(UNDEFINE_BASIC)


def delete_volumes(lv: LibvirtBackend, mark: Mark) -> None:
    """Delete the volumes the mark lists; shared bases only when unused."""
    owned = [v for v in mark.volumes if v.role != "base"]
    for ref in owned:
        vol = _volume(lv, ref)
        if vol is not None:
            storage.delete(vol)
    for ref in mark.volumes:
        if ref.role == "base":
            delete_base_if_unused(lv, ref)


def delete_base_if_unused(lv: LibvirtBackend, ref: VolumeRef) -> None:
    vol = _volume(lv, ref)
    if vol is None:
        return
    users = storage.backs_others(vol.storagePoolLookupByVolume(), vol.path())
    if users:
        log.debug("keeping base volume %s/%s: it backs %s", ref.pool, ref.name, ", ".join(users))
        return
    storage.delete(vol)


def _volume(lv: LibvirtBackend, ref: VolumeRef) -> libvirt.virStorageVol | None:
    try:
        pool = lv.conn().storagePoolLookupByName(ref.pool)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            log.warning("pool %s of volume %s is gone", ref.pool, ref.name)
            return None
        raise
    return storage.lookup(pool, ref.name)
