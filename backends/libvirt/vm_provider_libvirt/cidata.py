"""The cloud-init seed of a VM: a NoCloud ISO (built by
:mod:`~vm_provider_libvirt.cloudinit`) stored as the volume
``<vm>-cidata.iso`` in the VM's pool and attached as a read-only SATA CD-ROM.

The bytes go into the volume with a libvirt stream (``vol.upload``), so this
works against a remote daemon too. libvirt's test driver cannot upload: the
volume is created (and attached, and deleted with the VM) but stays empty.
"""

from __future__ import annotations

import logging
from typing import Any

import libvirt

from . import cloudinit, storage, streams
from .domxml import DomainDisk
from .marks import VolumeRef
from .session import Session

log = logging.getLogger(__name__)

TARGET = "sda"


def volume_name(vm_name: str) -> str:
    return f"{vm_name}-cidata.iso"


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
        if not streams.upload_bytes(session.conn(), vol, iso):
            log.debug("libvirt driver %s cannot upload volumes: %s stays empty", session.host().driver, name)
    except BaseException:
        storage.delete(vol)
        raise
    ref = VolumeRef(pool=pool.name(), name=name, role="cidata", target=TARGET)
    disk = DomainDisk(target=TARGET, path=vol.path(), format="raw", device="cdrom", bus="sata", readonly=True)
    return vol, ref, disk
