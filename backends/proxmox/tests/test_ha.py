"""VMs managed by Proxmox HA: their start, stop and shutdown only hand the
request to ha-manager, which carries it out later (pvesim.ha cites
qemu-server and pve-ha-manager). Power and Delete wait for the state HA
promised; their tasks end when the VM is there.
"""

from __future__ import annotations

from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb


@pytest.fixture
def ha_vm(ops: Any, pve: Any) -> str:
    vm = ops.create("ha-1")
    pve.vm(int(vm)).ha_state = "stopped"  # ha-manager add vm:N --state stopped
    return vm


def test_on_and_off_wait_for_ha_manager(ops: Any, pve: Any, ha_vm: str) -> None:
    ops.power(ha_vm, pb.POWER_OP_ON)
    assert pve.vm(int(ha_vm)).status == "running"
    assert ops.state(ha_vm) == "On"
    ops.power(ha_vm, pb.POWER_OP_OFF)
    assert pve.vm(int(ha_vm)).status == "stopped"
    ops.power(ha_vm, pb.POWER_OP_ON)
    ops.power(ha_vm, pb.POWER_OP_SHUTDOWN_GRACEFUL, graceful=30)
    assert pve.vm(int(ha_vm)).status == "stopped"


def test_reboot_waits_for_the_stop_before_starting(ops: Any, pve: Any, cluster: Any, api: Any, ha_vm: str) -> None:
    ops.power(ha_vm, pb.POWER_OP_ON)
    api.nodes("pve1").qemu(ha_vm).config.put(cores=2)  # waits for the restart
    cluster.ha.carried.clear()
    ops.power(ha_vm, pb.POWER_OP_REBOOT)
    assert cluster.ha.carried == [(int(ha_vm), "stopped"), (int(ha_vm), "started")]  # a real restart
    assert pve.vm(int(ha_vm)).status == "running"
    assert int(pve.vm(int(ha_vm)).config["cores"]) == 2


def test_delete_of_a_running_ha_vm(ops: Any, pve: Any, ha_vm: str) -> None:
    ops.power(ha_vm, pb.POWER_OP_ON)
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=ha_vm), timeout=30).task)
    assert pve.vm(int(ha_vm)) is None


def test_ha_task_is_not_done_before_the_vm_is(ops: Any, pve: Any, ha_vm: str) -> None:
    resp = ops.stub.Power(pb.PowerRequest(id=ha_vm, op=pb.POWER_OP_ON), timeout=30)
    st = ops.stub.TaskStatus(pb.TaskStatusRequest(task=resp.task), timeout=10)
    assert not st.done or pve.vm(int(ha_vm)).status == "running"
    ops.h.wait(resp.task)
    assert pve.vm(int(ha_vm)).status == "running"
