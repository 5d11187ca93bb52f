"""Slow backend calls never stall the server; one VM's mutations are
serialised, different VMs' run in parallel.

Slow operations are held inside the backend on its gate (an Event the test
opens), so every check is about what happens while they are held, not about
how long anything takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from provider_core.pb import provider_pb2 as pb
from provider_core.runtime import KeyedThreadLocks
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins

SLOW = 32


def _eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.01)


def _waiting_for_lock(h: ProviderHarness, key: str) -> int:
    """How many calls hold or wait for the runtime's lock on ``key``."""
    assert h.server is not None
    return h.server.runtime._locks.users(key)


@pytest.mark.parametrize("operation", ["power", "create", "describe"])
def test_32_slow_operations_do_not_stall_health_or_other_vms(memory: ProviderHarness, operation: str) -> None:
    stub, backend = memory.stub, memory.backend
    for n in range(SLOW):
        stub.Create(pb.CreateRequest(name=f"slow-{n}"))
    stub.Create(pb.CreateRequest(name="fast"))
    backend.gate.clear()  # type: ignore[attr-defined]
    calls = {
        "power": lambda n: stub.Power.future(pb.PowerRequest(id=f"slow-{n}", op=pb.POWER_OP_ON), timeout=60),
        "create": lambda n: stub.Create.future(pb.CreateRequest(name=f"slow-new-{n}"), timeout=60),
        "describe": lambda n: stub.Describe.future(pb.DescribeRequest(id=f"slow-{n}"), timeout=60),
    }
    held = [calls[operation](n) for n in range(SLOW)]
    try:
        assert backend.wait_active(SLOW), "the slow calls did not all get into the backend"  # type: ignore[attr-defined]
        check = health_pb2_grpc.HealthStub(memory.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert stub.Describe(pb.DescribeRequest(id="fast"), timeout=5).exists
        assert stub.Power(pb.PowerRequest(id="fast", op=pb.POWER_OP_ON), timeout=5) == pb.TaskResponse()
        assert stub.Create(pb.CreateRequest(name="fast-2"), timeout=5).id == "fast-2"
        assert stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=5) is not None
        assert stub.TaskStatus(pb.TaskStatusRequest(), timeout=5).done
        # All of that answered while the slow ones were still inside.
        assert backend.active == SLOW  # type: ignore[attr-defined]
        assert not any(f.done() for f in held)
    finally:
        backend.gate.set()  # type: ignore[attr-defined]
    for f in held:
        f.result(timeout=30)


def test_mutations_of_one_vm_are_serialised(memory: ProviderHarness) -> None:
    stub, backend = memory.stub, memory.backend
    stub.Create(pb.CreateRequest(name="slow-a"))
    backend.gate.clear()  # type: ignore[attr-defined]
    ops = [pb.POWER_OP_ON, pb.POWER_OP_OFF, pb.POWER_OP_REBOOT, pb.POWER_OP_ON, pb.POWER_OP_SHUTDOWN_GRACEFUL]
    calls = [stub.Power.future(pb.PowerRequest(id="slow-a", op=op), timeout=60) for op in ops]
    try:
        assert backend.wait_active(1)  # type: ignore[attr-defined]
        _eventually(lambda: _waiting_for_lock(memory, "slow-a") == len(calls), "every call queued on the VM's lock")
        assert backend.active == 1  # type: ignore[attr-defined]
    finally:
        backend.gate.set()  # type: ignore[attr-defined]
    for f in calls:
        f.result(timeout=30)
    assert backend.overlaps == []  # type: ignore[attr-defined]
    assert backend.calls["power"] == len(ops)  # type: ignore[attr-defined]
    assert _waiting_for_lock(memory, "slow-a") == 0, "locks are dropped when unused"


def test_background_work_keeps_the_vm_locked(harness: Callable[..., ProviderHarness]) -> None:
    h = harness("memory", {"background": True})
    h.wait(h.stub.Create(pb.CreateRequest(name="slow-a")).task)
    h.backend.gate.clear()  # type: ignore[attr-defined]
    first = h.stub.Power(pb.PowerRequest(id="slow-a", op=pb.POWER_OP_ON), timeout=10).task
    second = h.stub.Power.future(pb.PowerRequest(id="slow-a", op=pb.POWER_OP_OFF), timeout=60)
    try:
        assert h.backend.wait_active(1)  # type: ignore[attr-defined]
        _eventually(lambda: _waiting_for_lock(h, "slow-a") == 2, "the second call waits for the first's work")
        assert not h.stub.TaskStatus(pb.TaskStatusRequest(task=first)).done
    finally:
        h.backend.gate.set()  # type: ignore[attr-defined]
    h.wait(first)
    h.wait(second.result(timeout=30).task)
    assert h.backend.overlaps == []  # type: ignore[attr-defined]


def test_different_vms_proceed_in_parallel(memory: ProviderHarness) -> None:
    stub, backend = memory.stub, memory.backend
    for name in ("slow-a", "slow-b"):
        stub.Create(pb.CreateRequest(name=name))
    backend.gate.clear()  # type: ignore[attr-defined]
    calls = [stub.Power.future(pb.PowerRequest(id=name, op=pb.POWER_OP_ON), timeout=60) for name in ("slow-a", "slow-b")]
    try:
        assert backend.wait_active(2), "both VMs' calls are inside the backend at once"  # type: ignore[attr-defined]
    finally:
        backend.gate.set()  # type: ignore[attr-defined]
    for f in calls:
        f.result(timeout=30)
    assert backend.peak >= 2  # type: ignore[attr-defined]


def test_a_clone_locks_its_source_and_its_target_name(plus: ProviderHarness) -> None:
    stub, backend = plus.stub, plus.backend
    stub.Create(pb.CreateRequest(name="slow-src"))
    backend.gate.clear()  # type: ignore[attr-defined]
    clone = stub.Clone.future(pb.CloneRequest(source_vm_id="slow-src", target_name="copy"), timeout=60)
    try:
        assert backend.wait_active(1)  # type: ignore[attr-defined]
        power = stub.Power.future(pb.PowerRequest(id="slow-src", op=pb.POWER_OP_ON), timeout=60)
        _eventually(lambda: _waiting_for_lock(plus, "slow-src") == 2, "power waits for the clone of its VM")
        assert _waiting_for_lock(plus, "copy") == 1
    finally:
        backend.gate.set()  # type: ignore[attr-defined]
    assert clone.result(timeout=30).target_vm_id == "copy"
    power.result(timeout=30)
    assert backend.overlaps == []  # type: ignore[attr-defined]


def test_deadline_exceeded_while_waiting_for_a_lock(memory: ProviderHarness) -> None:
    memory.stub.Create(pb.CreateRequest(name="slow-a"))
    memory.backend.gate.clear()  # type: ignore[attr-defined]
    first = memory.stub.Power.future(pb.PowerRequest(id="slow-a", op=pb.POWER_OP_ON), timeout=60)
    try:
        assert memory.backend.wait_active(1)  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            memory.stub.Power(pb.PowerRequest(id="slow-a", op=pb.POWER_OP_OFF), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _eventually(lambda: _waiting_for_lock(memory, "slow-a") == 1, "the abandoned waiter left the queue")
    finally:
        memory.backend.gate.set()  # type: ignore[attr-defined]
    first.result(timeout=30)
    assert memory.backend.calls["power"] == 1, "the abandoned call never reached the backend"  # type: ignore[attr-defined]


def test_one_vm_named_two_ways_is_still_serialised(memory: ProviderHarness) -> None:
    """Backend.lock_key gives the core one name per VM: a call naming the VM
    by an alias waits for a call naming it by its id."""
    stub, backend = memory.stub, memory.backend
    stub.Create(pb.CreateRequest(name="slow-twice"))
    backend.gate.clear()  # type: ignore[attr-defined]
    try:
        first = stub.Power.future(pb.PowerRequest(id="slow-twice", op=pb.POWER_OP_ON), timeout=30)
        assert backend.wait_active(1)  # type: ignore[attr-defined]
        second = stub.Power.future(pb.PowerRequest(id="alias:slow-twice", op=pb.POWER_OP_OFF), timeout=30)
        _eventually(lambda: _waiting_for_lock(memory, "slow-twice") == 2, "the aliased call waiting for the lock")
        assert backend.active == 1  # type: ignore[attr-defined]
    finally:
        backend.gate.set()  # type: ignore[attr-defined]
    first.result(timeout=30)
    second.result(timeout=30)
    assert backend.overlaps == []  # type: ignore[attr-defined]
    assert stub.Describe(pb.DescribeRequest(id="alias:slow-twice")).power_state == "Off"


def test_a_delete_by_id_waits_for_the_creation_it_names(harness: Callable[..., ProviderHarness]) -> None:
    """Create locks the VM by name, a Delete names it by the id Create
    returned (a Proxmox VMID, a libvirt UUID): one lock all the same, held
    until the creation's background work has ended."""
    h = harness("memory", {"background": True, "numbered_ids": True})
    backend = h.backend
    backend.gate.clear()  # type: ignore[attr-defined]
    try:
        created = h.stub.Create(pb.CreateRequest(name="slow-new"))
        assert backend.wait_active(1)  # type: ignore[attr-defined]
        assert created.id == "100"
        delete = h.stub.Delete.future(pb.DeleteRequest(id=created.id), timeout=60)
        _eventually(lambda: _waiting_for_lock(h, "slow-new") == 2, "the delete waits for the creation")
        assert backend.calls["delete"] == 0  # type: ignore[attr-defined]
    finally:
        backend.gate.set()  # type: ignore[attr-defined]
    h.wait(created.task)
    h.wait(delete.result(timeout=30).task)
    assert backend.overlaps == []  # type: ignore[attr-defined]
    assert not h.stub.Describe(pb.DescribeRequest(id=created.id)).exists
    assert _waiting_for_lock(h, "slow-new") == 0
    assert h.server is not None
    assert h.server.runtime._locks._aliases == {}


def test_a_creation_whose_caller_went_away_still_holds_its_new_id(harness: Callable[..., ProviderHarness]) -> None:
    """The client's deadline passes while the backend is still inside
    Create: the backend finishes, its background work runs on, and a Delete
    naming the id it returned still waits for that work."""
    h = harness("memory", {"background": True, "numbered_ids": True, "slow_calls": True})
    backend = h.backend
    backend.call_gate.clear()  # type: ignore[attr-defined]
    backend.gate.clear()  # type: ignore[attr-defined]
    try:
        with pytest.raises(grpc.RpcError) as info:
            h.stub.Create(pb.CreateRequest(name="slow-gone"), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        backend.call_gate.set()  # type: ignore[attr-defined]
        assert backend.wait_active(1)  # type: ignore[attr-defined]  # the creation's work runs
        delete = h.stub.Delete.future(pb.DeleteRequest(id="100"), timeout=60)
        _eventually(lambda: _waiting_for_lock(h, "slow-gone") == 2, "the delete waits for the abandoned creation")
        assert backend.calls["delete"] == 0  # type: ignore[attr-defined]
    finally:
        backend.call_gate.set()  # type: ignore[attr-defined]
        backend.gate.set()  # type: ignore[attr-defined]
    h.wait(delete.result(timeout=30).task)
    assert backend.overlaps == []  # type: ignore[attr-defined]
    assert not h.stub.Describe(pb.DescribeRequest(id="100")).exists
    assert h.server is not None
    assert h.server.runtime._locks._aliases == {}


# -- the thread-side twin of the runtime's locks, for backends ------------------------------


def test_keyed_thread_locks_serialise_one_key_not_others_and_forget_unused_keys() -> None:
    locks = KeyedThreadLocks()
    entered = threading.Event()
    order: list[str] = []

    def second(key: tuple[str, str], label: str) -> None:
        with locks.hold(key):
            order.append(label)

    with locks.hold(("pool", "a.qcow2")):
        other = threading.Thread(target=second, args=(("pool", "b.qcow2"), "other key"))
        other.start()
        other.join(10)
        assert order == ["other key"], "a lock on another key waited"
        same = threading.Thread(target=lambda: (entered.set(), second(("pool", "a.qcow2"), "same key")))
        same.start()
        assert entered.wait(10)
        _eventually(lambda: locks.users(("pool", "a.qcow2")) == 2, "the second holder waits")
        assert order == ["other key"]
    same.join(10)
    assert order == ["other key", "same key"]
    assert locks.users(("pool", "a.qcow2")) == 0
    assert locks.users(("pool", "b.qcow2")) == 0


def test_a_keyed_thread_lock_is_released_when_its_block_raises() -> None:
    locks = KeyedThreadLocks()
    with pytest.raises(ValueError, match="failed download"), locks.hold("k"):
        raise ValueError("failed download")
    assert locks.users("k") == 0
    with locks.hold("k"):  # free again
        assert locks.users("k") == 1
