"""What ExportDisk converts: a disk of the VM as it is now, or as one of its
snapshots holds it.

A disk as it is now is its volume in the VM's config, read from where
``pvesm path`` puts it. A snapshot must be in the VM's snapshot list
(NOT_FOUND otherwise) and complete (no ``snapstate``); its disks are those
of the snapshot's config (a disk added since is not in it, one removed since
still is). Proxmox reads a volume at a snapshot the way its storage keeps
snapshots (pve-storage's ``path($volid, $snapname)`` and qemu-server's
``qemu_img_convert``), and so does the provider, from the path ``pvesm
path`` gives for the volume and the storage's configuration
(its entry in ``GET /storage``):

- qcow2 on dir, nfs, cifs, btrfs, glusterfs: the same file, with
  ``qemu-img -l snapshot.name=S`` (an internal qcow2 snapshot);
- qcow2 on dir, nfs, cifs with ``snapshot-as-volume-chain``: the file
  ``snap-S-<name>`` beside the volume (the chain's layer S, over those
  below it);
- raw on btrfs: ``<dir>@S/disk.raw``, the read-only subvolume snapshot;
- rbd without ``krbd``: ``rbd:<pool>/<image>@S:<options>``.

LVM-thin and RBD with ``krbd`` keep a snapshot where the node's shell could
read it only once it is made visible there (LVM-thin: activating the
snapshot's logical volume, ``lvchange -ay -K``; ``krbd``: mapping the
snapshot), which changes the node's state for the export's sake. Proxmox
itself copies a volume of theirs at a snapshot for a full clone (pve-storage's
``volume_has_feature``: ``copy`` from ``snap``; qemu-server's ``clone_disk``
activates the snapshot, ``qemu_img_convert``s it and deactivates it again).
So the provider has Proxmox make a temporary full clone of the VM at the
snapshot (:func:`.cloning.at_snapshot`: on the VM's node, its disks on the
disk's storage) and reads the clone's disk of the same config key as it is
now: a volume of the same storage, active on the node as Proxmox keeps new
volumes. The clone API copies every disk of the snapshot (it has no choice
of disks), so this costs a copy of all of them, which the log says; the
clone is destroyed with purge however the export ends (:func:`opened`).

Other storages are refused with FAILED_PRECONDITION: export with the VM
stopped and without a snapshot. ZFS stays refused for good: Proxmox itself
copies no volume at a ZFS snapshot (pve-storage's ZFSPoolPlugin and ZFSPlugin
``volume_has_feature`` offer ``copy`` of the current volume only), ``zfs
send`` gives a ZFS stream and no disk image, and the device
``/dev/zvol/<pool>/<name>@S`` exists only while the dataset's ``snapdev``
property is ``visible``, a property of the operator's that the provider does
not change. LVM (thick) copies at a snapshot only qcow2 volumes, which the
provider does not tell from raw ones yet; raw files on a directory have no
snapshots.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from provider_core import FailedPrecondition, NotFound

from . import cloning, disks, snapshots
from .inventory import Cluster, VmState
from .vmconfig import GIB, Drive, data_disks

log = logging.getLogger(__name__)

#: Storage types keeping disk images as files of a directory (pve-storage's
#: Plugin.pm filesystem_path): qcow2 snapshots are internal to the file.
FILE_STORAGES = ("dir", "nfs", "cifs", "btrfs", "glusterfs")
#: File storages that may keep qcow2 snapshots as a chain of files instead.
CHAIN_STORAGES = ("dir", "nfs", "cifs")
#: Volume formats by file name extension; block storages hold raw volumes.
FORMATS = ("raw", "qcow2", "vmdk")

AT_SNAPSHOT = "export with the VM stopped and without a snapshot (VMMigration: createSnapshot false)"
ZFS_SNAPSHOTS = (
    "Proxmox copies no ZFS snapshot itself, and its zvol device appears only with the dataset's property"
    " snapdev=visible, which the provider does not change"
)
#: Why a storage type's snapshots are not read, where more can be said.
WHY_NOT = dict.fromkeys(("zfspool", "zfs"), ZFS_SNAPSHOTS)


@dataclass(frozen=True)
class Source:
    """A disk to convert: its drive, and how its volume reads at the
    snapshot (``how``: "" for the volume as it is now)."""

    drive: Drive
    snapshot: str = ""
    how: str = ""
    format: str = ""
    #: The disks a temporary clone copies (``how`` "clone"): all of the snapshot's.
    copies: tuple[Drive, ...] = ()
    #: The storage's type, for what is said about it.
    kind: str = ""

    def args(self, path: str) -> list[str]:
        """``qemu-img convert``'s source arguments, from the path ``pvesm
        path`` gives for the volume."""
        snap = self.snapshot
        fmt = ["-f", self.format] if self.format else []
        if self.how == "internal":
            return [*fmt, "-l", f"snapshot.name={snap}", path]
        if self.how == "chain":
            folder, name = posixpath.split(path)
            return [*fmt, posixpath.join(folder, f"snap-{snap}-{name}")]
        if self.how == "btrfs":  # <dir>/disk.raw -> <dir>@S/disk.raw
            folder, name = posixpath.split(path)
            return [*fmt, posixpath.join(f"{folder}@{snap}", name)]
        if self.how == "rbd":  # rbd:<pool>/<image>[:options] -> rbd:<pool>/<image>@S[:options]
            image, colon, options = path.removeprefix("rbd:").partition(":")
            return [*fmt, f"rbd:{image}@{snap}{colon}{options}"]
        return [*fmt, path]


def resolve(cluster: Cluster, ref: VmState, disk_id: str, snapshot_id: str) -> Source:
    """The disk ``disk_id`` (empty: the boot disk) of the VM now, or at
    ``snapshot_id``."""
    client = cluster.client
    if not snapshot_id:
        return Source(disks.drive_of(client.get(f"{ref.path}/config"), disk_id))
    snap = snapshots.find(cluster, ref, snapshot_id)
    if snap.get("snapstate"):
        raise FailedPrecondition(
            f"snapshot {snapshot_id!r} of VM {ref.vmid} is incomplete (snapstate {snap['snapstate']}); delete it and take another"
        )
    config: dict[str, Any] = client.get(f"{ref.path}/snapshot/{snapshot_id}/config")
    try:
        drive = disks.drive_of(config, disk_id)
    except NotFound as exc:
        raise NotFound(f"snapshot {snapshot_id!r} of VM {ref.vmid}: {exc.message}") from None
    if not drive.storage:
        raise FailedPrecondition(f"disk {drive.key} of VM {ref.vmid} is no storage's volume ({drive.volume}): {AT_SNAPSHOT}")
    listed: list[dict[str, Any]] = client.get("storage") or []  # reading one storage's entry needs Datastore.Allocate
    storage = next((e for e in listed if e.get("storage") == drive.storage), None)
    if storage is None:
        raise FailedPrecondition(
            f"storage {drive.storage!r} of disk {drive.key} is not in the storage list: reading a snapshot needs its type,"
            f" which needs Datastore.Audit or Datastore.AllocateSpace on /storage/{drive.storage}"
        )
    kind = str(storage.get("type", ""))
    fmt = volume_format(drive.volume, kind)
    how = _how(kind, fmt, storage)
    if not how:
        what = f"a {fmt} volume" if fmt else "a volume"
        why = f" ({WHY_NOT[kind]})" if kind in WHY_NOT else ""
        raise FailedPrecondition(
            f"disk {drive.key} of VM {ref.vmid} is {what} on storage {drive.storage!r} of type {kind or 'unknown'},"
            f" whose snapshots the provider cannot read from the node's shell{why}: {AT_SNAPSHOT}"
        )
    return Source(drive, snapshot_id, how, fmt, tuple(data_disks(config)) if how == "clone" else (), kind)


@contextmanager
def opened(cluster: Cluster, ref: VmState, source: Source) -> Iterator[Source]:
    """The source as the node's shell reads it: the source itself, or (for
    a snapshot only Proxmox copies) the same disk of a temporary full clone
    at the snapshot, as it is now; the clone is destroyed when the block
    ends."""
    if source.how != "clone":
        yield source
        return
    drive = source.drive
    size = sum(d.size_bytes for d in source.copies) / GIB
    log.info(
        "VM %d: %s is on %s storage %r, whose snapshots only Proxmox reads: it copies snapshot %r in a temporary full"
        " clone, all %d disk(s) of it (%.1f GiB) onto %r, and the clone's %s is exported",
        ref.vmid,
        drive.key,
        source.kind,
        drive.storage,
        source.snapshot,
        len(source.copies),
        size,
        drive.storage,
        drive.key,
    )
    with cloning.at_snapshot(cluster, ref, source.snapshot, drive.storage) as path:
        config: dict[str, Any] = cluster.client.get(f"{path}/config")
        yield Source(disks.drive_of(config, drive.key), format=source.format)


def volume_format(volume: str, kind: str) -> str:
    """The format of a volume as pve-storage's ``parse_volname`` has it:
    a file's name extension, raw on block storages; "" when unknown."""
    if kind in FILE_STORAGES:
        ext = posixpath.splitext(volume)[1].lstrip(".")
        return ext if ext in FORMATS else ""
    return "raw" if kind in ("rbd", "lvm", "lvmthin", "zfspool", "zfs", "iscsi", "iscsidirect") else ""


def _how(kind: str, fmt: str, storage: dict[str, Any]) -> str:
    if kind in FILE_STORAGES and fmt == "qcow2":
        return "chain" if kind in CHAIN_STORAGES and _true(storage.get("snapshot-as-volume-chain")) else "internal"
    if kind == "btrfs" and fmt == "raw":
        return "btrfs"
    if kind == "rbd" and not _true(storage.get("krbd")):
        return "rbd"
    if kind in ("lvmthin", "rbd"):  # the snapshot must be activated or mapped: Proxmox copies it
        return "clone"
    return ""


def _true(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


__all__ = ["Source", "opened", "resolve", "volume_format"]
