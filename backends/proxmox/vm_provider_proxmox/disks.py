"""GetDiskInfo and HardwareUpgrade.

GetDiskInfo reads the disk from the VM's configuration (or a snapshot's),
and its volume from the storage's content list: format, virtual size,
allocated size where the storage reports it (``used``; 0 when it does not),
the base volume of a linked clone (``parent``), and the VM's snapshots
(Proxmox snapshots are per VM and cover every disk). The disk id is the
config key (``scsi0``, ``virtio1``, ...) or the volume id; empty means the
boot disk.

HardwareUpgrade: ``target_version`` is the major version of QEMU's machine
type. The VM keeps its family (q35 or i440fx) and gets the newest
``pc-<family>-<target>.<minor>`` machine the node offers
(``/nodes/{node}/capabilities/qemu/machines``); when the node does not list
its machines, ``pc-<family>-<target>.0``. Target 0 means the newest the node
offers (or, unlisted, the unpinned family: the newest at every start). The
VM must be stopped; a target older than the VM's pinned version is refused,
the same one is a no-op.
"""

from __future__ import annotations

import re
from typing import Any

from provider_core import DiskDetails, FailedPrecondition, InvalidArgument, NotFound, Outcome

from .inventory import Cluster
from .snapshots import names as snapshot_names
from .vmconfig import Drive, boot_order, data_disks, parse_options, primary_disk

BASE_RE = re.compile(r"^(?:\d+/)?(base-\d+-disk-\d+(?:\.\w+)?)/")
MACHINE_RE = re.compile(r"^pc-(q35|i440fx)-(\d+)\.(\d+)(?:\+pve(\d+))?$")
#: Machine versions accepted when the node does not list its own.
FALLBACK_VERSIONS = range(2, 31)


def drive_of(config: dict[str, Any], disk_id: str) -> Drive:
    if not disk_id:
        disk = primary_disk(config)
        if disk is None:
            raise NotFound("the VM has no disk")
        return disk
    for d in data_disks(config):
        if disk_id in (d.key, d.volume):
            return d
    raise NotFound(f"the VM has no disk {disk_id!r} (use a config key such as scsi0, or a volume id)")


def disk_info(cluster: Cluster, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
    client = cluster.client
    ref = cluster.find(vm_id)
    snapshots = snapshot_names(cluster, ref)
    if snapshot_id:
        if snapshot_id not in snapshots:
            raise NotFound(f"VM {ref.vmid} has no snapshot {snapshot_id!r}")
        config: dict[str, Any] = client.get(f"{ref.path}/snapshot/{snapshot_id}/config")
    else:
        config = client.get(f"{ref.path}/config", current=1)
    drive = drive_of(config, disk_id)
    if not snapshot_id:
        boot = primary_disk(config)
        cluster.learn_boot_disk(ref.vmid, boot.key if boot else None)
    entry: dict[str, Any] = {}
    if drive.storage:
        content: list[dict[str, Any]] = client.get(f"nodes/{ref.node}/storage/{drive.storage}/content", vmid=ref.vmid) or []
        entry = next((e for e in content if e.get("volid") == drive.volume), {})
    order = boot_order(config)
    parent = str(entry.get("parent", "") or "") or _base_volume(drive.volume)
    metadata = {"node": ref.node, "key": drive.key, "storage": drive.storage, "volid": drive.volume}
    metadata.update({k: v for k, v in drive.options.items() if k != "size"})
    return DiskDetails(
        disk_id=drive.key,
        format=str(entry.get("format") or drive.options.get("format") or "raw"),
        virtual_size_bytes=drive.size_bytes or int(entry.get("size", 0) or 0),
        actual_size_bytes=int(entry.get("used", 0) or 0),
        path=drive.volume,
        is_bootable=drive.key in order if order else drive.key == (primary_disk(config) or drive).key,
        snapshots=snapshots,
        backing_file=f"{drive.storage}:{parent}" if parent and ":" not in parent else parent,
        metadata={k: str(v) for k, v in metadata.items()},
    )


def _base_volume(volid: str) -> str:
    """The base (template) volume a linked clone's volume name carries on
    storages that encode it (dir, NFS, ZFS, RBD: ``base-9000-disk-0/vm-101-disk-0``)."""
    storage, _, name = volid.partition(":")
    m = BASE_RE.match(name)
    return f"{storage}:{m.group(1)}" if m else ""


def _family(machine: str) -> tuple[str, tuple[int, int] | None]:
    m = MACHINE_RE.match(machine)
    if m:
        return m.group(1), (int(m.group(2)), int(m.group(3)))
    if machine.startswith("q35") or machine.startswith("pc-q35"):
        return "q35", None
    return "i440fx", None


def _target_machine(cluster: Cluster, node: str, family: str, target: int) -> str:
    """The machine type for ``target`` (0: the newest; unpinned when the
    node does not list its machines, which means the newest at every start)."""
    entries: Any = cluster.client.get(f"nodes/{node}/capabilities/qemu/machines") or []
    listed: list[tuple[int, int, int, str]] = []
    for e in entries if isinstance(entries, list) else []:
        m = MACHINE_RE.match(str(e.get("id", "")))
        if m and m.group(1) == family:
            listed.append((int(m.group(2)), int(m.group(3)), int(m.group(4) or 0), m.group(0)))
    if target == 0:
        return max(listed)[3] if listed else ("q35" if family == "q35" else "pc")
    if listed:
        fits = sorted(v for v in listed if v[0] == target)
        if not fits:
            majors = sorted({v[0] for v in listed})
            raise InvalidArgument.field(
                "target_version", f"node {node} offers {family} machine versions {majors[0]} to {majors[-1]}, not {target}"
            )
        return fits[-1][3]
    if target not in FALLBACK_VERSIONS:
        raise InvalidArgument.field(
            "target_version", f"is the QEMU machine version, {FALLBACK_VERSIONS[0]} to {FALLBACK_VERSIONS[-1]}"
        )
    return f"pc-{family}-{target}.0"


def hardware_upgrade(cluster: Cluster, vm_id: str, target_version: int) -> Outcome[None]:
    client = cluster.client
    ref = cluster.state(vm_id)
    if ref.running:
        raise FailedPrecondition(
            f"HardwareUpgrade needs a stopped VM; VM {ref.vmid} is {ref.qmpstatus or ref.status}: power it off first"
        )
    config: dict[str, Any] = client.get(f"{ref.path}/config", current=1)
    head, options = parse_options(str(config.get("machine", "")))
    if "type" in options:  # machine: type=...,viommu=...
        head = options.pop("type")
    family, current = _family(head)
    if target_version and current is not None and current[0] > target_version:
        raise InvalidArgument.field(
            "target_version", f"VM {ref.vmid} already runs machine {head}; {target_version} would be a downgrade"
        )
    if current is not None and current[0] == target_version:
        return Outcome.done(None)
    machine = _target_machine(cluster, ref.node, family, target_version)
    if machine == head:
        return Outcome.done(None)
    rest = "".join(f",{k}={v}" for k, v in options.items())
    client.put(f"{ref.path}/config", machine=machine + rest)
    return Outcome.done(None)
