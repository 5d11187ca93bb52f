"""Delete: power off, remove the VM's own volumes, undefine.

A domain carrying our mark loses exactly the volumes the mark lists: root
and data disks, the cloud-init ISO, and frozen bases of linked clones once
nothing is backed by them any more. A template or image the VM was made
from is never touched.

A domain without our mark (deleted only when the server's
``manage_foreign_vms`` lets the core call this) loses its definition and
those of its disks that are surely its alone: a writable disk (not a
CD-ROM, not ``<readonly/>`` or ``<shareable/>``) that is a volume of a
storage pool only this host sees (dir, fs, logical, disk, zfs), that no
other domain of the host uses and that backs no other volume. A volume is
known by its libvirt key, whatever names it: a path, a symbolic link to it
(on a local connection), ``<source pool volume>``, a backing file. Volumes
of pools other hosts may share (NFS, Gluster, RBD, iSCSI, ...) always stay,
since their other users are out of this host's sight; so do files outside
any pool, block devices outside any pool and network disks. When the check
cannot be completed (a domain's XML or a pool's volumes cannot be read, a
path another domain names cannot be told apart from these volumes), every
disk stays. Which disks stayed, and why, is logged.

The definition goes before the volumes: a definition the daemon will not
drop (an older daemon refusing a flag is retried without it) leaves the VM
whole, never defined without its disks. A volume that fails to go after
that is logged by name and left while the others still go, and Delete
reports the failure (a repeated Delete finds no VM: the core turns its
NotFound into success). Snapshot metadata, managed save images,
NVRAM and TPM state go with the definition.
"""

from __future__ import annotations

import functools
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from provider_core import Outcome

from . import domxml, errors, marks, storage
from .marks import Mark, VolumeRef
from .session import Session

log = logging.getLogger(__name__)

#: Flags of undefine that newer daemons know, newest first: libvirt-python
#: builds its constants from the API of the libvirt it was built against
#: (TPM came with 8.9, checkpoints with 5.6), and an older daemon refuses a
#: flag it does not know, so each is dropped in turn when refused.
NEWER_UNDEFINE_FLAGS = tuple(
    flag
    for flag in (
        getattr(libvirt, "VIR_DOMAIN_UNDEFINE_TPM", 0),
        getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0),
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    )
    if flag
)
#: What every driver that has snapshots accepts (the test driver refuses
#: the NVRAM, TPM and checkpoint flags).
UNDEFINE_BASIC = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
UNDEFINE_ALL = UNDEFINE_BASIC
for _flag in NEWER_UNDEFINE_FLAGS:
    UNDEFINE_ALL |= _flag


def delete(session: Session, vm_id: str) -> Outcome[None]:
    """Stop the VM, undefine it, then remove its disks: a definition that
    cannot go (an older daemon, NVRAM it will not drop) leaves the VM whole,
    never a VM without its disks. Volumes that fail to go after that are
    logged by name."""
    dom = session.lookup(vm_id)
    name = dom.name()
    with session.translated(f"deleting VM {name!r}"):
        root = domxml.parse(dom.XMLDesc(0))
        mark = marks.read(root)
        if dom.isActive():
            with errors.ignoring(errors.is_invalid_in_state):  # went off meanwhile
                dom.destroy()
        if dom.isPersistent():
            undefine(dom)
        try:
            if mark is not None:
                delete_volumes(session, mark)
            else:
                delete_foreign_disks(session, dom, root)
        except libvirt.libvirtError as exc:
            left = ", ".join(domxml.source_path(el) for el in root.findall("devices/disk")) or "none"
            log.warning("VM %s is undefined but some of its disks could not be removed (%s): %s", name, left, exc)
            raise
    log.info("deleted VM %s", name)
    return Outcome.done(None)


def undefine(dom: libvirt.virDomain) -> None:
    """Undefine with snapshot metadata, managed save, NVRAM, TPM state and
    checkpoints, dropping the newest flags an older daemon refuses."""
    flags = UNDEFINE_ALL
    for newer in (*NEWER_UNDEFINE_FLAGS, 0):
        try:
            dom.undefineFlags(flags)
            return
        except libvirt.libvirtError as exc:
            if not newer or not errors.is_flag_refused(exc):
                raise
        flags &= ~newer


def delete_volumes(session: Session, mark: Mark) -> None:
    """Delete the volumes the mark lists; shared bases only when unused.
    A volume that fails to go is logged by name and the others still go;
    the first failure is raised at the end. Their pool is listed once (for
    the records of their sources), not once per volume."""
    failures: list[libvirt.libvirtError] = []
    deleter = storage.Deleter()

    def attempt(ref: VolumeRef, remove: Callable[[], None]) -> None:
        try:
            remove()
        except libvirt.libvirtError as exc:
            log.warning("could not remove volume %s/%s: %s", ref.pool, ref.name, exc.get_error_message())
            failures.append(exc)

    for ref in mark.volumes:
        if ref.role != "base":
            attempt(ref, functools.partial(_delete_ref, session, ref, deleter))
    chains = BackingChains(session.conn())
    for ref in mark.volumes:
        if ref.role == "base":
            attempt(ref, functools.partial(delete_base_if_unused, session, ref, chains, deleter))
    if failures:
        raise failures[0]


def _delete_ref(session: Session, ref: VolumeRef, deleter: storage.Deleter) -> None:
    vol = _volume(session, ref)
    if vol is not None:
        deleter.delete(vol)


#: Pool types whose volumes only this host uses; other pools (netfs,
#: gluster, rbd, iscsi, scsi, mpath, ...) may be shared with other hosts.
LOCAL_POOLS = frozenset({"dir", "fs", "logical", "disk", "zfs"})


class _Doubt(Exception):
    """The check whether a volume is used elsewhere could not be completed."""


@dataclass(frozen=True)
class _Candidate:
    """A disk of the deleted domain that may be removed with it."""

    label: str
    vol: libvirt.virStorageVol
    key: str


def delete_foreign_disks(session: Session, dom: libvirt.virDomain, root: ET.Element) -> None:
    """The disks of a domain we did not make that are surely its alone
    (see the module's docstring); the others are kept and named in the log.

    Cost: one listing of the host's domains with one XML read each (two for
    a running one), one listing of the active pools with one XML read per
    volume, one volume lookup per distinct disk or backing path, and one
    more listing of each pool a removed disk was in (the records of their
    sources, :class:`~.storage.Deleter`)."""
    resolver = _Resolver(session.conn(), session.is_local())
    kept: list[str] = []
    candidates: list[_Candidate] = []
    for el in root.findall("devices/disk"):
        found = _candidate(resolver, el)
        if isinstance(found, str):
            kept.append(found)
        else:
            candidates.append(found)
    doomed: list[libvirt.virStorageVol] = []
    if candidates:
        try:
            used = _used_elsewhere(session, resolver, dom.UUIDString(), candidates)
        except _Doubt as doubt:
            kept.extend(f"{c.label} ({doubt})" for c in candidates)
        else:
            for c in candidates:
                if c.key in used:
                    kept.append(f"{c.label} ({used[c.key]})")
                else:
                    doomed.append(c.vol)
    deleter = storage.Deleter()
    for vol in doomed:
        deleter.delete(vol)
    if kept:
        log.info("deleting VM %s, not made by vm-provider: kept its disks %s", dom.name(), "; ".join(kept))


def _candidate(resolver: _Resolver, el: ET.Element) -> _Candidate | str:
    """A disk of the deleted domain as a candidate for removal, or why it stays."""
    label = _label(el)
    device = el.get("device", "disk")
    if device != "disk":
        return f"{label} (a {device})"
    if el.find("readonly") is not None or el.find("shareable") is not None:
        return f"{label} (read-only or shareable)"
    vol = resolver.volume(el)
    if vol is None:
        return f"{label} (not a volume of an active storage pool)"
    kind = _pool_type(vol)
    if kind not in LOCAL_POOLS:
        return f"{label} (a volume of a {kind or 'unknown'} pool, which other hosts may use)"
    return _Candidate(label, vol, vol.key())


def _used_elsewhere(session: Session, resolver: _Resolver, uuid: str, candidates: list[_Candidate]) -> dict[str, str]:
    """Which candidates' keys another domain or volume uses, and how.
    Raises _Doubt when that cannot be told for sure."""
    resolver.watch(candidates)
    used: dict[str, str] = {}
    conn = session.conn()
    _users_among_domains(conn, resolver, uuid, used)
    _users_among_volumes(conn, resolver, used)
    return used


def _users_among_domains(conn: libvirt.virConnect, resolver: _Resolver, uuid: str, used: dict[str, str]) -> None:
    """Note in ``used`` the volumes the disks of the other domains name,
    with the backing chains their XML shows."""
    for other in conn.listAllDomains(0):
        name = other.name()
        if other.UUIDString() == uuid:
            continue
        xmls: list[str] = []
        try:
            xmls.append(other.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if other.isActive():
                xmls.append(other.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if errors.is_missing_domain(exc):  # undefined since the listing
                continue
            raise _Doubt(f"the XML of domain {name!r} could not be read: {exc.get_error_message()}") from exc
        for text in xmls:
            for el in domxml.parse(text).findall("devices/disk"):
                layers, open_end = _chain(el)
                key = ""
                for kind, source in layers:
                    key = resolver.key_of(kind, source, f"domain {name!r}")
                    if key:
                        used.setdefault(key, f"domain {name!r} uses it")
                if open_end and not key:  # an active pool's volume's backing file is seen below, any other's is not
                    raise _Doubt(f"domain {name!r} has an image outside any active pool whose backing file is not known")


def _users_among_volumes(conn: libvirt.virConnect, resolver: _Resolver, used: dict[str, str]) -> None:
    """Note in ``used`` the volumes that back a volume of any active pool."""
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            vols = pool.listAllVolumes(0)
        except libvirt.libvirtError as exc:
            raise _Doubt(f"the volumes of pool {pool.name()!r} could not be listed: {exc.get_error_message()}") from exc
        for vol in vols:
            try:
                backing = domxml.parse(vol.XMLDesc(0)).findtext("backingStore/path") or ""
            except libvirt.libvirtError as exc:
                if errors.is_missing_volume(exc):  # deleted since the listing
                    continue
                raise _Doubt(f"volume {pool.name()}/{vol.name()} could not be read: {exc.get_error_message()}") from exc
            key = resolver.key_at(backing) if backing else ""
            if key:
                used.setdefault(key, f"it backs {pool.name()}/{vol.name()}")


def _chain(disk: ET.Element) -> tuple[list[tuple[str, ET.Element]], bool]:
    """A domain disk and the backing chain its XML shows, as ``(type,
    <source>)`` layers, and whether the chain may go on unseen: its last
    layer is a file, block device or volume in an image format (qcow2, ...)
    and the XML does not say where its backing chain ends."""
    layers: list[tuple[str, ET.Element]] = []
    layer, fmt = disk, disk.find("driver")
    while True:
        source = layer.find("source")
        if source is None:
            return layers, False  # no medium, or <backingStore/>: the chain ends
        kind = layer.get("type", "file")
        layers.append((kind, source))
        nxt = layer.find("backingStore")
        if nxt is None:
            form = (fmt.get("type", "") if fmt is not None else "") or "raw"
            return layers, form != "raw" and kind in ("file", "block", "volume")
        layer, fmt = nxt, nxt.find("format")


class _Resolver:
    """Disk sources and paths to libvirt volume keys (remembered per path)."""

    def __init__(self, conn: libvirt.virConnect, local: bool) -> None:
        self.conn = conn
        self.local = local
        self._keys: dict[str, str] = {}
        self._watched: dict[tuple[int, int], str] = {}

    def watch(self, candidates: list[_Candidate]) -> None:
        """On a local connection, know the candidates' files by inode too,
        so that any other name of them (a hard link, a path through a
        linked directory) matches."""
        if self.local:
            for c in candidates:
                ident = _identity(c.vol.path())
                if ident is not None:
                    self._watched[ident] = c.key

    def volume(self, disk: ET.Element) -> libvirt.virStorageVol | None:
        """The pool volume a domain ``<disk>`` names, or None."""
        source = disk.find("source")
        if source is None:
            return None
        kind = disk.get("type", "file")
        if kind == "volume":
            return self._pool_volume(source.get("pool", ""), source.get("volume", ""))
        path = _source_path(kind, source)
        return self._at(path) if path else None

    def key_of(self, kind: str, source: ET.Element, user: str) -> str:
        """The volume key of one layer of another domain's disk; "" when it
        is no pool volume and surely none of the watched ones; _Doubt when
        that is unknown."""
        if kind == "volume":
            vol = self._pool_volume(source.get("pool", ""), source.get("volume", ""))
            return vol.key() if vol is not None else ""
        path = _source_path(kind, source)
        if not path:
            return ""
        key = self.key_at(path)
        if key or kind not in ("file", "block"):
            return key
        if not self.local:
            raise _Doubt(f"{user} names {path}, outside any pool, which could be another name of it on the remote host")
        return ""

    def key_at(self, path: str) -> str:
        """The key of the volume at ``path`` (or, on a local connection, at
        the file it links to, or of a watched volume that is the same
        file); "" when there is none."""
        if path not in self._keys:
            vol = self._at(path)
            key = vol.key() if vol is not None else ""
            if not key and self.local:
                ident = _identity(path)
                key = self._watched.get(ident, "") if ident is not None else ""
            self._keys[path] = key
        return self._keys[path]

    def _at(self, path: str) -> libvirt.virStorageVol | None:
        vol = storage.at_path(self.conn, path)
        if vol is None and self.local and path.startswith("/"):
            real = os.path.realpath(path)
            if real != path:
                vol = storage.at_path(self.conn, real)
        return vol

    def _pool_volume(self, pool_name: str, name: str) -> libvirt.virStorageVol | None:
        pool = None
        with errors.ignoring(errors.is_missing_pool):
            pool = self.conn.storagePoolLookupByName(pool_name)
        if pool is None or not pool.isActive():
            return None
        return storage.lookup(pool, name)


def _source_path(kind: str, source: ET.Element) -> str:
    """The path of a ``<source>``: a file, a block device, or a network
    disk's ``name`` (an RBD pool's ``pool/image`` is its volume's path)."""
    if kind == "file":
        return source.get("file", "")
    if kind == "block":
        return source.get("dev", "")
    if kind == "network":
        return source.get("name", "")
    return ""


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pool_type(vol: libvirt.virStorageVol) -> str:
    return storage.pool_type(vol.storagePoolLookupByVolume())


def _label(disk: ET.Element) -> str:
    target = disk.find("target")
    dev = target.get("dev", "") if target is not None else ""
    return f"{dev} {domxml.source_path(disk)}".strip()


def delete_base_if_unused(session: Session, ref: VolumeRef, chains: BackingChains, deleter: storage.Deleter) -> None:
    """Delete a frozen base of linked clones when no domain's disk is backed
    by it any more (through any number of layers)."""
    vol = _volume(session, ref)
    if vol is None:
        return
    try:
        user = chains.user_of(vol.path())
    except libvirt.libvirtError as exc:
        log.warning("keeping base volume %s/%s: its users could not be told (%s)", ref.pool, ref.name, exc.get_error_message())
        return
    if user:
        log.info("keeping base volume %s/%s: %s is backed by it", ref.pool, ref.name, user)
        return
    deleter.delete(vol)


class BackingChains:
    """The backing chains of the disks of every domain of the host, read
    from each domain's XML and, layer by layer, from the XML of the volumes
    in those chains (each read once): which domain a base volume still
    backs, without reading every volume of its pool. A volume backed by the
    base that no domain uses (an overlay made by hand) is out of its sight.

    Where a chain cannot be followed to its end, the base is taken to be in
    use: a layer in an image format (qcow2, ...) that is no pool volume (an
    overlay made by ``virsh snapshot-create --disk-only``, a file outside
    any pool) unless the domain's XML says where its chain goes, or a chain
    deeper than :attr:`MAX_DEPTH` layers."""

    #: Layers followed before the rest of a chain is taken to reach the base.
    MAX_DEPTH = 64

    def __init__(self, conn: libvirt.virConnect) -> None:
        self.conn = conn
        self._disks: list[tuple[str, str, bool]] | None = None
        self._backing: dict[str, tuple[str, bool] | None] = {}

    def user_of(self, path: str) -> str:
        """``domain 'name'`` whose disk ``path`` backs (or is), or may back;
        "" when surely none."""
        for name, disk, open_end in self._domain_disks():
            layer, more = disk, open_end
            for _ in range(self.MAX_DEPTH):
                if layer == path:
                    return f"domain {name!r}"
                nxt = self._backing_of(layer)
                if nxt is None:  # no pool volume: its chain is out of sight
                    if more:
                        return f"domain {name!r} (maybe: its disk {layer} is no pool volume, its backing chain unknown)"
                    break
                layer, more = nxt
                if not layer:
                    break
            else:
                return f"domain {name!r} (maybe: its disk {disk} has more than {self.MAX_DEPTH} layers)"
        return ""

    def _domain_disks(self) -> list[tuple[str, str, bool]]:
        """(domain name, path of the last layer its XML shows, whether that
        layer may have a backing file) of every disk of every domain; a disk
        given as ``<source pool volume>`` by its volume's path."""
        if self._disks is None:
            disks: list[tuple[str, str, bool]] = []
            for dom in self.conn.listAllDomains(0):
                with errors.ignoring(errors.is_missing_domain):  # undefined since the listing
                    name = dom.name()
                    for el in domxml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).findall("devices/disk"):
                        layers, open_end = _chain(el)
                        for i, (kind, source) in enumerate(layers):
                            path = self._layer_path(kind, source)
                            if path:
                                disks.append((name, path, open_end and i == len(layers) - 1))
            self._disks = disks
        return self._disks

    def _layer_path(self, kind: str, source: ET.Element) -> str:
        if kind == "volume":
            pool = None
            with errors.ignoring(errors.is_missing_pool):
                pool = self.conn.storagePoolLookupByName(source.get("pool", ""))
            vol = storage.lookup(pool, source.get("volume", "")) if pool is not None and pool.isActive() else None
            return str(vol.path()) if vol is not None else ""
        return _source_path(kind, source)

    def _backing_of(self, path: str) -> tuple[str, bool] | None:
        """The backing file of the volume at ``path`` and whether it may
        have one in turn ("" for none); None for a path that is no pool
        volume."""
        if path not in self._backing:
            vol = storage.at_path(self.conn, path)
            found: tuple[str, bool] | None = None
            if vol is not None:
                found = ("", False)
                with errors.ignoring(errors.is_missing_volume):  # deleted meanwhile
                    store = domxml.parse(vol.XMLDesc(0)).find("backingStore")
                    if store is not None:
                        fmt = store.find("format")
                        form = fmt.get("type", "") if fmt is not None else ""
                        found = (store.findtext("path") or "", form != "raw")
            self._backing[path] = found
        return self._backing[path]


def _volume(session: Session, ref: VolumeRef) -> libvirt.virStorageVol | None:
    pool = session.find_pool(ref.pool)
    if pool is None:
        log.warning("pool %s of volume %s is gone", ref.pool, ref.name)
        return None
    return storage.lookup(pool, ref.name)
