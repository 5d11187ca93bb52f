"""Delete's order, its undefine flags and its pool listings, on libvirt's
test driver.

The definition goes before the volumes, so a daemon that will not undefine
leaves the VM whole; undefine flags an older daemon does not know are
dropped one at a time. An older libvirt-python, lacking the newer flags
altogether, is test_older_libvirt.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import libvirt
import pytest
from vm_provider_libvirt import removal, storage

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def refusal(code: int, message: str) -> libvirt.libvirtError:
    """A libvirt error as the daemon would raise it."""
    exc = libvirt.libvirtError(message)
    exc.err = (code, libvirt.VIR_FROM_QEMU, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


def volumes(harness: ProviderHarness, vm_id: str) -> list[str]:
    raw = json.loads(harness.stub.Describe(pb.DescribeRequest(id=vm_id)).provider_raw_json)
    return [d["path"] for d in raw["disks"]]


def exists(harness: ProviderHarness, path: str) -> bool:
    try:
        harness.backend.session.conn().storageVolLookupByPath(path)  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        return False
    return True


def test_a_definition_the_daemon_keeps_keeps_its_disks(
    harness: ProviderHarness, make_vm: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    vm_id = make_vm("kept", disks_json=[{"SizeGiB": 1, "Name": "data"}])
    paths = volumes(harness, vm_id)
    assert paths
    monkeypatch.setattr(
        libvirt.virDomain,
        "undefineFlags",
        lambda self, flags=0: (_ for _ in ()).throw(refusal(libvirt.VIR_ERR_OPERATION_FAILED, "cannot undefine")),
    )
    with pytest.raises(grpc.RpcError):
        harness.wait(harness.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
    assert harness.stub.Describe(pb.DescribeRequest(id=vm_id)).exists
    assert all(exists(harness, p) for p in paths), "a VM the daemon kept lost its disks"
    monkeypatch.undo()
    harness.wait(harness.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
    assert not harness.stub.Describe(pb.DescribeRequest(id=vm_id)).exists
    assert not any(exists(harness, p) for p in paths)


def test_flags_an_older_daemon_refuses_are_dropped_newest_first(
    harness: ProviderHarness, make_vm: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon older than 8.9 refuses VIR_DOMAIN_UNDEFINE_TPM: the undefine
    is tried again without it, NVRAM still asked for."""
    vm_id = make_vm("older-daemon")
    tried: list[int] = []
    real = libvirt.virDomain.undefineFlags

    def older(self: libvirt.virDomain, flags: int = 0) -> int:
        tried.append(flags)
        if flags & libvirt.VIR_DOMAIN_UNDEFINE_TPM:
            raise refusal(libvirt.VIR_ERR_INVALID_ARG, "unsupported flags (0x40) in function qemuDomainUndefineFlags")
        return int(real(self, flags & removal.UNDEFINE_BASIC))  # the test driver itself refuses NVRAM

    monkeypatch.setattr(libvirt.virDomain, "undefineFlags", older)
    harness.wait(harness.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
    assert tried == [removal.UNDEFINE_ALL, removal.UNDEFINE_ALL & ~libvirt.VIR_DOMAIN_UNDEFINE_TPM]
    assert tried[-1] & libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    assert not harness.stub.Describe(pb.DescribeRequest(id=vm_id)).exists


def test_a_volume_that_will_not_go_leaves_the_others_going(
    harness: ProviderHarness, make_vm: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the undefine, each volume is removed on its own: one the daemon
    refuses to delete is reported (the task fails), the others still go."""
    disks = [{"SizeGiB": 1, "Name": "data"}, {"SizeGiB": 1, "Name": "logs"}]
    vm_id = make_vm("stuck", disks_json=disks, user_data=b"#cloud-config\n")
    paths = volumes(harness, vm_id)
    assert len(paths) == 3  # data (the boot disk), logs, the seed
    stuck = paths[0]
    real = libvirt.virStorageVol.delete

    def busy(self: libvirt.virStorageVol, flags: int = 0) -> int:
        if self.path() == stuck:
            raise refusal(libvirt.VIR_ERR_OPERATION_FAILED, "cannot delete: device or resource busy")
        return int(real(self, flags))

    monkeypatch.setattr(libvirt.virStorageVol, "delete", busy)
    with pytest.raises(grpc.RpcError) as err:
        harness.wait(harness.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
    assert "device or resource busy" in (err.value.details() or "")
    assert not harness.stub.Describe(pb.DescribeRequest(id=vm_id)).exists
    assert [p for p in paths if exists(harness, p)] == [stuck]


def test_a_delete_lists_the_pool_once_and_drops_every_volumes_source_record(
    harness: ProviderHarness, make_vm: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three disks and a seed, each recorded as holding an image: Delete
    drops the four records with one listing of their pool (a listing of a
    pool of thousands of volumes takes milliseconds), and leaves the record
    of a volume that is not the VM's."""
    disks = [{"SizeGiB": 1, "Name": "root"}, {"SizeGiB": 1, "Name": "data"}, {"SizeGiB": 1, "Name": "logs"}]
    vm_id = make_vm("recorded", disks_json=disks, user_data=b"#cloud-config\n")
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    vols = [conn.storageVolLookupByPath(p) for p in volumes(harness, vm_id)]
    assert len(vols) == 4
    pool = vols[0].storagePoolLookupByVolume()
    checksum = "ab" * 32
    for vol in vols:
        assert storage.record_source(pool, vol.name(), "sha256", checksum)
    assert storage.record_source(pool, "base.qcow2", "sha256", checksum)  # the template's, not the VM's
    listed: list[str] = []
    real = libvirt.virStoragePool.listAllVolumes

    def counted(self: libvirt.virStoragePool, flags: int = 0) -> list[libvirt.virStorageVol]:
        listed.append(self.name())
        return list(real(self, flags))

    monkeypatch.setattr(libvirt.virStoragePool, "listAllVolumes", counted)
    harness.wait(harness.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
    assert listed == [pool.name()]
    monkeypatch.undo()
    assert not any(storage.has_source(pool, vol.name(), "sha256", checksum) for vol in vols)
    assert storage.has_source(pool, "base.qcow2", "sha256", checksum)
