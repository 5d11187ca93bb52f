"""Where a new VM goes, and Proxmox's permanent refusals.

Proxmox answers HTTP 500 for every plain error of its API (pve-manager
PVE/HTTPServer.pm:221-231): "storage 'X' is not available on node 'Y'" will
not pass with time, so it is never UNAVAILABLE (which clients retry for
ever). A node is only chosen where the VM's storages and bridges exist
(pvesim.placement: storages and bridges per node).
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from provider_core.pb import provider_pb2 as pb


def auto(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings without a default node: the provider picks one."""
    return {**settings, "node": ""}


def test_node_is_picked_where_the_storage_is(cluster: Any, provider: Any, ops_for: Any, settings: Any, pve: Any) -> None:
    cluster.placement.restrict("local-lvm", "pve2")
    ops = ops_for(provider(auto(settings)))
    vm = ops.create("where-1")
    assert pve.vm(int(vm)).node == "pve2"


def test_node_is_picked_where_the_bridge_is(cluster: Any, provider: Any, ops_for: Any, settings: Any, pve: Any) -> None:
    cluster.placement.bridges["pve1"] = {"vmbr0"}
    cluster.placement.bridges["pve2"] = {"vmbr0", "vmbr5"}
    ops = ops_for(provider(auto(settings)))
    vm = ops.create("where-2", networks_json=[{"Bridge": "vmbr5"}])
    assert pve.vm(int(vm)).node == "pve2"
    sdn = ops.create("where-3", networks_json=[{"NetworkName": "vnet7"}])  # an SDN vnet: on every node
    assert pve.vm(int(sdn)).config["net0"].endswith("bridge=vnet7")


def test_no_node_has_them(cluster: Any, provider: Any, ops_for: Any, settings: Any) -> None:
    cluster.placement.restrict("local-lvm", "pve2")
    cluster.placement.bridges["pve2"] = {"vmbr0"}
    ops = ops_for(provider(auto(settings)))
    code, message = ops.fails(
        lambda: ops.stub.Create(pb.CreateRequest(name="where-4", networks_json='[{"Bridge": "vmbr1"}]'), timeout=30)
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "local-lvm" in message
    assert "vmbr1" in message


def test_placement_host_without_the_storage(cluster: Any, ops: Any) -> None:
    cluster.placement.restrict("local-lvm", "pve1")
    request = pb.CreateRequest(name="where-5", placement_json=json.dumps({"Host": "pve2"}))
    code, message = ops.fails(lambda: ops.stub.Create(request, timeout=30))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "placement_json.Host" in message
    assert "storage 'local-lvm' is not available on node 'pve2'" in message


def test_placement_host_without_the_bridge(cluster: Any, ops: Any) -> None:
    cluster.placement.bridges["pve2"] = {"vmbr0"}
    request = pb.CreateRequest(name="where-6", placement_json='{"Host": "pve2"}', networks_json='[{"Bridge": "vmbr1"}]')
    code, message = ops.fails(lambda: ops.stub.Create(request, timeout=30))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "networks_json[0]" in message


def test_import_storage_missing_on_the_node_is_a_precondition(cluster: Any, ops: Any) -> None:
    cluster.placement.restrict("cloud", "pve2")  # the provider's node is pve1
    image = json.dumps({"URL": "https://images.example.invalid/noble.qcow2", "Checksum": "a" * 64})
    code, message = ops.fails(lambda: ops.stub.Create(pb.CreateRequest(name="where-7", image_json=image), timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "cloud" in message
    assert "pve1" in message


def test_prepare_downloads_on_a_node_that_has_the_storage(cluster: Any, ops: Any, pve: Any) -> None:
    cluster.placement.restrict("cloud", "pve2")
    image = '{"URL": "https://images.example.invalid/noble.qcow2", "Checksum": "' + "a" * 64 + '"}'
    resp = ops.stub.ImagePrepare(pb.ImagePrepareRequest(image_json=image, target_name="noble"), timeout=30)
    ops.h.wait(resp.task)
    assert any(p.endswith("/nodes/pve2/storage/cloud/download-url") for m, p, _ in pve.requests)


def test_clone_of_local_disks_to_another_node(ops: Any, pve: Any) -> None:
    pve.add_vm(9000, "tmpl", template=True, config={"scsi0": "local-lvm:base-9000-disk-0,size=2G"})
    request = pb.CloneRequest(source_vm_id="9000", target_name="where-8", placement_json='{"Host": "pve2"}')
    code, message = ops.fails(lambda: ops.stub.Clone(request, timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "(VM uses local storage)" in message


def test_plain_refusal_is_never_unavailable(ops: Any, pve: Any) -> None:
    vm = ops.create("where-9")
    pve.fail("POST", f"/nodes/pve1/qemu/{vm}/status/start", 500, "no such bridge 'vmbr7'")
    code, message = ops.fails(lambda: ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "vmbr7" in message
