"""ExportDisk of a snapshot: VirtRigaud's default migration (createSnapshot:
SnapshotCreate, ExportDisk of that snapshot, SnapshotDelete) with the API
from the simulator and the node's shell from pvenode (a real sshd and
qemu-img, a ``pvesm`` stand-in).

The simulator keeps snapshots in the VM's config only; a qcow2 volume on a
directory storage gets its snapshot from Proxmox as an internal qcow2
snapshot named after it (``qemu-img snapshot -c`` for a stopped VM, QMP
for a running one). The tests play that part on the file itself."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_datapath
from pvenode import PveNode
from test_datapath import export, fails, same_content, sha256
from vm_provider_proxmox.sources import Source, resolve
from vm_provider_proxmox.vmconfig import Drive

from provider_core.pb import provider_pb2 as pb

#: The data path's fixtures: the node's shell, staging claims, a provider using both.
node, claims, dp = test_datapath.node, test_datapath.claims, test_datapath.dp
VOLID = "cloud:100/vm-100-disk-0.qcow2"
OWNER = "vm-provider"


def make_vm(node: PveNode, pve: Any, running: bool) -> Path:
    """VM 100 (this provider's) with a 64 MiB qcow2 disk holding 8 MiB of
    0x5a on the directory storage ``cloud``."""
    disk = node.path(VOLID)
    disk.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    write(disk, 0x5A, "1M", "8M")
    config = {"scsi0": f"{VOLID},size=64M", "memory": "512", "tags": OWNER}
    pve.add_vm(100, "web", status="running" if running else "stopped", config=config)
    return disk


def write(disk: Path, pattern: int, offset: str, length: str) -> None:
    cmd = ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", str(disk)]
    subprocess.run(cmd, check=True, capture_output=True)


def take_snapshot(h: Any, hint: str) -> str:
    """SnapshotCreate as VirtRigaud's migration asks for it (disk only),
    waiting for its task."""
    resp = h.stub.SnapshotCreate(
        pb.SnapshotCreateRequest(vm_id="100", name_hint=hint, description="Migration snapshot", include_memory=False),
        timeout=30,
    )
    h.wait(resp.task)
    return str(resp.snapshot_id)


def as_proxmox_would(disk: Path, snapshot: str) -> None:
    """Proxmox's part of SnapshotCreate on a qcow2 volume of a directory
    storage, which the simulator does not play: an internal snapshot."""
    subprocess.run(["qemu-img", "snapshot", "-c", snapshot, str(disk)], check=True)


@pytest.mark.parametrize("running", [True, False])
def test_the_virtrigaud_migration_flow_exports_the_disk_as_the_snapshot_holds_it(
    dp: Any,
    pve: Any,
    node: PveNode,
    claims: Path,
    tmp_path: Path,
    running: bool,
) -> None:
    disk = make_vm(node, pve, running)
    snapshot = take_snapshot(dp, "web-migration-1a2b3c4d")
    as_proxmox_would(disk, snapshot)
    at_snapshot = tmp_path / "at-snapshot.qcow2"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(disk), str(at_snapshot)], check=True)
    write(disk, 0xA5, "4M", "16M")  # the VM goes on writing
    assert not same_content(disk, at_snapshot)

    url = "pvc://mig/vmmigrations/ns1/move/export.qcow2"
    resp = export(dp, url, snapshot_id=snapshot, backend_type="pvc")
    staged = claims / "mig/vmmigrations/ns1/move/export.qcow2"
    assert resp.checksum == sha256(staged)
    assert same_content(staged, at_snapshot)
    assert not same_content(staged, disk)
    assert list(node.tmp.iterdir()) == []

    now = export(dp, "pvc://mig/now.qcow2", backend_type="pvc")  # without a snapshot: the disk as it is
    assert same_content(claims / "mig/now.qcow2", disk)
    assert now.checksum != resp.checksum

    dp.wait(dp.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id="100", snapshot_id=snapshot), timeout=30).task)
    assert snapshot not in pve.vm(100).snapshots


def test_the_disks_are_those_the_snapshot_has(dp: Any, pve: Any, node: PveNode, claims: Path) -> None:
    """A disk added after the snapshot is not in it; the boot disk is the
    one the snapshot's config boots from."""
    disk = make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "before-data")
    as_proxmox_would(disk, snapshot)
    pve.vm(100).config["scsi1"] = "cloud:100/vm-100-disk-1.qcow2,size=1G"
    code, message = fails(lambda: export(dp, "pvc://mig/d.qcow2", snapshot_id=snapshot, disk_id="scsi1", backend_type="pvc"))
    assert code is grpc.StatusCode.NOT_FOUND, message
    assert f"snapshot {snapshot!r} of VM 100" in message
    assert "scsi1" in message
    export(dp, "pvc://mig/d.qcow2", snapshot_id=snapshot, disk_id="scsi0", backend_type="pvc")
    assert same_content(claims / "mig/d.qcow2", disk)


def test_an_export_right_after_snapshot_create_waits_for_the_snapshot(dp: Any, pve: Any, node: PveNode, claims: Path) -> None:
    """VirtRigaud moves on to ExportDisk without waiting for SnapshotCreate's
    task. While Proxmox takes a snapshot the VM is locked (``snapshot``) and
    the snapshot is ``prepare`` (the test plays that, and the file's part):
    the export waits for the lock, then reads the complete snapshot."""
    disk = make_vm(node, pve, running=True)
    as_proxmox_would(disk, "mig")
    vm = pve.vm(100)
    vm.snapshots["mig"] = {"scsi0": vm.config["scsi0"], "memory": "512", "snapstate": "prepare", "snaptime": 1}
    vm.lock = vm.config["lock"] = "snapshot"

    def taken() -> None:
        vm.snapshots["mig"].pop("snapstate")
        vm.lock = None
        vm.config.pop("lock")

    timer = threading.Timer(1.5, taken)
    timer.start()
    try:
        started = time.monotonic()
        export(dp, "pvc://mig/w.qcow2", snapshot_id="mig", backend_type="pvc")
    finally:
        timer.join()
    assert time.monotonic() - started >= 1.5
    assert same_content(claims / "mig/w.qcow2", disk)


def test_an_unknown_snapshot_is_not_found(dp: Any, pve: Any, node: PveNode) -> None:
    make_vm(node, pve, running=True)
    code, message = fails(lambda: export(dp, "pvc://mig/x.qcow2", snapshot_id="nope", backend_type="pvc"))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "VM 100 has no snapshot 'nope'" in message
    info = fails(lambda: dp.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id="100", snapshot_id="nope"), timeout=30))
    assert info[0] is grpc.StatusCode.NOT_FOUND  # as GetDiskInfo answers it
    assert node.sshd.logins() == 0


def test_a_snapshot_name_proxmox_would_not_make_reaches_no_shell(dp: Any, pve: Any, node: PveNode) -> None:
    """A snapshot's name goes into qemu-img's options (``-l
    snapshot.name=S``, where a comma starts another option) and file names
    on the node: one that is not a Proxmox snapshot name (pve-configid),
    even where the snapshot list held it, is refused by the API when the
    snapshot's config is read, before the node's shell is used."""
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "good")
    odd = "good,snapshot.id=1"
    pve.vm(100).snapshots[odd] = {**pve.vm(100).snapshots[snapshot], "name": odd}
    code, message = fails(lambda: export(dp, "pvc://mig/x.qcow2", snapshot_id=odd, backend_type="pvc"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, message
    assert "invalid configuration ID" in message
    assert node.sshd.logins() == 0


def test_a_zfs_snapshot_is_refused_for_good(dp: Any, pve: Any, node: PveNode) -> None:
    """Proxmox copies no volume at a ZFS snapshot (pve-storage,
    src/PVE/Storage/ZFSPoolPlugin.pm volume_has_feature: copy has no
    'snap'), and the snapshot's zvol device needs snapdev=visible."""
    pve.storages["tank"] = {"type": "zfspool", "pool": "tank", "active": 1, "content": "images,rootdir", "files": set()}
    config = {"scsi0": "tank:vm-100-disk-0,size=8G", "memory": "512", "tags": OWNER}
    pve.add_vm(100, "web", status="running", config=config)
    snapshot = take_snapshot(dp, "web-migration-1a2b3c4d")
    code, message = fails(lambda: export(dp, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION, message
    assert "a raw volume on storage 'tank' of type zfspool" in message
    assert "createSnapshot false" in message
    assert "snapdev=visible" in message
    assert node.sshd.logins() == 0
    assert [vm.vmid for vm in pve.vms] == [100]  # no clone tried


def test_an_incomplete_snapshot_is_refused(dp: Any, pve: Any, node: PveNode) -> None:
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "half")
    pve.vm(100).snapshots[snapshot]["snapstate"] = "delete"  # a deletion that failed half way
    code, message = fails(lambda: export(dp, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION, message
    assert "incomplete (snapstate delete)" in message


def test_a_volume_chain_snapshot_is_its_own_file(
    dp: Any,
    pve: Any,
    node: PveNode,
    claims: Path,
    tmp_path: Path,
) -> None:
    """A directory storage with ``snapshot-as-volume-chain`` keeps a
    snapshot as the file ``snap-<name>-<volume>`` under the volume's new
    top layer (Proxmox's part, played here: the volume becomes that file,
    and a new qcow2 on top of it takes the volume's name)."""
    pve.storages["cloud"]["snapshot-as-volume-chain"] = 1
    disk = make_vm(node, pve, running=True)
    snapshot = take_snapshot(dp, "chained")
    below = disk.with_name(f"snap-{snapshot}-{disk.name}")
    disk.rename(below)
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", below.name, "-F", "qcow2", str(disk)]
    subprocess.run(cmd, check=True)
    at_snapshot = tmp_path / "at-snapshot.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(below), str(at_snapshot)], check=True)
    write(disk, 0xA5, "0", "4M")
    export(dp, "pvc://mig/c.qcow2", snapshot_id=snapshot, backend_type="pvc")
    assert same_content(claims / "mig/c.qcow2", at_snapshot)
    assert not same_content(claims / "mig/c.qcow2", disk)


@pytest.mark.parametrize(
    ("how", "fmt", "path", "args"),
    [
        ("internal", "qcow2", "/mnt/pve/d/images/100/vm-100-disk-0.qcow2",
         ["-f", "qcow2", "-l", "snapshot.name=s1", "/mnt/pve/d/images/100/vm-100-disk-0.qcow2"]),
        ("chain", "qcow2", "/mnt/pve/d/images/100/vm-100-disk-0.qcow2",
         ["-f", "qcow2", "/mnt/pve/d/images/100/snap-s1-vm-100-disk-0.qcow2"]),
        ("btrfs", "raw", "/mnt/b/images/100/vm-100-disk-0/disk.raw",
         ["-f", "raw", "/mnt/b/images/100/vm-100-disk-0@s1/disk.raw"]),
        ("rbd", "raw", "rbd:rbd/vm-100-disk-0:mon_host=10.0.0.1:id=admin:keyring=/etc/pve/priv/ceph/c.keyring",
         ["-f", "raw", "rbd:rbd/vm-100-disk-0@s1:mon_host=10.0.0.1:id=admin:keyring=/etc/pve/priv/ceph/c.keyring"]),
        ("rbd", "raw", "rbd:pool/ns/vm-100-disk-0", ["-f", "raw", "rbd:pool/ns/vm-100-disk-0@s1"]),
    ],
)  # fmt: skip
def test_where_a_storage_keeps_a_volume_at_a_snapshot(how: str, fmt: str, path: str, args: list[str]) -> None:
    """The paths pve-storage's plugins give for a volume at a snapshot
    (``path($volid, $snapname)``), from the path of the volume now."""
    assert Source(Drive("scsi0", "s:vm-100-disk-0"), "s1", how, fmt).args(path) == args


@pytest.mark.parametrize(
    ("entry", "volume", "said"),
    [
        ({"type": "dir"}, "cloud:100/vm-100-disk-0.raw", "a raw volume on storage 'cloud' of type dir"),
        ({"type": "lvm"}, "vg:vm-100-disk-0", "type lvm"),
        (None, "hidden:vm-100-disk-0", "needs Datastore.Audit or Datastore.AllocateSpace on /storage/hidden"),
    ],
)
def test_storages_read_at_a_snapshot_only_where_pve_storage_says_how(
    entry: dict[str, Any] | None, volume: str, said: str, dp: Any, pve: Any
) -> None:
    """Where a snapshot is neither readable on the node nor copied by
    Proxmox (a raw file on a directory has none; LVM copies raw volumes at
    no snapshot), the export is refused before the node is reached."""
    from provider_core import FailedPrecondition

    storage = volume.split(":", maxsplit=1)[0]
    if entry is not None:  # else a storage the token may not see
        pve.storages[storage] = {**entry, "active": 1, "content": "images", "files": set()}
    pve.add_vm(100, "web", config={"scsi0": f"{volume},size=8G", "tags": OWNER})
    pve.vm(100).snapshots["s1"] = {"scsi0": f"{volume},size=8G", "snaptime": 1}
    backend = dp.backend
    ref = backend.cluster.state("100")
    with pytest.raises(FailedPrecondition, match=said):
        resolve(backend.cluster, ref, "", "s1")


@pytest.mark.parametrize(
    ("entry", "volume"),
    [({"type": "rbd", "krbd": 1}, "ceph:vm-100-disk-0"), ({"type": "lvmthin", "vgname": "pve"}, "thin:vm-100-disk-0")],
)
def test_a_snapshot_that_must_be_activated_or_mapped_is_read_from_a_clone(
    entry: dict[str, Any], volume: str, dp: Any, pve: Any
) -> None:
    """krbd maps a snapshot, LVM-thin activates it: Proxmox copies it
    instead, in a temporary full clone (test_export_clone.py runs it)."""
    storage = volume.split(":", maxsplit=1)[0]
    pve.storages[storage] = {**entry, "active": 1, "content": "images", "files": set()}
    pve.add_vm(100, "web", config={"scsi0": f"{volume},size=8G", "scsi1": "cloud:100/vm-100-disk-1.qcow2,size=1G"})
    pve.vm(100).snapshots["s1"] = {"scsi0": f"{volume},size=8G", "snaptime": 1}
    backend = dp.backend
    source = resolve(backend.cluster, backend.cluster.state("100"), "", "s1")
    assert (source.how, source.format, source.kind) == ("clone", "raw", entry["type"])
    assert [d.key for d in source.copies] == ["scsi0"]  # the snapshot's disks, not today's
