"""Power: the state machine, graceful shutdown with and without a guest
that answers ACPI, and what a running VM shows (IPs, console)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def raw_states_during(h: ProviderHarness, vm: str, task: pb.TaskRef) -> set[str]:
    """The native states Describe shows until ``task`` is done."""
    seen = set()
    while True:
        seen.add(json.loads(h.stub.Describe(pb.DescribeRequest(id=vm)).provider_raw_json)["state"])
        if h.stub.TaskStatus(pb.TaskStatusRequest(task=task)).done:
            return seen


def test_graceful_shutdown_waits_for_the_guest(start: Callable[..., ProviderHarness]) -> None:
    h = start(shutdown_seconds=0.5)
    vm = h.stub.Create(pb.CreateRequest(name="polite"))
    h.wait(vm.task)
    h.wait(h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_ON)).task)
    task = h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_SHUTDOWN_GRACEFUL, graceful_timeout_seconds=30)).task
    seen = raw_states_during(h, vm.id, task)
    assert "shutting-down" in seen
    h.wait(task)
    described = h.stub.Describe(pb.DescribeRequest(id=vm.id))
    assert (described.power_state, json.loads(described.provider_raw_json)["state"]) == ("Off", "shutoff")


def test_a_guest_ignoring_acpi_is_forced_off_after_the_timeout(start: Callable[..., ProviderHarness]) -> None:
    h = start(shutdown_seconds=0.05)
    vm = h.stub.Create(pb.CreateRequest(name="deaf", class_json='{"ExtraConfig": {"sim.ignore_acpi": "true"}}'))
    h.wait(vm.task)
    h.wait(h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_ON)).task)
    task = h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_SHUTDOWN_GRACEFUL, graceful_timeout_seconds=1)).task
    seen = raw_states_during(h, vm.id, task)
    assert "shutting-down" not in seen
    h.wait(task)
    assert h.stub.Describe(pb.DescribeRequest(id=vm.id)).power_state == "Off"


def test_reboot_of_a_stopped_vm_is_refused(sim: ProviderHarness, create: Callable[..., str]) -> None:
    vm = create("stopped")
    with pytest.raises(grpc.RpcError) as err:
        sim.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_REBOOT))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "power it on instead" in err.value.details()


def test_power_during_create_waits_for_the_create_task(start: Callable[..., ProviderHarness]) -> None:
    """The core locks a VM by its name while Create's task runs, and the id
    Create returned names the same lock: Power by id waits for the task."""
    h = start(task_seconds=0.5)
    vm = h.stub.Create(pb.CreateRequest(name="slow"))
    assert vm.task.id
    assert not h.stub.TaskStatus(pb.TaskStatusRequest(task=vm.task)).done
    powered = h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_ON))
    assert h.stub.TaskStatus(pb.TaskStatusRequest(task=vm.task)).done, "Power began only once the creation had ended"
    h.wait(powered.task)
    assert h.stub.Describe(pb.DescribeRequest(id=vm.id)).power_state == "On"


def test_a_running_vm_has_stable_ips_and_a_console(sim: ProviderHarness, create: Callable[..., str]) -> None:
    networks = json.dumps(
        [{"NetworkName": "default"}, {"Bridge": "br0", "IPPolicy": "static", "StaticIP": "192.0.2.10", "Prefix": 24}]
    )
    vm = create("web", networks_json=networks)
    off = sim.stub.Describe(pb.DescribeRequest(id=vm))
    assert (off.power_state, list(off.ips), off.console_url) == ("Off", [], "")
    sim.wait(sim.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON)).task)
    first = sim.stub.Describe(pb.DescribeRequest(id=vm))
    second = sim.stub.Describe(pb.DescribeRequest(id=vm))
    assert first.power_state == "On"
    assert list(first.ips) == list(second.ips)
    assert len(first.ips) == 2
    assert first.ips[1] == "192.0.2.10"
    assert ipaddress.ip_address(first.ips[0]) in ipaddress.ip_network("10.88.0.0/16")
    assert first.console_url.startswith("vnc://127.0.0.1:59")
    (listed,) = [v for v in sim.stub.ListVMs(pb.ListVMsRequest()).vms if v.id == vm]
    assert [(n.name, n.ip_address) for n in listed.networks] == [("default", ""), ("br0", "192.0.2.10")]
