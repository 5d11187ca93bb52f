"""Create: idempotency, images (built in, prepared, fetched from a URL),
validation of the request against the simulated host."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from provider_core.conformance.kit import field_violations
from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness, TaskFailed


def names(h: ProviderHarness) -> list[str]:
    return [vm.name for vm in h.stub.ListVMs(pb.ListVMsRequest()).vms]


def test_create_while_the_first_create_runs_returns_the_same_vm(start: Callable[..., ProviderHarness]) -> None:
    h = start(task_seconds=0.3)
    first = h.stub.Create(pb.CreateRequest(name="twice"))
    second = h.stub.Create(pb.CreateRequest(name="twice"))
    assert second.id == first.id
    h.wait(first.task)
    h.wait(second.task)
    assert names(h).count("twice") == 1


def test_a_name_taken_by_a_foreign_vm_is_already_exists(start: Callable[..., ProviderHarness]) -> None:
    h = start(foreign_vms=["legacy-db"])
    with pytest.raises(grpc.RpcError) as err:
        h.stub.Create(pb.CreateRequest(name="legacy-db"))
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    (legacy,) = [vm for vm in h.stub.ListVMs(pb.ListVMsRequest()).vms if vm.name == "legacy-db"]
    assert legacy.provider_raw["owned"] == "false"


def test_disks_and_class_are_what_create_asked_for(sim: ProviderHarness, create: Callable[..., str]) -> None:
    vm = create(
        "db",
        class_json=json.dumps({"CPU": 4, "Memory": "2Gi", "DiskDefaults": {"SizeGiB": 20}}),
        image_json=json.dumps({"TemplateName": "debian-12"}),
        disks_json=json.dumps([{"Name": "data", "SizeGiB": 50, "Type": "thick"}, {"SizeGiB": 5}]),
    )
    (listed,) = [v for v in sim.stub.ListVMs(pb.ListVMsRequest()).vms if v.id == vm]
    assert (listed.cpu, listed.memory_mib) == (4, 2048)
    assert [(d.id, d.size_gib) for d in listed.disks] == [("root", 20), ("data", 50), ("disk2", 5)]
    root = sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm))
    assert (root.is_bootable, root.backing_file) == (True, "/var/lib/sim/images/debian-12.qcow2")
    data = sim.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm, disk_id="data"))
    assert data.actual_size_bytes == data.virtual_size_bytes == 50 * 2**30


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"class_json": '{"ExtraConfig": {"sim.bogus": "1"}}'}, "class_json.ExtraConfig.sim.bogus"),
        ({"class_json": '{"CPU": 65}'}, "class_json.CPU"),
        ({"networks_json": '[{"NetworkName": "nowhere"}]'}, "networks_json[0].NetworkName"),
        ({"disks_json": '[{"Name": "root", "SizeGiB": 1}]'}, "disks_json[0].Name"),
        ({"placement_json": '{"Datastore": "fast"}'}, "placement_json.Datastore"),
        (
            {"class_json": '{"DiskDefaults": {"SizeGiB": 1}}', "image_json": '{"TemplateName": "debian-12"}'},
            "class_json.DiskDefaults.SizeGiB",
        ),
    ],
)
def test_requests_the_host_cannot_meet_name_the_field(sim: ProviderHarness, fields: dict[str, str], field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        sim.stub.Create(pb.CreateRequest(name="bad", **fields))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err.value) == [field]
    assert "bad" not in names(sim)


def test_an_unknown_template_is_not_found(sim: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as err:
        sim.stub.Create(pb.CreateRequest(name="x", image_json='{"TemplateName": "windows-95"}'))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "image_json.TemplateName: no image 'windows-95'" in err.value.details()


def test_url_images_are_fetched_and_verified(sim: ProviderHarness, tmp_path: Path) -> None:
    image = b"qcow2 image bytes" * 1000
    (tmp_path / "img.qcow2").write_bytes(image)
    good = hashlib.sha256(image).hexdigest()
    with HttpSink(tmp_path) as server:
        url = server.url("img.qcow2")
        ok = sim.stub.Create(pb.CreateRequest(name="from-url", image_json=json.dumps({"URL": url, "Checksum": good})))
        sim.wait(ok.task)
        bad = sim.stub.Create(pb.CreateRequest(name="bad-sum", image_json=json.dumps({"URL": url, "Checksum": "0" * 64})))
        with pytest.raises(TaskFailed, match=f"image_json.Checksum: sha256 of the .* is {good}, not the expected {'0' * 64}"):
            sim.wait(bad.task)
        assert [r.path for r in server.requests] == ["/img.qcow2", "/img.qcow2"]
    assert json.loads(sim.stub.Describe(pb.DescribeRequest(id=ok.id)).provider_raw_json)["image"] == url
    assert not sim.stub.Describe(pb.DescribeRequest(id=bad.id)).exists  # a failed create leaves nothing
    assert "bad-sum" not in names(sim)
