"""ExportDisk of a snapshot on LVM-thin (``local-lvm``, a Proxmox install's
default storage): Proxmox copies the disk at the snapshot into a temporary
full clone of the VM, the provider exports the clone's disk and destroys the
clone.

What is real: the provider, the SSH server and client, ``qemu-img``, the
shell tools, the staging directory and the HTTP server the exports go to.
What plays Proxmox: fakepve answers the API (snapshots and the clone with
``snapname`` in the VM's config, VMIDs, tasks, destroy); the ``pvesm``
stand-in (:mod:`pvenode`) maps a volume of ``local-lvm`` to a file standing
for its device ``/dev/pve/<volume>``; and :class:`ThinVolumes` below does on
those files what the node does on the logical volumes: a snapshot copies
each volume (``lvcreate -s``), a clone at a snapshot copies the snapshot
onto the clone's new volume (qemu-server ``clone_disk``: ``qemu_img_convert``
from the activated snapshot), and destroying a VM or a snapshot removes its
volumes (``lvremove``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_datapath
from fakepve import TaskError
from pvenode import PveNode
from test_datapath import export, fails, same_content, sha256
from test_export_snapshot import take_snapshot
from vm_provider_proxmox.vmconfig import data_disks
from vmp_testplugins.sshd import skip_without_sshd

from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb

#: The data path's fixtures (with this module's node): staging claims, a provider using both.
claims, dp = test_datapath.claims, test_datapath.dp
OWNER = "vm-provider"
STORAGE = "local-lvm"
VG = "pve"  # fakepve's local-lvm: vgname pve, thinpool data
MiB = 1 << 20


class ThinVolumes:
    """The node's part on ``local-lvm``'s logical volumes, on the stand-in's
    files (LvmThinPlugin.pm: ``volume_snapshot`` makes ``snap_<volume>_<S>``,
    ``volume_snapshot_delete`` and ``free_image`` remove volumes; qemu-server
    ``clone_vm`` -> ``clone_disk`` copies each volume at the snapshot)."""

    def __init__(self, layer: Any, node: PveNode) -> None:
        self.layer = layer
        self.node = node
        self.destroy_fails = False
        qemu = r"/nodes/(?P<node>[^/]+)/qemu/(?P<vmid>\d+)"
        layer.route("POST", qemu + "/snapshot", self.snapshot)
        layer.route("DELETE", qemu + r"/snapshot/(?P<snap>[^/]+)", self.unsnapshot)
        layer.route("POST", qemu + "/clone", self.clone)
        layer.route("DELETE", qemu, self.destroy)

    def volumes(self, config: dict[str, Any]) -> dict[str, str]:
        """Config key -> volume name of the ``local-lvm`` disks."""
        return {d.key: d.volume.split(":", 1)[1] for d in data_disks(config) if d.storage == STORAGE}

    def snap_file(self, volume: str, snap: str) -> Path:
        return self.node.path(f"{STORAGE}:snap_{volume}_{snap}")

    async def copy(self, source: Path, target: Path) -> None:
        argv = ["cp", "--sparse=always", str(source), str(target)]
        await asyncio.to_thread(subprocess.run, argv, check=True)

    async def snapshot(self, call: Any, m: re.Match[str]) -> Any:
        vm = self.layer.pve.vm(int(m["vmid"]))
        for volume in self.volumes(vm.config).values():
            await self.copy(self.node.path(f"{STORAGE}:{volume}"), self.snap_file(volume, call.params["snapname"]))
        return self.layer.relay(await self.layer.forward(call))

    async def unsnapshot(self, call: Any, m: re.Match[str]) -> Any:
        vm = self.layer.pve.vm(int(m["vmid"]))
        snap = m["snap"]
        for volume in self.volumes(vm.snapshots.get(snap, {})).values():
            self.snap_file(volume, snap).unlink(missing_ok=True)
        return self.layer.relay(await self.layer.forward(call))

    async def clone(self, call: Any, m: re.Match[str]) -> Any:
        up = await self.layer.forward(call)  # fakepve allocates the clone's volumes in its request
        snap = call.params.get("snapname")
        new = self.layer.pve.vm(int(call.params["newid"]))
        if up.status == 200 and snap and new is not None:
            source = self.layer.pve.vm(int(m["vmid"])).snapshots[snap]
            made = self.volumes(new.config)
            for key, volume in self.volumes(source).items():
                await self.copy(self.snap_file(volume, snap), self.node.path(f"{STORAGE}:{made[key]}"))
        return self.layer.relay(up)

    async def destroy(self, call: Any, m: re.Match[str]) -> Any:
        vmid = int(m["vmid"])
        vm = self.layer.pve.vm(vmid)
        if vm is None:
            return None
        if self.destroy_fails:
            return self.layer.error(500, f"can't remove VM {vmid} - protection mode enabled")
        volumes = self.volumes(vm.config)
        up = await self.layer.forward(call)
        for _ in range(200):  # the destroy task
            if self.layer.pve.vm(vmid) is None:
                for volume in volumes.values():
                    self.node.path(f"{STORAGE}:{volume}").unlink(missing_ok=True)
                break
            await asyncio.sleep(0.01)
        return self.layer.relay(up)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[PveNode]:
    skip_without_sshd()
    n = PveNode(tmp_path / "node", thin={STORAGE: VG})
    n.device(VG).mkdir(parents=True)
    with n.running():
        yield n


@pytest.fixture
def thin(cluster: Any, node: PveNode) -> ThinVolumes:
    return ThinVolumes(cluster, node)


def write(disk: Path, pattern: int, offset: str, length: str) -> None:
    cmd = ["qemu-io", "-f", "raw", "-c", f"write -P {pattern:#x} {offset} {length}", str(disk)]
    subprocess.run(cmd, check=True, capture_output=True)


def make_vm(node: PveNode, pve: Any, *, running: bool, disks: int = 1) -> list[Path]:
    """VM 100 (this provider's) with raw 64 MiB volumes on local-lvm, each
    holding 8 MiB of its own pattern."""
    config: dict[str, Any] = {"memory": "512", "tags": OWNER, "boot": "order=scsi0"}
    files = []
    for i in range(disks):
        volume = f"vm-100-disk-{i}"
        disk = node.path(f"{STORAGE}:{volume}")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "64M"], check=True)
        write(disk, 0x50 + i, "1M", "8M")
        config[f"scsi{i}"] = f"{STORAGE}:{volume},size=64M"
        files.append(disk)
    pve.add_vm(100, "web", status="running" if running else "stopped", config=config)
    return files


def copy_of(disk: Path, into: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(disk), str(into)], check=True)
    return into


def only_the_vm_is_left(pve: Any, node: PveNode) -> None:
    """No clone in the API nor among the volumes: VM 100's own and its snapshots' only."""
    assert [vm.vmid for vm in pve.vms] == [100]
    assert all(name.startswith(("vm-100-", "snap_vm-100-")) for name in pve.storages[STORAGE].get("volumes", {}))
    assert all(f.name.startswith(("vm-100-", "snap_vm-100-")) for f in node.device(VG).iterdir())
    assert list(node.tmp.iterdir()) == []


def tagged(pve: Any) -> list[Any]:
    """The VMs carrying the temporary clone's tag."""
    return [vm for vm in pve.vms if "vmp-export" in str(vm.config.get("tags", ""))]


def clone_requests(pve: Any) -> list[str]:
    return [body.decode() for method, path, body in pve.requests if method == "POST" and path.endswith("/qemu/100/clone")]


@pytest.mark.parametrize("running", [True, False])
def test_the_virtrigaud_migration_flow_on_lvm_thin(
    dp: Any, pve: Any, node: PveNode, thin: ThinVolumes, claims: Path, tmp_path: Path, running: bool
) -> None:
    """SnapshotCreate, ExportDisk of the snapshot, SnapshotDelete: the export
    is the disk at the snapshot, and nothing of the clone stays."""
    (disk,) = make_vm(node, pve, running=running)
    snapshot = take_snapshot(dp, "web-migration-1a2b3c4d")
    at_snapshot = copy_of(disk, tmp_path / "at-snapshot.raw")
    write(disk, 0xA5, "4M", "16M")  # the VM goes on writing
    assert not same_content(disk, at_snapshot)

    resp = export(dp, "pvc://mig/vmmigrations/ns1/move/export.qcow2", snapshot_id=snapshot, backend_type="pvc")
    staged = claims / "mig/vmmigrations/ns1/move/export.qcow2"
    assert resp.checksum == sha256(staged)
    assert same_content(staged, at_snapshot)
    assert not same_content(staged, disk)
    (sent,) = clone_requests(pve)
    assert f"snapname={snapshot}" in sent
    assert "full=1" in sent
    assert f"storage={STORAGE}" in sent
    assert "name=vmp-export-100-web-migration-1a2b3c4d" in sent
    tagged = [b for m, p, b in pve.requests if m == "POST" and re.search(r"/qemu/\d+/config$", p) and b"vmp-export" in b]
    assert tagged, "the clone got its own tag"
    only_the_vm_is_left(pve, node)

    dp.wait(dp.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id="100", snapshot_id=snapshot), timeout=30).task)
    assert snapshot not in pve.vm(100).snapshots
    assert [f.name for f in node.device(VG).iterdir()] == ["vm-100-disk-0"]


def test_the_asked_disk_of_the_clone_is_exported_and_the_cost_logged(
    dp: Any, pve: Any, node: PveNode, thin: ThinVolumes, claims: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The clone copies every disk of the snapshot (the API has no choice
    of disks); the export is the one asked for, read from the clone's disk
    of the same key."""
    caplog.set_level(logging.INFO)
    _, data = make_vm(node, pve, running=True, disks=2)
    snapshot = take_snapshot(dp, "two")
    at_snapshot = copy_of(data, tmp_path / "data-at-snapshot.raw")
    write(data, 0xA5, "0", "4M")
    export(dp, "pvc://mig/data.raw", "raw", snapshot_id=snapshot, disk_id="scsi1", backend_type="pvc")
    assert same_content(claims / "mig/data.raw", at_snapshot)
    assert not same_content(claims / "mig/data.raw", data)
    assert "all 2 disk(s) of it (0.1 GiB)" in caplog.text
    assert "temporary clone" in caplog.text
    assert "destroyed" in caplog.text
    only_the_vm_is_left(pve, node)


def test_the_clone_is_destroyed_when_the_upload_fails(
    dp: Any, pve: Any, node: PveNode, thin: ThinVolumes, tmp_path: Path
) -> None:
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "broken")
    (tmp_path / "web").mkdir()
    with HttpSink(tmp_path / "web") as sink:
        sink.fail("disk.qcow2", 403, times=100)
        code, message = fails(lambda: export(dp, sink.url("disk.qcow2"), snapshot_id=snapshot))
        assert [r for r in sink.requests if r.method == "PUT"], "the upload had begun"
    assert code is grpc.StatusCode.PERMISSION_DENIED, message
    assert clone_requests(pve)
    only_the_vm_is_left(pve, node)


def test_a_clone_that_fails_leaves_nothing_and_says_what_it_copies(dp: Any, pve: Any, node: PveNode, thin: ThinVolumes) -> None:
    """The storage has no room for the copy: the clone task fails, the
    answer says what the clone was, and nothing stays."""
    make_vm(node, pve, running=True, disks=2)
    snapshot = take_snapshot(dp, "full")
    pve.storages[STORAGE]["avail"] = 100 * MiB  # room for one disk of two
    code, message = fails(lambda: export(dp, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION, message
    assert "the temporary full clone" in message
    assert "copies every disk of the VM onto storage 'local-lvm'" in message
    assert "No space left" in message
    only_the_vm_is_left(pve, node)
    assert node.sshd.logins() == 0


def test_concurrent_calls_on_the_vm_wait_and_listvms_never_shows_the_clone(
    dp: Any, provider: Any, settings: dict[str, Any], pve: Any, node: PveNode, thin: ThinVolumes, tmp_path: Path
) -> None:
    """While the export runs (a slow destination), ListVMs (list_all) shows
    VM 100 only though Proxmox has the clone too; a SnapshotDelete on the VM
    waits for the export, clone destroyed, to end."""
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "slow")
    other = provider({**settings, **node.settings()})  # another provider process: it knows the clone by its tag
    (tmp_path / "web").mkdir()
    result: dict[str, Any] = {}
    with HttpSink(tmp_path / "web") as sink:
        sink.delay = 2.0

        def run() -> None:
            result["export"] = export(dp, sink.url("disk.qcow2"), snapshot_id=snapshot)
            result["ended"] = time.monotonic()

        exporting = threading.Thread(target=run)
        exporting.start()
        try:
            deadline = time.monotonic() + 30
            while not tagged(pve) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(pve.vms) == 2, "VM 100 and its clone"
            assert [vm.id for vm in dp.stub.ListVMs(pb.ListVMsRequest(), timeout=30).vms] == ["100"]
            assert [vm.id for vm in other.stub.ListVMs(pb.ListVMsRequest(), timeout=30).vms] == ["100"]
            delete = dp.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id="100", snapshot_id=snapshot), timeout=60)
            deleted = time.monotonic()
        finally:
            exporting.join()
    assert result["export"].checksum
    assert deleted >= result["ended"] - 0.5
    dp.wait(delete.task)
    order = [(m, p) for m, p, _ in pve.requests if m == "DELETE"]
    clone_gone = next(i for i, (_, p) in enumerate(order) if re.search(r"/qemu/(?!100)\d+$", p))
    snapshot_gone = next(i for i, (_, p) in enumerate(order) if p.endswith(f"/snapshot/{snapshot}"))
    assert clone_gone < snapshot_gone
    only_the_vm_is_left(pve, node)


@pytest.mark.parametrize(
    ("refused", "privilege"),
    [("/nodes/pve1/qemu/100/clone", "/vms/100, VM.Clone"), ("/nodes/pve1/qemu/101/config", "/vms/101, VM.Config.Options")],
)
def test_a_refused_clone_names_the_privileges_it_needs(
    dp: Any, pve: Any, node: PveNode, thin: ThinVolumes, refused: str, privilege: str
) -> None:
    """Proxmox refuses the clone, or the clone's tag (the clone, VMID 101,
    is then destroyed again)."""
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "denied")
    pve.fail("POST", refused, 403, f"Permission check failed ({privilege})")
    code, message = fails(lambda: export(dp, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc"))
    assert code is grpc.StatusCode.PERMISSION_DENIED, message
    assert "VM.Clone and VM.Audit on /vms/100" in message
    assert "VM.Allocate and VM.Config.Options on /vms" in message
    assert "Datastore.AllocateSpace on /storage/local-lvm" in message
    assert "SDN.Use on the bridges of the VM's NICs" in message
    assert privilege in message
    only_the_vm_is_left(pve, node)


def test_a_clone_left_behind_is_logged_and_never_listed(
    dp: Any,
    provider: Any,
    settings: dict[str, Any],
    pve: Any,
    node: PveNode,
    thin: ThinVolumes,
    claims: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Proxmox refuses to destroy the clone: the export stands, the error
    log names the clone's VMID, and no provider lists it (its tag). The
    next export of the VM destroys it."""
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "stuck")
    thin.destroy_fails = True
    export(dp, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc")
    (left,) = [vm for vm in pve.vms if vm.vmid != 100]
    assert left.name == "vmp-export-100-stuck"
    assert left.config["tags"] == "vmp-export"
    assert "Temporary full clone of VM 100 at snapshot stuck" in left.config["description"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"temporary clone VM {left.vmid}" in e and "NOT destroyed" in e for e in errors), errors
    assert [vm.id for vm in dp.stub.ListVMs(pb.ListVMsRequest(), timeout=30).vms] == ["100"]
    other = provider({**settings, **node.settings()}, pvc_root=claims)
    assert [vm.id for vm in other.stub.ListVMs(pb.ListVMsRequest(), timeout=30).vms] == ["100"]

    thin.destroy_fails = False
    export(dp, "pvc://mig/y.qcow2", snapshot_id=snapshot, backend_type="pvc")
    assert f"removing the temporary clone VM {left.vmid}" in caplog.text
    only_the_vm_is_left(pve, node)


class HangingClone:
    """A clone task that is still copying when the export gives up: the
    layer answers the clone with a task of its own that runs until it is
    stopped (``DELETE`` on the task), and then does what qemu-server's
    ``clone_vm`` does on SIGTERM ("interrupted by signal"): it frees the
    clone's new volumes and removes its config. fakepve makes the clone
    first (its own task ends at once)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.running: dict[str, asyncio.Event] = {}
        layer.route("POST", r"/nodes/(?P<node>[^/]+)/qemu/(?P<vmid>\d+)/clone", self.clone)
        layer.route("DELETE", r"/nodes/(?P<node>[^/]+)/tasks/(?P<upid>[^/]+)", self.stop)

    async def clone(self, call: Any, m: re.Match[str]) -> Any:
        up = await self.layer.forward(call)
        if up.status != 200:
            return self.layer.relay(up)
        pve, newid, stopped = self.layer.pve, int(call.params["newid"]), asyncio.Event()

        async def copying() -> None:
            await stopped.wait()
            vm = pve.vm(newid)
            for d in data_disks(vm.config):
                pve.storages[d.storage].get("volumes", {}).pop(d.volume.split(":", 1)[1], None)
            pve.vms.remove(vm)
            raise TaskError("clone failed: interrupted by signal")

        upid: str = await pve.task(m["node"], "qmclone", m["vmid"], call.user, copying)
        self.running[upid] = stopped
        return self.layer.answer(upid)

    async def stop(self, call: Any, m: re.Match[str]) -> Any:
        stopped = self.running.pop(m["upid"], None)
        if stopped is None:
            return None
        stopped.set()
        return self.layer.answer(None)


@pytest.mark.fakepve(time_scale=0.01)  # tasks run on their own
def test_a_clone_still_copying_is_stopped_and_removed(
    provider: Any, settings: dict[str, Any], pve: Any, cluster: Any, node: PveNode, claims: Path
) -> None:
    """The export gives up on a clone task still running after
    task_timeout_seconds: the task is stopped, which removes the clone."""
    h = provider({**settings, **node.settings(), "task_timeout_seconds": 1}, pvc_root=claims)
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(h, "hangs")
    hanging = HangingClone(cluster)
    code, message = fails(lambda: export(h, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc"))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED, message
    assert "the temporary full clone" in message
    assert hanging.running == {}, "the clone task was stopped"
    only_the_vm_is_left(pve, node)


def leave_clone(pve: Any, vmid: int, name: str, *, of: int = 100, running: bool = False) -> Any:
    """A clone as Proxmox finishes it after the process that asked for it
    was killed: the source's tags (the ownership tag among them),
    ``onboot`` and ``protection`` (a snapshot's config holds them too), the
    description the clone was asked with, never retagged."""
    description = (
        f"Temporary full clone of VM {of} at snapshot old, made by vm-provider for ExportDisk;"
        " destroyed when the export ends. Managed by vm-provider (creation 0123456789abcdef)."
    )
    config = {"memory": "512", "tags": OWNER, "onboot": "1", "protection": "1", "description": description}
    return pve.add_vm(vmid, name, status="running" if running else "stopped", config=config)


def test_a_clone_a_killed_provider_left_is_never_listed(dp: Any, pve: Any, node: PveNode) -> None:
    """A temporary clone the provider could not retag (it was killed while
    Proxmox copied) still carries the source's ownership tag: ListVMs does
    not list it all the same, by its name."""
    make_vm(node, pve, running=False)
    leave_clone(pve, 101, "vmp-export-100-old")
    assert [vm.id for vm in dp.stub.ListVMs(pb.ListVMsRequest(), timeout=30).vms] == ["100"]


def test_the_next_export_of_the_vm_removes_the_clones_a_killed_provider_left(
    dp: Any, pve: Any, node: PveNode, thin: ThinVolumes, claims: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under the VM's lock no other export of it runs: a temporary clone of
    it is then a leftover, and the export destroys it first (a running one,
    started by the ``onboot`` it copied, is stopped). A VM that only bears
    such a name, and another VM's clone, are left alone."""
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "again")
    leave_clone(pve, 101, "vmp-export-100-old", running=True)
    pve.add_vm(102, "vmp-export-100-mine", status="stopped", config={"memory": "512"})
    leave_clone(pve, 103, "vmp-export-7-old", of=7)
    export(dp, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc")
    assert sorted(vm.vmid for vm in pve.vms) == [100, 102, 103]
    assert "removing the temporary clone VM 101 (vmp-export-100-old)" in caplog.text
    assert "VMID 102" not in caplog.text


def test_a_clone_proxmox_refuses_says_it_was_a_temporary_clone(dp: Any, pve: Any, node: PveNode, thin: ThinVolumes) -> None:
    """The clone copies every disk of the snapshot: one on a storage that
    Proxmox copies at no snapshot (ZFS) makes it refuse the whole clone; the
    answer says that this export needed a clone, and of what."""
    make_vm(node, pve, running=False)
    snapshot = take_snapshot(dp, "mixed")
    refusal = "Full clone feature is not supported for a snapshot of 'local-zfs:vm-100-disk-1' (scsi1)"
    pve.fail("POST", "/nodes/pve1/qemu/100/clone", 500, refusal)
    code, message = fails(lambda: export(dp, "pvc://mig/x.qcow2", snapshot_id=snapshot, backend_type="pvc"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION, message
    assert "a temporary full clone of VM 100 at snapshot 'mixed'" in message
    assert "copies every disk of the VM onto storage 'local-lvm'" in message
    assert refusal in message
    only_the_vm_is_left(pve, node)


def test_a_clone_still_copying_its_first_disk_is_never_listed(dp: Any, pve: Any, node: PveNode) -> None:
    """Until Proxmox has copied a clone's first disk, its config holds only
    ``lock: clone`` (qemu-server's ``clone_vm``): no name, no tags. Seen by
    another replica, or by a provider started since, such a half-made VM
    (a temporary clone, say) is not listed, so adoption does not take it."""
    make_vm(node, pve, running=False)
    half = pve.add_vm(101, "", status="stopped", lock="clone", config={"lock": "clone"})
    del half.config["name"]
    assert [vm.id for vm in dp.stub.ListVMs(pb.ListVMsRequest(), timeout=30).vms] == ["100"]
