"""Storage pools and volumes: what a pool can do, how a volume attaches to
a domain, and making, finding and deleting volumes.

Their bytes go in and out through :mod:`.streams`. Which downloaded image
a volume holds is recorded beside it (:func:`record_source`).

:class:`PoolInfo` is the one place that reads a pool (its XML: type,
target, source hosts, name and auth) and answers what it can hold and do;
:func:`attach` the one place that says how a volume becomes a domain disk.
Both decide from what libvirt reports, never from names. What each pool
type can do is what libvirt's storage backend of that type implements
(``src/storage/storage_backend_<type>.c``: ``createVol``, ``buildVolFrom``,
``uploadVol``, ``resizeVol``), see :data:`POOL_KINDS`:

- file pools (dir, fs, netfs, vstorage) hold image files of any format, so
  qcow2 disks and overlays; everything works;
- block pools (logical, disk, zfs) hold raw block devices, attached as
  ``<disk type='block'>``; none can resize a volume; a disk pool names its
  volumes after their partitions, so VMs cannot be made there (their
  volumes are named after the VM) but its volumes attach; a logical volume must
  be fully allocated (an allocation below its capacity makes a snapshot LV
  that never grows: libvirt's formatstorage); zfs cannot copy volumes;
- network pools (rbd, gluster) hold volumes QEMU opens over the network,
  attached as ``<disk type='network'>`` with the pool's hosts and auth; RBD
  holds raw only and takes no uploads, and libvirt's copy there is none (it
  clones the same-named image of the target pool, copy-on-write); libvirt
  cannot make Gluster volumes;
- iscsi, iscsi-direct, scsi, mpath hold LUNs made outside libvirt: their
  volumes attach (block), but no volume can be made there.

All functions raise ``libvirt.libvirtError`` for the caller to translate,
except where noted.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import libvirt

from provider_core import FailedPrecondition

from . import errors
from .disksource import DiskSource, Network
from .domxml import parse as parse_xml

log = logging.getLogger(__name__)

GIB = 2**30

#: libvirt's names of volume formats that QEMU reads under another name.
#: libvirt probes the files of a pool when it refreshes it (as it does after
#: every upload) and calls a raw file holding an ISO 9660 image "iso", a
#: type QEMU does not know and a domain disk cannot have.
QEMU_FORMATS = {"iso": "raw"}


@dataclass(frozen=True)
class PoolKind:
    """What libvirt's storage backend of a pool type implements."""

    files: bool = False
    """Holds image files: any format (qcow2, overlays); else raw only."""
    images: bool = False
    """Its volumes' ``<format>`` is an image format (qcow2, raw) probed
    from their data; else it is a partition or LV type, or absent, and the
    data is read as raw."""
    create: bool = False
    """Makes new volumes (``createVol``)."""
    copy: bool = False
    """Makes a volume from another (``buildVolFrom``: ``createXMLFrom``)."""
    upload: bool = False
    """Takes bytes through a stream (``uploadVol``)."""
    resize: bool = False
    """Grows a volume (``resizeVol``)."""
    names: bool = True
    """Gives a new volume the name asked for (a disk pool names its
    volumes after their partitions: loop0p1, sda2)."""
    sparse: bool = False
    """Makes a volume of the same kind with an allocation below its
    capacity (a sparse file, a thin zvol or RBD image); where it does not,
    volumes are asked for fully allocated."""


_FILES = PoolKind(files=True, images=True, create=True, copy=True, upload=True, resize=True, sparse=True)
_LUNS = PoolKind(upload=True)

#: Pool types as libvirt's storage backends implement them (libvirt 9/10:
#: storage_backend_fs.c, _logical.c, _disk.c, _zfs.c, _rbd.c, _gluster.c,
#: _iscsi.c, _scsi.c, _mpath.c, _iscsi_direct.c, _vstorage.c). A type not
#: listed can do nothing.
POOL_KINDS: dict[str, PoolKind] = {
    "dir": _FILES,
    "fs": _FILES,
    "netfs": _FILES,
    "vstorage": _FILES,
    "logical": PoolKind(create=True, copy=True, upload=True),
    "disk": PoolKind(create=True, copy=True, upload=True, names=False),
    "zfs": PoolKind(create=True, upload=True, sparse=True),
    # RBD's createXMLFrom is no copy: it clones (rbd_clone2, copy-on-write on
    # a protected snapshot) the image of the source volume's *name* in the
    # target pool, whatever pool the source is in (storage_backend_rbd.c).
    "rbd": PoolKind(images=True, create=True, resize=True, sparse=True),
    "gluster": PoolKind(images=True),
    "iscsi": _LUNS,
    "scsi": _LUNS,
    "mpath": PoolKind(),
    "iscsi-direct": PoolKind(),
}

#: Pool types whose volumes QEMU opens over the network, by protocol.
NETWORK_PROTOCOLS = {"rbd": "rbd", "gluster": "gluster"}

#: Volume types (``<volume type>``) as the libvirt.VIR_STORAGE_VOL_* numbers.
VOLUME_KINDS = {"file": 0, "block": 1, "dir": 2, "network": 3, "netdir": 4, "ploop": 5}


@dataclass(frozen=True)
class PoolInfo:
    """A pool's facts from its XML (:func:`pool_info`)."""

    name: str
    type: str
    target: str = ""
    """target/path: a directory, /dev, /dev/<vg>, ..."""
    source_name: str = ""
    """source/name: the volume group, zpool, RBD pool or Gluster volume."""
    source_dir: str = ""
    """source/dir: the directory inside a Gluster volume."""
    network: Network | None = None
    """Protocol, hosts and auth of a network pool."""
    kind: PoolKind = field(default_factory=PoolKind)

    @classmethod
    def from_xml(cls, xml: str) -> PoolInfo:
        root = parse_xml(xml)
        kind = root.get("type", "")
        source = root.find("source")
        network = None
        if kind in NETWORK_PROTOCOLS:
            hosts = tuple((h.get("name", ""), h.get("port", "")) for h in source.findall("host")) if source is not None else ()
            auth = source.find("auth") if source is not None else None
            secret = auth.find("secret") if auth is not None else None
            network = Network(
                protocol=NETWORK_PROTOCOLS[kind],
                hosts=hosts,
                auth_username=auth.get("username", "") if auth is not None else "",
                secret_type=auth.get("type", "") if auth is not None else "",
                secret_uuid=secret.get("uuid", "") if secret is not None else "",
                secret_usage=secret.get("usage", "") if secret is not None else "",
            )
        source_dir = source.find("dir") if source is not None else None
        return cls(
            name=root.findtext("name") or "",
            type=kind,
            target=root.findtext("target/path") or "",
            source_name=(source.findtext("name") or "") if source is not None else "",
            source_dir=source_dir.get("path", "") if source_dir is not None else "",
            network=network,
            kind=POOL_KINDS.get(kind, PoolKind()),
        )

    @property
    def formats(self) -> tuple[str, ...]:
        """Volume formats the pool holds."""
        return ("qcow2", "raw") if self.kind.files else ("raw",)

    def volume_format(self, wanted: str) -> str:
        """``wanted`` where the pool holds it, else raw."""
        return wanted if wanted in self.formats else "raw"

    def allocation(self, capacity: int, preallocate: bool = False) -> int:
        """The allocation to ask a new volume of ``capacity`` for: 0 (thin)
        only where the pool makes thin volumes of the same kind."""
        return capacity if preallocate or not self.kind.sparse else 0

    def lacks(self, *abilities: str) -> str:
        """The first of ``abilities`` (:class:`PoolKind` fields) the pool
        lacks, or ""."""
        return next((a for a in abilities if not getattr(self.kind, a)), "")

    def need(self, action: str, *abilities: str) -> None:
        """FailedPrecondition (naming the pool and its type) unless the pool
        has every one of ``abilities``; ``action`` says what needed them."""
        lacking = self.lacks(*abilities)
        if lacking:
            raise FailedPrecondition(f"{action}: {CANNOT[lacking]} in pool {self.name!r} (a libvirt {self.type} pool)")


#: What a pool lacking each ability cannot do, for error messages.
CANNOT = {
    "create": "libvirt cannot make volumes",
    "names": "libvirt names volumes after their partitions (sda2), not as asked,",
    "copy": "libvirt cannot copy volumes (createXMLFrom)",
    "upload": "libvirt cannot write volume data (upload)",
    "resize": "libvirt cannot resize volumes",
}


def pool_info(pool: libvirt.virStoragePool) -> PoolInfo:
    """A pool's facts (one call)."""
    return PoolInfo.from_xml(pool.XMLDesc(0))


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    pool: str
    path: str
    format: str
    """What QEMU reads it as: raw on a pool that holds no image files."""
    capacity: int
    allocation: int
    backing_path: str = ""
    backing_format: str = ""
    kind: int = libvirt.VIR_STORAGE_VOL_FILE
    """VIR_STORAGE_VOL_FILE, _BLOCK, ..."""


def describe(vol: libvirt.virStorageVol) -> VolumeInfo:
    """A volume's facts from its and its pool's XML."""
    return describe_xml(vol.XMLDesc(0), pool_info(vol.storagePoolLookupByVolume()))


def describe_xml(xml: str, pool: PoolInfo) -> VolumeInfo:
    root = parse_xml(xml)
    fmt = root.find("target/format")
    backing = root.find("backingStore")
    backing_fmt = backing.find("format") if backing is not None else None
    stored = qemu_format(fmt.get("type", "raw") if fmt is not None else "raw")
    return VolumeInfo(
        name=root.findtext("name") or "",
        pool=pool.name,
        path=root.findtext("target/path") or "",
        # A partition's <format> names its partition type, not an image format.
        format=stored if pool.kind.images else "raw",
        capacity=_bytes(root.find("capacity")),
        allocation=_bytes(root.find("allocation")),
        backing_path=(backing.findtext("path") or "") if backing is not None else "",
        backing_format=qemu_format(backing_fmt.get("type", "")) if backing_fmt is not None else "",
        kind=VOLUME_KINDS.get(root.get("type", "file"), 0),
    )


def attach(vol: libvirt.virStorageVol) -> DiskSource:
    """How a volume becomes a domain disk (see :func:`attach_xml`)."""
    return attach_xml(vol.XMLDesc(0), pool_info(vol.storagePoolLookupByVolume()))


def attach_xml(xml: str, pool: PoolInfo) -> DiskSource:
    """How the volume (its XML) of ``pool`` becomes a domain disk: a block
    device as ``type='block'``, a network volume as ``type='network'`` with
    the pool's protocol, hosts and auth, anything else as a file.
    FailedPrecondition for what no disk can be (a directory)."""
    root = parse_xml(xml)
    name = root.findtext("name") or ""
    path = root.findtext("target/path") or ""
    kind = root.get("type", "file")
    if kind == "block":
        return DiskSource("block", path)
    if kind == "network":
        if pool.network is None:
            raise FailedPrecondition(f"volume {name!r} is a network volume of a {pool.type} pool, which has no network source")
        return DiskSource("network", _network_name(pool, name, path), pool.network)
    if kind in ("dir", "netdir"):
        raise FailedPrecondition(f"volume {name!r} of pool {pool.name!r} is a directory, not a disk")
    return DiskSource("file", path)


def _network_name(pool: PoolInfo, name: str, path: str) -> str:
    """The ``<source name>`` of a network volume: ``pool/image`` for RBD
    (its target path), ``volume/dir/file`` for Gluster (from its
    ``gluster://host/volume/dir/file`` path)."""
    if "://" in path:
        return urlsplit(path).path.lstrip("/")
    if path and not path.startswith("/"):
        return path
    prefix = "/".join(p.strip("/") for p in (pool.source_name, pool.source_dir) if p.strip("/"))
    return f"{prefix}/{name}" if prefix else name


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
    return pool_info(pool).type


def holds_files(pool: libvirt.virStoragePool) -> bool:
    """Whether the pool holds image files (qcow2, overlays)."""
    return pool_info(pool).kind.files


def path_of(pool: libvirt.virStoragePool, name: str) -> str:
    """Where volume ``name`` of a pool that holds files lies (whether it
    exists yet or not); "" for other pools."""
    info = pool_info(pool)
    if not info.kind.files or not info.target:
        return ""
    return f"{info.target.rstrip('/')}/{name}"


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
        target = pool_info(pool).target
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
    pool: PoolInfo,
    name: str,
    capacity: int,
    fmt: str,
    *,
    backing: VolumeInfo | None = None,
    preallocate: bool = False,
) -> str:
    """A new volume's XML: its format where the pool holds image files
    (other pools have their own meaning of <format>, a partition or LV
    type, and hold raw data), its allocation as the pool needs."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = str(pool.allocation(capacity, preallocate))
    target = ET.SubElement(vol, "target")
    if pool.kind.files:
        ET.SubElement(target, "format", type=fmt)
    if backing is not None:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing.path
        ET.SubElement(store, "format", type=backing.format)
    return ET.tostring(vol, encoding="unicode")


def create_blank(
    pool: libvirt.virStoragePool, name: str, capacity: int, fmt: str, preallocate: bool = False
) -> libvirt.virStorageVol:
    info = pool_info(pool)
    fmt = info.volume_format(fmt)
    flags = libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA if preallocate and fmt == "qcow2" else 0
    return pool.createXML(volume_xml(info, name, capacity, fmt, preallocate=preallocate), flags)


def create_overlay(pool: libvirt.virStoragePool, name: str, base: VolumeInfo, capacity: int = 0) -> libvirt.virStorageVol:
    """A qcow2 volume whose backing file is ``base`` (copy-on-write)."""
    info = pool_info(pool)
    return pool.createXML(volume_xml(info, name, max(capacity, base.capacity), "qcow2", backing=base), 0)


def copy(
    pool: libvirt.virStoragePool, name: str, source: libvirt.virStorageVol, fmt: str, capacity: int = 0
) -> libvirt.virStorageVol:
    """A full, independent copy of ``source`` (flattened: no backing file)
    in ``fmt`` (raw where the pool holds nothing else), made at
    ``capacity`` when that is larger: a pool that cannot resize volumes
    (logical, disk) gets it at its final size up front. A copy that
    cannot be read back or grown is deleted again."""
    info = pool_info(pool)
    src = describe(source)
    size = max(capacity, src.capacity)
    vol = pool.createXMLFrom(volume_xml(info, name, size, info.volume_format(fmt)), source, 0)
    try:
        if describe(vol).capacity < size:
            info.need(f"growing the copy {name!r} to {size} bytes", "resize")
            vol.resize(size, 0)
    except BaseException:
        with errors.best_effort(f"remove the copy {name!r}"):
            delete(vol)
        raise
    return vol


def delete(vol: libvirt.virStorageVol) -> None:
    """Delete a volume, and the record of its source (:func:`record_source`);
    one already gone is fine. Several volumes: :class:`Deleter`."""
    Deleter().delete(vol)


class Deleter:
    """Deletes volumes with the records of their sources
    (:func:`record_source`), listing a pool's records once, when the first
    volume is deleted there: a VM's disks, seed and bases cost one pool
    listing, not one each. A record made after that listing (for a new
    volume of a deleted one's name) is not among those it drops."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, list[libvirt.virStorageVol]]] = {}

    def delete(self, vol: libvirt.virStorageVol) -> None:
        """Delete ``vol``, then the record of its source; one already gone is fine."""
        with errors.ignoring(errors.is_missing_volume):
            pool = vol.storagePoolLookupByVolume()
            name = vol.name()
            vol.delete(0)
            with errors.best_effort(f"drop the source record of volume {name!r}"):
                _drop(self._records_in(pool).pop(_record_prefix(name), []))

    def _records_in(self, pool: libvirt.virStoragePool) -> dict[str, list[libvirt.virStorageVol]]:
        key = pool.UUIDString()
        if key not in self._records:
            self._records[key] = _source_records(pool)
        return self._records[key]


# -- which image a volume was stored from ------------------------------------------------

#: Names of source records start with this (see :func:`record_source`).
SOURCE_RECORD = "vmp-source-"


def _record_prefix(name: str) -> str:
    return f"{SOURCE_RECORD}{hashlib.sha256(name.encode()).hexdigest()[:24]}-"


_PREFIX_LENGTH = len(_record_prefix(""))


def _record_name(name: str, algorithm: str, checksum: str) -> str:
    return _record_prefix(name) + hashlib.sha256(f"{algorithm}:{checksum}".encode()).hexdigest()[:24]


def record_source(pool: libvirt.virStoragePool, name: str, algorithm: str, checksum: str) -> bool:
    """Record that volume ``name`` holds, complete, the image whose
    ``algorithm`` digest is ``checksum``, though its bytes may differ from
    the image's (converted to qcow2 or raw, grown): a volume
    ``vmp-source-<sha256(name)[:24]>-<sha256(algorithm:checksum)[:24]>``
    beside it (empty in a file pool, 1 MiB elsewhere). Call it only once
    the volume's data is complete: making a volume is atomic, so a
    half-written volume is never recorded. Any older record of that name is
    dropped. False where the pool cannot make a
    volume of the name asked for (a disk pool): nothing is recorded there."""
    info = pool_info(pool)
    if info.lacks("create", "names"):
        return False
    forget_source(pool, name)
    pool.createXML(volume_xml(info, _record_name(name, algorithm, checksum), 0 if info.kind.files else 2**20, "raw"), 0)
    return True


def has_source(pool: libvirt.virStoragePool, name: str, algorithm: str, checksum: str) -> bool:
    """Whether volume ``name`` was recorded as holding that image
    (:func:`record_source`)."""
    return lookup(pool, _record_name(name, algorithm, checksum)) is not None


def forget_source(pool: libvirt.virStoragePool, name: str) -> None:
    """Drop the record of volume ``name``'s source (one pool listing)."""
    _drop(_source_records(pool).get(_record_prefix(name), []))


def _source_records(pool: libvirt.virStoragePool) -> dict[str, list[libvirt.virStorageVol]]:
    """The source records of ``pool`` (one listing), by the prefix their
    volume's name gives them (:func:`_record_prefix`)."""
    found: dict[str, list[libvirt.virStorageVol]] = {}
    for vol in pool.listAllVolumes(0):
        name = vol.name()
        if name.startswith(SOURCE_RECORD):
            found.setdefault(name[:_PREFIX_LENGTH], []).append(vol)
    return found


def _drop(records: list[libvirt.virStorageVol]) -> None:
    for record in records:
        with errors.ignoring(errors.is_missing_volume):
            record.delete(0)
