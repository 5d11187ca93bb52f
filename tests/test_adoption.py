"""Power words on the wire and VMs this provider did not make, through a
real server on the sim backend (its ``foreign_vms`` are VMs found on the
host)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from provider_core import operations as ops
from provider_core.models import PowerState
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

FAST = {"task_seconds": 0.01, "shutdown_seconds": 0.05}
Start = Callable[..., ProviderHarness]


@pytest.fixture
def start() -> Iterator[Start]:
    """``start(settings, **server)``: a server on the sim backend."""
    started: list[ProviderHarness] = []

    def make(settings: dict[str, Any] | None = None, **server: Any) -> ProviderHarness:
        h = ProviderHarness.for_backend("sim", {**FAST, **(settings or {})}, **server)
        started.append(h)
        return h.start()

    yield make
    for h in reversed(started):
        h.stop()


def listed(h: ProviderHarness, name: str) -> pb.VMInfo:
    (vm,) = [vm for vm in h.stub.ListVMs(pb.ListVMsRequest()).vms if vm.name == name]
    return vm


# -- power words ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "on_off", "detailed"),
    [
        (PowerState.ON, "On", "On"),
        (PowerState.OFF, "Off", "Off"),
        (PowerState.SUSPENDED, "Off", "Suspended"),
        (PowerState.UNKNOWN, "Off", "Unknown"),
    ],
)
def test_power_words_of_each_state(state: PowerState, on_off: str, detailed: str) -> None:
    assert (state.word(detailed=False), state.word(detailed=True)) == (on_off, detailed)


def _paused(h: ProviderHarness) -> str:
    """A running VM paused while a memory snapshot is saved (its task runs 2 s)."""
    vm = h.stub.Create(pb.CreateRequest(name="paused"))
    h.wait(vm.task)
    h.wait(h.stub.Power(pb.PowerRequest(id=vm.id, op=pb.POWER_OP_ON)).task)
    h.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm.id, name_hint="s1", include_memory=True))
    return str(vm.id)


@pytest.mark.parametrize(
    ("setting", "word"), [({}, "Off"), ({"power_states": "on-off"}, "Off"), ({"power_states": "detailed"}, "Suspended")]
)
def test_a_paused_vm_is_off_unless_detailed_words_are_asked_for(start: Start, setting: dict[str, str], word: str) -> None:
    h = start({"task_seconds": 2.0}, **setting)
    vm = _paused(h)
    described = h.stub.Describe(pb.DescribeRequest(id=vm))
    assert described.power_state == word
    assert json.loads(described.provider_raw_json)["state"] == "paused"  # the native state, whatever the words
    entry = listed(h, "paused")
    assert (entry.power_state, entry.provider_raw["state"]) == (word, "paused")


@pytest.mark.parametrize(("setting", "word"), [({}, "Off"), ({"power_states": "detailed"}, "Unknown")])
def test_describe_of_a_missing_vm(start: Start, setting: dict[str, str], word: str) -> None:
    h = start(**setting)
    answer = h.stub.Describe(pb.DescribeRequest(id="no-such-vm"))
    assert (answer.exists, answer.power_state) == (False, word)


def test_the_power_states_setting_is_refused_when_misspelt() -> None:
    with pytest.raises(ValueError, match="power_states"):
        ProviderHarness.for_backend("sim", {}, power_states="fine")


# -- VMs this provider did not make -------------------------------------------------

OWNED = {"Power", "Delete", "Reconfigure", "SnapshotCreate", "SnapshotRevert", "SnapshotDelete", "Clone", "HardwareUpgrade"}


def test_the_table_says_which_rpcs_change_a_vm_that_must_be_the_providers() -> None:
    assert {op.rpc for op in ops.OPERATIONS.values() if op.owned or op.copies} == OWNED
    assert {op.rpc for op in ops.OPERATIONS.values() if op.copies} == {"Clone"}
    for op in ops.OPERATIONS.values():
        if op.owned or op.copies:
            assert op.mutates, op.rpc
            assert op.vm, op.rpc


def _changes(vm: str) -> list[tuple[str, Any]]:
    return [
        ("HardwareUpgrade", pb.HardwareUpgradeRequest(id=vm, target_version=20)),
        ("Power", pb.PowerRequest(id=vm, op=pb.POWER_OP_ON)),
        ("Reconfigure", pb.ReconfigureRequest(id=vm, desired_json=json.dumps({"Class": {"CPU": 2}}))),
        ("SnapshotCreate", pb.SnapshotCreateRequest(vm_id=vm, name_hint="s1")),
        ("SnapshotRevert", pb.SnapshotRevertRequest(vm_id=vm, snapshot_id="s1")),
        ("SnapshotDelete", pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id="s1")),
        ("Clone", pb.CloneRequest(source_vm_id=vm, target_name="copy")),
        ("Delete", pb.DeleteRequest(id=vm)),
    ]


def test_foreign_vms_are_listed_and_read_but_not_changed_by_default(start: Start) -> None:
    h = start({"foreign_vms": ["legacy"]})
    mine = h.stub.Create(pb.CreateRequest(name="mine"))
    h.wait(mine.task)
    legacy = listed(h, "legacy")
    assert (legacy.provider_raw["managed"], listed(h, "mine").provider_raw["managed"]) == ("false", "true")
    assert h.stub.Describe(pb.DescribeRequest(id=legacy.id)).exists
    assert h.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=legacy.id)).disk_id
    assert {rpc for rpc, _ in _changes(legacy.id)} == OWNED
    for rpc, request in _changes(legacy.id):
        with pytest.raises(grpc.RpcError) as err:
            getattr(h.stub, rpc)(request)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert "manage_foreign_vms" in str(err.value.details()), rpc
        assert "VM_PROVIDER_SERVER_MANAGE_FOREIGN_VMS" in str(err.value.details()), rpc
    after = listed(h, "legacy")
    assert (after.power_state, after.cpu, after.provider_raw["hardware_version"]) == (
        legacy.power_state,
        legacy.cpu,
        legacy.provider_raw["hardware_version"],
    )
    assert "copy" not in [vm.name for vm in h.stub.ListVMs(pb.ListVMsRequest()).vms]
    # the provider's own VMs are not affected by the setting
    h.wait(h.stub.Power(pb.PowerRequest(id=mine.id, op=pb.POWER_OP_ON)).task)


def test_a_missing_vm_passes_the_check(start: Start) -> None:
    h = start({"foreign_vms": ["legacy"]})
    h.wait(h.stub.Delete(pb.DeleteRequest(id="gone")).task)  # Delete of a missing VM succeeds
    with pytest.raises(grpc.RpcError) as err:
        h.stub.Power(pb.PowerRequest(id="gone", op=pb.POWER_OP_ON))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_foreign_vms_are_managed_when_the_operator_allows_it(start: Start) -> None:
    h = start({"foreign_vms": ["legacy"]}, manage_foreign_vms=True)
    vm = listed(h, "legacy").id
    h.wait(h.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=20)).task)
    h.wait(h.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON)).task)
    assert h.stub.Describe(pb.DescribeRequest(id=vm)).power_state == "On"
    h.wait(h.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps({"Class": {"CPU": 2}}))).task)
    snap = h.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm, name_hint="s1"))
    h.wait(snap.task)
    h.wait(h.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm, snapshot_id=snap.snapshot_id)).task)
    h.wait(h.stub.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id=vm, snapshot_id=snap.snapshot_id)).task)
    h.wait(h.stub.Clone(pb.CloneRequest(source_vm_id=vm, target_name="copy")).task)
    entry = listed(h, "legacy")
    assert (entry.cpu, entry.provider_raw["hardware_version"]) == (2, "20")
    assert entry.provider_raw["managed"] == "false"  # still not made by this provider
    copy = listed(h, "copy")
    assert copy.provider_raw["managed"] == "true"  # a clone of it is
    h.wait(h.stub.Delete(pb.DeleteRequest(id=copy.id)).task)
    h.wait(h.stub.Delete(pb.DeleteRequest(id=vm)).task)
    assert not h.stub.Describe(pb.DescribeRequest(id=vm)).exists
