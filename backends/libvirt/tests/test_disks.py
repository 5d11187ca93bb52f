"""GetDiskInfo on the libvirt test driver (HardwareUpgrade is not offered
there: test_offers.py; on a real daemon: test_libvirtd_lifecycle.py)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def test_disk_info_of_primary_and_named_disks(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("web-1", image_json={"TemplateName": "base.qcow2"}, disks_json=[{"SizeGiB": 3, "Name": "data"}])
    harness.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm_id, name_hint="s1"))
    root = harness.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id))
    assert (root.disk_id, root.format, root.path) == ("vda", "qcow2", "/vmpt-pool/web-1-vda.qcow2")
    assert root.virtual_size_bytes == 2 * 2**30
    assert root.backing_file == "/vmpt-pool/base.qcow2"
    assert root.is_bootable
    assert list(root.snapshots) == ["s1"]
    assert root.metadata["pool"] == "default"
    assert root.metadata["volume"] == "web-1-vda.qcow2"
    data = harness.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id, disk_id="web-1-data.qcow2", snapshot_id="s1"))
    assert (data.disk_id, data.virtual_size_bytes, data.is_bootable, data.backing_file) == ("vdb", 3 * 2**30, False, "")
    for disk_id, snapshot_id in (("vdz", ""), ("vda", "nope")):
        with pytest.raises(grpc.RpcError) as info:
            harness.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id, disk_id=disk_id, snapshot_id=snapshot_id))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
