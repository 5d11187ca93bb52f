"""The RPCs end to end on the memory backend: conversion, idempotency, deadlines."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from vmp_testplugins.memory import MemoryBackend, MemorySettings

from provider_core import PowerOp
from provider_core.models import Disk, Nic, PowerState, VMInfo
from provider_core.pb import provider_pb2 as pb
from provider_core.service import _raw_json
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins


def test_raw_json_sorts_keys_and_carries_anything() -> None:
    raw = {"z": 1, "a": {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "path": Path("/var/lib/x"), 7: "seven"}}
    text = _raw_json(raw)
    assert list(json.loads(text)) == ["a", "z"]
    assert json.loads(text) == {"a": {"7": "seven", "path": "/var/lib/x", "when": "2026-01-02T03:04:05+00:00"}, "z": 1}
    assert json.loads(_raw_json({"b": 2**70, "a": 1.5})) == {"a": 1.5, "b": 2**70}  # beyond 64 bits


def test_validate(memory: ProviderHarness) -> None:
    assert memory.stub.Validate(pb.ValidateRequest()) == pb.ValidateResponse(ok=True, message="0 VM(s) in memory")


def test_life_of_a_vm(memory: ProviderHarness) -> None:
    stub = memory.stub
    stub.Create(pb.CreateRequest(name="web-1", class_json='{"CPU": 2, "MemoryMiB": 1024}', tags=["a", "b"]))
    described = stub.Describe(pb.DescribeRequest(id="web-1"))
    assert (described.exists, described.power_state) == (True, "Off")
    assert json.loads(described.provider_raw_json) == {"cpu": 2, "memory_mib": 1024, "name": "web-1"}
    stub.Power(pb.PowerRequest(id="web-1", op=pb.POWER_OP_ON))
    assert stub.Describe(pb.DescribeRequest(id="web-1")).power_state == "On"
    (vm,) = stub.ListVMs(pb.ListVMsRequest()).vms
    assert (vm.id, vm.name, vm.power_state, vm.cpu, vm.memory_mib) == ("web-1", "web-1", "On", 2, 1024)
    stub.Delete(pb.DeleteRequest(id="web-1"))
    assert not stub.Describe(pb.DescribeRequest(id="web-1")).exists
    assert list(stub.ListVMs(pb.ListVMsRequest()).vms) == []


@pytest.mark.parametrize(
    ("op", "expected", "state"),
    [
        (pb.POWER_OP_ON, PowerOp.ON, "On"),
        (pb.POWER_OP_OFF, PowerOp.OFF, "Off"),
        (pb.POWER_OP_REBOOT, PowerOp.REBOOT, "On"),
        (pb.POWER_OP_SHUTDOWN_GRACEFUL, PowerOp.SHUTDOWN_GRACEFUL, "Off"),
    ],
)
def test_power_ops(memory: ProviderHarness, op: int, expected: PowerOp, state: str) -> None:
    memory.stub.Create(pb.CreateRequest(name="vm"))
    memory.stub.Power(pb.PowerRequest(id="vm", op=op))  # type: ignore[arg-type]
    assert memory.backend.specs["power"] == (expected, 60.0)  # type: ignore[attr-defined]
    assert memory.stub.Describe(pb.DescribeRequest(id="vm")).power_state == state
    memory.stub.Power(pb.PowerRequest(id="vm", op=op, graceful_timeout_seconds=5))  # type: ignore[arg-type]
    assert memory.backend.specs["power"] == (expected, 5.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PowerRequest(id="vm"), "op"),
        (pb.PowerRequest(id="vm", op=99), "op"),  # type: ignore[arg-type]
        (pb.PowerRequest(id="vm", op=pb.POWER_OP_ON, graceful_timeout_seconds=-1), "graceful_timeout_seconds"),
        (pb.PowerRequest(id=" ", op=pb.POWER_OP_ON), "id"),
        (pb.PowerRequest(id="vm\x00", op=pb.POWER_OP_ON), "id"),
    ],
)
def test_bad_power_requests(memory: ProviderHarness, request_: pb.PowerRequest, field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        memory.stub.Power(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")


@pytest.mark.parametrize("name", ["", "   ", "bad\nname", "tab\there"])
def test_bad_names(memory: ProviderHarness, name: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        memory.stub.Create(pb.CreateRequest(name=name))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("name: ")


@pytest.mark.parametrize("vm_id", ["", " ", "vm\n", "v\x1fm", "\x00"])
def test_describe_refuses_blank_ids_and_control_characters(memory: ProviderHarness, vm_id: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        memory.stub.Describe(pb.DescribeRequest(id=vm_id))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("id: ")


# -- idempotency clients rely on -------------------------------------------------------


def test_create_of_an_existing_name_returns_that_vm(memory: ProviderHarness) -> None:
    first = memory.stub.Create(pb.CreateRequest(name="vm", class_json='{"CPU": 2}'))
    again = memory.stub.Create(pb.CreateRequest(name="vm", class_json='{"CPU": 8}'))
    assert again.id == first.id
    assert len(memory.stub.ListVMs(pb.ListVMsRequest()).vms) == 1
    assert json.loads(memory.stub.Describe(pb.DescribeRequest(id="vm")).provider_raw_json)["cpu"] == 2


def test_delete_of_a_missing_vm_succeeds(memory: ProviderHarness) -> None:
    assert memory.stub.Delete(pb.DeleteRequest(id="never-was")) == pb.TaskResponse()
    memory.stub.Create(pb.CreateRequest(name="vm"))
    memory.stub.Delete(pb.DeleteRequest(id="vm"))
    assert memory.stub.Delete(pb.DeleteRequest(id="vm")) == pb.TaskResponse()


def test_describe_of_a_missing_vm_is_exists_false(memory: ProviderHarness) -> None:
    assert memory.stub.Describe(pb.DescribeRequest(id="gone")) == pb.DescribeResponse(exists=False, power_state="Off")


def test_snapshot_delete_of_a_missing_snapshot_succeeds(plus: ProviderHarness) -> None:
    plus.stub.Create(pb.CreateRequest(name="vm"))
    snap = plus.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id="vm", name_hint="s1")).snapshot_id
    plus.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id="vm", snapshot_id=snap))
    assert plus.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id="vm", snapshot_id=snap)) == pb.TaskResponse()


def test_power_of_a_missing_vm_is_not_found(memory: ProviderHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        memory.stub.Power(pb.PowerRequest(id="gone", op=pb.POWER_OP_ON))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "VM 'gone' not found"


def test_revert_to_a_missing_snapshot_is_not_found(plus: ProviderHarness) -> None:
    plus.stub.Create(pb.CreateRequest(name="vm"))
    with pytest.raises(grpc.RpcError) as info:
        plus.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id="vm", snapshot_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ImportDiskRequest(source_url="https://h/a", target_name="a", verify_checksum=True), "expected_checksum"),
        (pb.ImportDiskRequest(source_url="https://h/a", target_name="a", expected_checksum="xyz"), "expected_checksum"),
        (pb.ImportDiskRequest(source_url="file:///etc/passwd", target_name="a"), "source_url"),
        (pb.ImportDiskRequest(source_url="https://h/a"), "target_name"),
    ],
)
def test_bad_import_requests(plus: ProviderHarness, request_: pb.ImportDiskRequest, field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        plus.stub.ImportDisk(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")


def test_import_accepts_a_prefixed_checksum(plus: ProviderHarness) -> None:
    digest = "ab" * 32
    resp = plus.stub.ImportDisk(
        pb.ImportDiskRequest(
            source_url="https://h/a", target_name="a", verify_checksum=True, expected_checksum=f"SHA256:{digest.upper()}"
        )
    )
    assert resp.checksum == digest


# -- deadlines ---------------------------------------------------------------------------


def test_a_backend_call_sees_the_clients_deadline(memory: ProviderHarness) -> None:
    memory.stub.Create(pb.CreateRequest(name="vm"), timeout=300)
    memory.stub.Describe(pb.DescribeRequest(id="vm"), timeout=30)
    memory.stub.Power(pb.PowerRequest(id="vm", op=pb.POWER_OP_ON), timeout=120)
    seen = memory.backend.deadlines  # type: ignore[attr-defined]
    # gRPC sends deadlines rounded up a little: "close to" is within a second.
    assert seen["create"] == pytest.approx(300, abs=1)
    assert seen["describe"] == pytest.approx(30, abs=1)
    assert seen["power"] == pytest.approx(120, abs=1)
    memory.stub.Validate(pb.ValidateRequest())
    assert seen["validate"] is None, "no deadline: unbounded"


def test_waiting_for_a_busy_vm_uses_up_the_deadline(memory: ProviderHarness) -> None:
    memory.stub.Create(pb.CreateRequest(name="slow-vm"))
    memory.backend.gate.clear()  # type: ignore[attr-defined]
    first = memory.stub.Power.future(pb.PowerRequest(id="slow-vm", op=pb.POWER_OP_ON))
    assert memory.backend.wait_active(1)  # type: ignore[attr-defined]
    second = memory.stub.Power.future(pb.PowerRequest(id="slow-vm", op=pb.POWER_OP_OFF), timeout=60)
    held = 2.0
    time.sleep(held)  # the second call waits for the first's lock all this time
    memory.backend.gate.set()  # type: ignore[attr-defined]
    first.result(timeout=10)
    second.result(timeout=10)
    assert memory.backend.deadlines["power"] < 60 - held + 0.5  # type: ignore[attr-defined]


def test_a_caller_that_gives_up_does_not_unlock_the_vm_early(memory: ProviderHarness) -> None:
    memory.stub.Create(pb.CreateRequest(name="slow-vm"))
    memory.backend.gate.clear()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        memory.stub.Power(pb.PowerRequest(id="slow-vm", op=pb.POWER_OP_ON), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The backend still runs the first power call; a second must wait for it.
    second = memory.stub.Power.future(pb.PowerRequest(id="slow-vm", op=pb.POWER_OP_OFF), timeout=30)
    released = threading.Timer(0.5, memory.backend.gate.set)  # type: ignore[attr-defined]
    released.start()
    second.result(timeout=10)
    released.join()
    assert memory.backend.overlaps == []  # type: ignore[attr-defined]
    assert memory.stub.Describe(pb.DescribeRequest(id="slow-vm")).power_state == "Off"


class _ThreadNoting(Mapping[str, str]):
    """A listed VM's raw fields, noting each thread that reads them."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.threads: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.threads.add(threading.current_thread().name)
        return self.fields[key]

    def __iter__(self) -> Iterator[str]:
        self.threads.add(threading.current_thread().name)
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)


def test_list_vms_is_answered_in_full_and_converted_off_the_event_loop(harness: Callable[..., ProviderHarness]) -> None:
    """Ten thousand VMs take the event loop a few hundred ms to convert:
    the answer is built and encoded in a worker thread, VM by VM."""
    raws = [_ThreadNoting({"state": "running", "n": str(n)}) for n in range(3)]

    class Listing(MemoryBackend):
        def list_vms(self) -> list[VMInfo]:
            return [
                VMInfo.model_construct(
                    id=f"id-{n}",
                    name=f"vm-{n}",
                    power_state=PowerState.SUSPENDED,
                    ips=["10.0.0.7"],
                    cpu=2,
                    memory_mib=512,
                    disks=[Disk(id="root", path=f"/d/{n}.qcow2", size_gib=10, format="qcow2")],
                    networks=[Nic(name="default", mac="52:54:00:00:00:07", ip_address="10.0.0.7")],
                    raw=raw,
                )
                for n, raw in enumerate(raws)
            ]

    h = harness(backend=Listing(MemorySettings()))
    answer = h.stub.ListVMs(pb.ListVMsRequest(), timeout=10)
    assert answer == pb.ListVMsResponse(
        vms=[
            pb.VMInfo(
                id=f"id-{n}",
                name=f"vm-{n}",
                power_state="Off",  # Suspended, in on-off words
                ips=["10.0.0.7"],
                cpu=2,
                memory_mib=512,
                disks=[pb.DiskInfo(id="root", path=f"/d/{n}.qcow2", size_gib=10, format="qcow2")],
                networks=[pb.NetworkInfo(name="default", mac="52:54:00:00:00:07", ip_address="10.0.0.7")],
                provider_raw={"state": "running", "n": str(n)},
            )
            for n in range(3)
        ]
    )
    threads = set().union(*(raw.threads for raw in raws))
    assert threads, "the answer was not built from the backend's VMs"
    assert all(name.startswith("memory-call-") for name in threads), threads  # the core's call workers, not the loop's thread


def test_list_vms_of_no_vms_is_an_empty_answer(memory: ProviderHarness) -> None:
    assert memory.stub.ListVMs(pb.ListVMsRequest(), timeout=10) == pb.ListVMsResponse()


def test_a_listed_vm_that_cannot_be_converted_is_answered_through_the_error_table(
    harness: Callable[..., ProviderHarness],
) -> None:
    """A VM the backend lists wrongly (a field protobuf refuses), met after
    others were converted: INTERNAL with a reference, no traceback, never
    UNKNOWN, and the next call is served."""

    class Broken(MemoryBackend):
        def list_vms(self) -> list[VMInfo]:
            good = [VMInfo.model_construct(id=f"id-{n}", name=f"vm-{n}", power_state=PowerState.ON, raw={}) for n in range(3)]
            return [*good, VMInfo.model_construct(id="id-bad", name=7, power_state=PowerState.ON, raw={})]

    h = harness(backend=Broken(MemorySettings()))
    with pytest.raises(grpc.RpcError) as info:
        h.stub.ListVMs(pb.ListVMsRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "internal error (ref " in (info.value.details() or "")
    assert "Traceback" not in (info.value.details() or "")
    assert h.stub.Describe(pb.DescribeRequest(id="vm-0"), timeout=5).power_state == "Off"
