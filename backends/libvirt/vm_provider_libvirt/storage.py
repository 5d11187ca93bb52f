"""Storage volumes: find, create blank/overlay/copy, inspect, delete.

Their bytes go in and out through :mod:`.streams`.

Volumes live in libvirt storage pools. A VM's disks are qcow2 volumes in a
file-based pool (dir, fs, netfs); other pool types (LVM, disk, iSCSI, RBD)
hold raw volumes and cannot hold overlays. All functions raise
``libvirt.libvirtError`` for the caller to translate, except where noted.
"""

from __future__ import annotations

import logging
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from . import errors
from .domxml import parse as parse_xml

log = logging.getLogger(__name__)

GIB = 2**30
FILE_POOLS = frozenset({"dir", "fs", "netfs", "gluster"})

#: libvirt's names of volume formats that QEMU reads under another name.
#: libvirt probes the files of a pool when it refreshes it (as it does after
#: every upload) and calls a raw file holding an ISO 9660 image "iso", a
#: type QEMU does not know and a domain disk cannot have.
QEMU_FORMATS = {"iso": "raw"}


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    pool: str
    path: str
    format: str
    capacity: int
    allocation: int
    backing_path: str = ""
    backing_format: str = ""
    kind: int = libvirt.VIR_STORAGE_VOL_FILE
    """VIR_STORAGE_VOL_FILE, _BLOCK, ..."""


def describe(vol: libvirt.virStorageVol) -> VolumeInfo:
    """A volume's facts from its XML (one call)."""
    root = parse_xml(vol.XMLDesc(0))
    fmt = root.find("target/format")
    backing = root.find("backingStore")
    backing_fmt = backing.find("format") if backing is not None else None
    return VolumeInfo(
        name=root.findtext("name") or vol.name(),
        pool=vol.storagePoolLookupByVolume().name(),
        path=root.findtext("target/path") or "",
        format=qemu_format(fmt.get("type", "raw") if fmt is not None else "raw"),
        capacity=_bytes(root.find("capacity")),
        allocation=_bytes(root.find("allocation")),
        backing_path=(backing.findtext("path") or "") if backing is not None else "",
        backing_format=qemu_format(backing_fmt.get("type", "")) if backing_fmt is not None else "",
        kind={"file": 0, "block": 1, "dir": 2, "network": 3, "netdir": 4, "ploop": 5}.get(root.get("type", "file"), 0),
    )


def qemu_format(libvirt_format: str) -> str:
    """The QEMU driver of a volume format as libvirt names it."""
    return QEMU_FORMATS.get(libvirt_format, libvirt_format)


def _bytes(el: ET.Element | None) -> int:
    if el is None or not (el.text or "").strip():
        return 0
    units = {
        "bytes": 1,
        "b": 1,
        "kib": 2**10,
        "k": 2**10,
        "mib": 2**20,
        "m": 2**20,
        "gib": GIB,
        "g": GIB,
        "tib": 2**40,
        "t": 2**40,
    }
    return int(el.text or "0") * units.get(el.get("unit", "bytes").lower(), 1)


def pool_type(pool: libvirt.virStoragePool) -> str:
    return parse_xml(pool.XMLDesc(0)).get("type", "")


def holds_files(pool: libvirt.virStoragePool) -> bool:
    """Whether the pool holds image files (qcow2, overlays)."""
    return pool_type(pool) in FILE_POOLS


def path_of(pool: libvirt.virStoragePool, name: str) -> str:
    """Where volume ``name`` of a pool that holds files lies (whether it
    exists yet or not); "" for other pools."""
    root = parse_xml(pool.XMLDesc(0))
    target = root.findtext("target/path") or ""
    if root.get("type", "") not in FILE_POOLS or not target:
        return ""
    return f"{target.rstrip('/')}/{name}"


def lookup(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    """The volume of that name, or None."""
    with errors.ignoring(errors.is_missing_volume):
        return pool.storageVolLookupByName(name)
    return None


def at_path(conn: libvirt.virConnect, path: str) -> libvirt.virStorageVol | None:
    """The volume at ``path`` in any pool, or None."""
    with errors.ignoring(errors.is_missing_volume):
        return conn.storageVolLookupByPath(path)
    return None


def pool_of_directory(conn: libvirt.virConnect, directory: str) -> libvirt.virStoragePool | None:
    """The active pool whose target directory is ``directory``, or None."""
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        target = parse_xml(pool.XMLDesc(0)).findtext("target/path") or ""
        if target and posixpath.normpath(target) == directory:
            return pool
    return None


def find(conn: libvirt.virConnect, ref: str, default_pool: libvirt.virStoragePool) -> libvirt.virStorageVol | None:
    """A volume named ``pool/volume``, by absolute path, or by name in
    ``default_pool``; None when there is none."""
    if ref.startswith("/"):
        found = at_path(conn, ref)
        if found is not None:
            return found
        # A file copied into a pool directory behind libvirt's back: refresh
        # the one pool whose directory holds it, once.
        pool = pool_of_directory(conn, posixpath.dirname(posixpath.normpath(ref)))
        if pool is None:
            return None
        with errors.best_effort(f"refresh storage pool {pool.name()!r}"):
            pool.refresh(0)
        return at_path(conn, ref)
    if "/" in ref:
        pool_name, _, vol_name = ref.partition("/")
        pool = None
        with errors.ignoring(errors.is_missing_pool):
            pool = conn.storagePoolLookupByName(pool_name)
        return None if pool is None else lookup(pool, vol_name)
    return lookup(default_pool, ref)


def volume_xml(
    name: str,
    capacity: int,
    fmt: str,
    *,
    backing: VolumeInfo | None = None,
    preallocate: bool = False,
) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = str(capacity if preallocate else 0)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    if backing is not None:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing.path
        ET.SubElement(store, "format", type=backing.format)
    return ET.tostring(vol, encoding="unicode")


def create_blank(
    pool: libvirt.virStoragePool, name: str, capacity: int, fmt: str, preallocate: bool = False
) -> libvirt.virStorageVol:
    flags = libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA if preallocate and fmt == "qcow2" else 0
    return pool.createXML(volume_xml(name, capacity, fmt, preallocate=preallocate), flags)


def create_overlay(pool: libvirt.virStoragePool, name: str, base: VolumeInfo, capacity: int = 0) -> libvirt.virStorageVol:
    """A qcow2 volume whose backing file is ``base`` (copy-on-write)."""
    return pool.createXML(volume_xml(name, max(capacity, base.capacity), "qcow2", backing=base), 0)


def copy(
    pool: libvirt.virStoragePool, name: str, source: libvirt.virStorageVol, fmt: str, capacity: int = 0
) -> libvirt.virStorageVol:
    """A full, independent copy of ``source`` (flattened: no backing file),
    grown to ``capacity`` when that is larger."""
    info = describe(source)
    vol = pool.createXMLFrom(volume_xml(name, info.capacity, fmt), source, 0)
    if capacity > info.capacity:
        grow(vol, capacity)
    return vol


def grow(vol: libvirt.virStorageVol, capacity: int) -> None:
    """Resize a volume just made; delete it when that fails."""
    try:
        vol.resize(capacity, 0)
    except BaseException:
        delete(vol)
        raise


def delete(vol: libvirt.virStorageVol) -> None:
    """Delete a volume; one already gone is fine."""
    with errors.ignoring(errors.is_missing_volume):
        vol.delete(0)
