"""The cloud-init seed of a VM: a NoCloud ISO (built by
:mod:`~vm_provider_libvirt.cloudinit`) stored as the volume
``<vm>-cidata.iso`` and attached as a read-only SATA CD-ROM, the way its
volume attaches (a file, a block device, a network volume).

The bytes go into the volume with a libvirt stream (``vol.upload``), so this
works against a remote daemon too. The seed goes into the VM's pool when
libvirt can make and upload volumes there, else into the pool the
``seed_pool`` setting names; with neither the VM is refused before anything
is made (:func:`pool_for`: an RBD or Gluster pool takes no uploads).
libvirt's test driver keeps no volume data: there the volume is created
(and attached, and deleted with the VM) but stays empty.
"""

from __future__ import annotations

import logging
from typing import Any

import libvirt

from provider_core import FailedPrecondition, NotFound

from . import cloudinit, storage, streams
from .domxml import DomainDisk
from .marks import VolumeRef
from .session import Session

log = logging.getLogger(__name__)

TARGET = "sda"
#: What a pool needs to take a seed (fields of :class:`storage.PoolKind`).
ABILITIES = ("create", "names", "upload")


def volume_name(vm_name: str) -> str:
    return f"{vm_name}-cidata.iso"


def pool_for(session: Session, pool: libvirt.virStoragePool) -> libvirt.virStoragePool:
    """The pool the seed of a VM in ``pool`` goes into; FailedPrecondition
    when neither that pool nor the ``seed_pool`` setting's can take it."""
    info = storage.pool_info(pool)
    lacking = info.lacks(*ABILITIES)
    if not lacking:
        return pool
    setting = session.settings.seed_pool
    if not setting:
        raise FailedPrecondition(
            f"the cloud-init seed cannot be stored: {storage.CANNOT[lacking]} in pool {info.name!r} "
            f"(a libvirt {info.type} pool); set 'seed_pool' to a pool that can take it (dir, fs, netfs, logical, ...)"
        )
    try:
        seed_pool = session.pool(setting)
    except NotFound as exc:
        raise FailedPrecondition(f"setting 'seed_pool': {exc}") from exc
    storage.pool_info(seed_pool).need(f"storing the cloud-init seed in pool {setting!r} (setting 'seed_pool')", *ABILITIES)
    return seed_pool


def make(
    session: Session,
    pool: libvirt.virStoragePool,
    vm_name: str,
    *,
    user_data: bytes,
    meta_data: bytes,
    network_config: dict[str, Any] | None,
    instance_id: str = "",
    hostname: str = "",
) -> tuple[libvirt.virStorageVol, VolumeRef, DomainDisk]:
    """Build the ISO and store it; returns the volume, its mark entry and
    the CD-ROM to attach. Raises libvirtError for the caller to translate."""
    iso = cloudinit.build_nocloud_iso(user_data, meta_data, network_config, instance_id=instance_id, hostname=hostname)
    name = volume_name(vm_name)
    old = storage.lookup(pool, name)
    if old is not None:
        storage.delete(old)
    vol = storage.create_blank(pool, name, len(iso), "raw")
    try:
        if session.host().keeps_disk_data:
            streams.upload_bytes(session.conn(), vol, iso)
        else:
            log.debug("libvirt's %s driver keeps no volume data: %s stays empty", session.host().driver, name)
        source = storage.attach(vol)
    except BaseException:
        storage.delete(vol)
        raise
    ref = VolumeRef(pool=pool.name(), name=name, role="cidata", target=TARGET)
    disk = DomainDisk(
        target=TARGET,
        path=source.path,
        format="raw",
        device="cdrom",
        bus="sata",
        readonly=True,
        source_type=source.type,
        network=source.network,
    )
    return vol, ref, disk
