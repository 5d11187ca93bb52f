"""Decisions from the VM itself, not from ``/cluster/resources``.

That listing reports QEMU's run state (a paused VM is ``paused``, not
``running``) and lags a pvestatd cycle (10 s) behind for name, status and
template (see pvesim.stats for the sources). Power, Delete, Reconfigure,
snapshots and Create's name check read the VM's own state; ListVMs, one
request, reports what the listing says.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from provider_core.pb import provider_pb2 as pb


def paused(ops: Any, api: Any, name: str) -> str:
    vm = ops.create(name)
    ops.power(vm, pb.POWER_OP_ON)
    api.nodes("pve1").qemu(vm).status.suspend.post()  # paused by someone else (the web UI)
    return vm


# -- paused VMs ------------------------------------------------------------------------------


def test_off_and_shutdown_stop_a_paused_vm(ops: Any, api: Any, pve: Any) -> None:
    off = paused(ops, api, "paused-1")
    ops.power(off, pb.POWER_OP_OFF)
    assert pve.vm(int(off)).status == "stopped"
    graceful = paused(ops, api, "paused-2")
    ops.power(graceful, pb.POWER_OP_SHUTDOWN_GRACEFUL, graceful=5)  # forceStop: Proxmox stops a paused VM
    assert pve.vm(int(graceful)).status == "stopped"


def test_list_shows_a_paused_vm_suspended(ops: Any, api: Any) -> None:
    vm = paused(ops, api, "paused-3")
    (listed,) = ops.stub.ListVMs(pb.ListVMsRequest()).vms
    assert (listed.id, listed.power_state) == (vm, "Suspended")
    assert listed.provider_raw["status"] == "paused"


def test_reconfigure_treats_a_paused_vm_as_running(ops: Any, api: Any, pve: Any) -> None:
    vm = paused(ops, api, "paused-4")
    request = pb.ReconfigureRequest(id=vm, desired_json=json.dumps({"Class": {"CPU": 4}}))
    code, message = ops.fails(lambda: ops.stub.Reconfigure(request, timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "cores" in message
    assert pve.vm(int(vm)).pending == {}  # nothing was applied


def test_memory_snapshot_of_a_paused_vm_saves_its_ram(ops: Any, api: Any, pve: Any) -> None:
    vm = paused(ops, api, "paused-5")
    mark = ops.mark()
    resp = ops.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint="mem", include_memory=True), timeout=30)
    ops.h.wait(resp.task)
    (body,) = [b for m, p, b in pve.requests[mark:] if m == "POST" and p.endswith("/snapshot")]
    assert b"vmstate=1" in body


# -- /cluster/resources lags ---------------------------------------------------------------


def test_create_retried_before_the_stats_show_the_vm_returns_it(ops: Any, cluster: Any, pve: Any) -> None:
    cluster.stats.freeze()  # pvestatd has not run since: the new VM has no name in the listing yet
    first = ops.stub.Create(pb.CreateRequest(name="lag-1"), timeout=30)
    ops.h.wait(first.task)
    again = ops.stub.Create(pb.CreateRequest(name="lag-1"), timeout=30)
    ops.h.wait(again.task)
    assert again.id == first.id
    assert [vm.vmid for vm in pve.vms if vm.name == "lag-1"] == [int(first.id)]


def test_power_right_after_a_change_acts(ops: Any, cluster: Any, pve: Any, api: Any) -> None:
    vm = ops.create("lag-2")
    cluster.stats.freeze()  # the listing says stopped from now on
    ops.power(vm, pb.POWER_OP_ON)
    ops.power(vm, pb.POWER_OP_OFF)  # right after ON: the listing still says stopped
    assert pve.vm(int(vm)).status == "stopped"
    ops.power(vm, pb.POWER_OP_ON)
    cluster.stats.tick()  # the listing says running ...
    api.nodes("pve1").qemu(vm).status.shutdown.post()  # ... when the guest shuts itself down
    ops.power(vm, pb.POWER_OP_ON)
    assert pve.vm(int(vm)).status == "running"


def test_delete_right_after_on(ops: Any, cluster: Any, pve: Any) -> None:
    vm = ops.create("lag-3")
    cluster.stats.freeze()  # the listing says stopped
    ops.power(vm, pb.POWER_OP_ON)
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=vm), timeout=30).task)
    assert pve.vm(int(vm)) is None
