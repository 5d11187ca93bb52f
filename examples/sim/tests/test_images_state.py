"""ImagePrepare, and the state file that keeps the simulated host across
provider restarts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def test_a_prepared_image_is_a_template_for_create(sim: ProviderHarness, tmp_path: Path) -> None:
    data = b"\1" * 4096
    (tmp_path / "base.raw").write_bytes(data)
    with HttpSink(tmp_path) as server:
        image = json.dumps({"URL": server.url("base.raw"), "Format": "raw", "Checksum": hashlib.sha256(data).hexdigest()})
        first = sim.stub.ImagePrepare(pb.ImagePrepareRequest(image_json=image, target_name="base"))
        assert (first.prepared_image_id, first.prepared_image_path) == ("base", "/var/lib/sim/images/base.raw")
        sim.wait(first.task)
        again = sim.stub.ImagePrepare(pb.ImagePrepareRequest(image_json=image, target_name="base"))
        assert not again.task.id  # already there: nothing to do
        assert (again.prepared_image_id, again.prepared_image_path) == ("base", "/var/lib/sim/images/base.raw")
        assert len(server.requests) == 1
    # what ImagePrepare answered, given back as a client does: the id as TemplateName, the path as Path
    for name, image_json in (
        ("from-id", json.dumps({"TemplateName": first.prepared_image_id})),
        ("from-path", json.dumps({"Path": first.prepared_image_path})),
    ):
        vm = sim.stub.Create(pb.CreateRequest(name=name, image_json=image_json))
        sim.wait(vm.task)
        disk = sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm.id))
        assert disk.backing_file == "/var/lib/sim/images/base.raw"
    with pytest.raises(grpc.RpcError) as err:
        sim.stub.ImagePrepare(pb.ImagePrepareRequest(image_json='{"TemplateName": "debian-12"}', target_name="base"))
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_without_downloads_a_url_is_recorded_unfetched(start: Callable[..., ProviderHarness], tmp_path: Path) -> None:
    h = start(download_images=False)
    with HttpSink(tmp_path) as server:
        image = json.dumps({"URL": server.url("never.qcow2")})
        h.wait(h.stub.ImagePrepare(pb.ImagePrepareRequest(image_json=image, target_name="lazy")).task)
        assert server.requests == []


def test_the_state_file_keeps_vms_across_restarts(start: Callable[..., ProviderHarness], tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    first = start(state_file=str(state))
    vm = first.stub.Create(pb.CreateRequest(name="durable", class_json='{"CPU": 3}'))
    first.wait(vm.task)
    first.wait(first.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_ON)).task)
    snap = first.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm.id, name_hint="keep"))
    first.wait(snap.task)
    first.stop()
    second = start(state_file=str(state))
    (listed,) = [v for v in second.stub.ListVMs(pb.ListVMsRequest()).vms if v.name == "durable"]
    assert (listed.id, listed.cpu, listed.power_state) == (vm.id, 3, "On")
    assert list(second.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm.id)).snapshots) == [snap.snapshot_id]
    again = second.stub.Create(pb.CreateRequest(name="durable"))
    assert again.id == vm.id


def test_an_unreadable_state_file_fails_validation(start: Callable[..., ProviderHarness], tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    state.write_text("{not json")
    h = start(state_file=str(state))
    report = h.stub.Validate(pb.ValidateRequest())
    assert not report.ok
    assert report.message.startswith("not connected: cannot read state file")
