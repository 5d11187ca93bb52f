"""The error table: every row proven, with Proxmox's own messages, and
the main rows end to end through a real server and the simulator."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
import requests
from proxmoxer import ResourceException
from proxmoxer.core import AuthenticationError
from vm_provider_proxmox import errors

from provider_core import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from provider_core.pb import provider_pb2 as pb

#: (HTTP status or None for a task's exit status, Proxmox's message, the error it becomes)
SAMPLES: list[tuple[int | None, str, type[ProviderError]]] = [
    (500, "Configuration file 'nodes/pve1/qemu-server/555.conf' does not exist", NotFound),
    (500, "unable to find configuration file for VM 555 on node 'pve1'", NotFound),
    (500, "VM is locked (backup)", errors.Locked),
    (None, "VM is locked (snapshot-delete)", errors.Locked),
    (500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout", errors.Locked),
    (500, "unable to create VM 100 - VM 100 already exists on node 'pve2'", errors.VmidTaken),
    (500, "unable to create VM 101: config file already exists", errors.VmidTaken),
    (500, "unable to parse worker upid 'UPID:pve1:0:0:0:x:1:root@pam:'", NotFound),
    (None, "snapshot 'nope' does not exist", NotFound),
    (None, "unable to create VM 152 - volume local:iso/missing.iso does not exist", NotFound),
    (None, "snapshot name 's2' already used", AlreadyExists),
    (403, "Permission check failed (/vms/101, VM.Audit)", PermissionDenied),
    (403, "only root can set 'hookscript' config", PermissionDenied),
    (403, "user has no access to this resource", PermissionDenied),
    (500, "checksum mismatch (file change by other user?)", Aborted),
    (500, "cluster not ready - no quorum?", Unavailable),
    (500, "VM 100 qmp command 'guest-ping' failed - got timeout", Unavailable),
    (500, "storage 'cephfs' is not online", Unavailable),
    (500, "storage 'local-lvm' is not available on node 'pve2'", FailedPrecondition),
    (None, "unable to create VM 104 - storage 'local-lvm' is not available on node 'pve2'", FailedPrecondition),
    (500, "can't clone VM to node 'pve2' (VM uses local storage)", FailedPrecondition),
    (500, "no such cluster node 'pve9'", InvalidArgument),
    (None, "checksum mismatch: got 'aa' != expect 'bb'", InvalidArgument),
    (None, "close (rename) atomic file '/etc/pve/nodes/pve1/qemu-server/104.conf' failed: File exists", errors.VmidTaken),
    (500, "a plain error of some Proxmox API handler", FailedPrecondition),
    (500, "Linked clone feature is not supported for 'local-lvm:vm-102-disk-0' (scsi0)", FailedPrecondition),
    (500, "parameter 'storage' not allowed for linked clones", InvalidArgument),
    (500, "storage 'nope' does not exist", InvalidArgument),
    (500, "hostname lookup 'nope' failed - failed to get address info for: nope: Name or service not known", InvalidArgument),
    (500, "storage 'local' is not configured for content-type 'import'", InvalidArgument),
    (None, "VM quit/powerdown failed - got timeout", DeadlineExceeded),
    (500, "VM 100 not running", FailedPrecondition),
    (500, "VM 100 is running - destroy failed", FailedPrecondition),
    (None, "you can't start a vm if it's a template", FailedPrecondition),
    (401, "permission denied - invalid PVE ticket", Unauthenticated),
    (401, "authentication failure", Unauthenticated),
    (404, "Not Found", Unimplemented),
    (501, "Method 'POST /api2/json/version' not implemented", Unimplemented),
]


def _first_rule(status: int | None, text: str) -> int:
    for i, rule in enumerate(errors.RULES):
        if (rule.status is None or rule.status == status) and rule.pattern.search(text):
            return i
    return -1


def test_every_row_has_a_sample() -> None:
    proven = {_first_rule(status, text) for status, text, _ in SAMPLES}
    unproven = [rule.pattern.pattern for i, rule in enumerate(errors.RULES) if i not in proven]
    assert not unproven, f"rows without a sample: {unproven}"


@pytest.mark.parametrize(("status", "text", "cls"), SAMPLES)
def test_row(status: int | None, text: str, cls: type[ProviderError]) -> None:
    if status is None:
        err = errors.from_task(text, ["line one", "line two"])
        assert "line two" in str(err)
    else:
        err = errors.translate(ResourceException(status, "reason", text))
    assert type(err) is cls, err
    assert text in str(err) or cls in (Unauthenticated,)


def test_parameter_errors_name_the_parameters_and_hide_secrets() -> None:
    exc = ResourceException(
        400,
        "Bad Request",
        "Parameter verification failed.",
        errors={"cores": "type check ('integer') failed - got 'x'", "cipassword": "bad value hunter2"},
    )
    err = errors.translate(exc)
    assert isinstance(err, InvalidArgument)
    assert dict(err.violations)["cores"] == "type check ('integer') failed - got 'x'"
    assert "hunter2" not in str(err)
    assert "hunter2" not in str(err.violations)


def test_other_failures() -> None:
    assert type(errors.translate(ResourceException(503, "Service Unavailable", "busy"))) is Unavailable
    assert type(errors.translate(ResourceException(595, "x", "No route to host"))) is Unavailable
    assert type(errors.translate(ResourceException(418, "x", "odd"))) is InvalidArgument
    assert type(errors.translate(requests.exceptions.ConnectionError("refused"))) is Unavailable
    assert type(errors.translate(requests.exceptions.ReadTimeout("slow"))) is Unavailable
    assert type(errors.translate(AuthenticationError("Couldn't authenticate user: x"))) is Unauthenticated
    assert type(errors.from_task("something odd happened")) is FailedPrecondition
    with pytest.raises(TypeError):
        errors.translate(ValueError("not ours"))


# -- end to end: Proxmox's answer -> the gRPC status a client sees -------------------------


def test_400_is_invalid_argument_naming_the_field(ops: Any) -> None:
    code, message = ops.fails(
        lambda: ops.stub.Create(pb.CreateRequest(name="bad-1", class_json='{"ExtraConfig": {"cores": "x"}}'), timeout=30)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "class_json.ExtraConfig.cores" in message


def test_403_is_permission_denied(ops: Any, pve: Any) -> None:
    vm = ops.create("perm-1")
    pve.grant("vmp@pve!ci", "/vms", "VM.Audit")
    code, message = ops.fails(lambda: ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=30))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "VM.PowerMgmt" in message


def test_missing_vm_is_not_found(ops: Any) -> None:
    code, _ = ops.fails(lambda: ops.stub.Power(pb.PowerRequest(id="555", op=pb.POWER_OP_ON), timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND
    assert not ops.describe("555").exists


def test_5xx_is_unavailable(ops: Any, pve: Any) -> None:
    pve.fail("GET", "/cluster/resources", 503, "service unavailable")
    code, message = ops.fails(lambda: ops.stub.ListVMs(pb.ListVMsRequest(), timeout=10))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "service unavailable" in message


def test_passing_5xx_is_retried(ops: Any, pve: Any) -> None:
    pve.fail("GET", "/cluster/resources", 503, "service unavailable", times=2)
    assert list(ops.stub.ListVMs(pb.ListVMsRequest(), timeout=10).vms) == []


def test_lock_is_retried_then_aborted_naming_it(ops: Any, pve: Any) -> None:
    vm = ops.create("locked-1")
    pve.snapshot_lock(int(vm), "backup")
    code, message = ops.fails(lambda: ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=3))
    assert code is grpc.StatusCode.ABORTED  # answered before the deadline: not DEADLINE_EXCEEDED
    assert "backup" in message


def test_lock_released_while_retrying(ops: Any, pve: Any) -> None:
    vm = ops.create("locked-2")
    pve.snapshot_lock(int(vm), "backup")
    timer = threading.Timer(0.5, pve.unlock, args=(int(vm),))
    timer.start()
    try:
        ops.power(vm, pb.POWER_OP_ON)
    finally:
        timer.cancel()
    assert ops.state(vm) == "On"


def test_config_lock_timeout_is_retried(ops: Any, pve: Any) -> None:
    vm = ops.create("locked-3")
    pve.fail("PUT", f"/nodes/pve1/qemu/{vm}/config", error="config_lock_timeout", times=2)
    resp = ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=9), timeout=30)
    ops.h.wait(resp.task)
    assert pve.vm(int(vm)).config["machine"] == "pc-i440fx-9.0"


def test_config_lock_held_too_long_is_aborted(ops: Any, pve: Any) -> None:
    vm = ops.create("locked-4")
    pve.fail("PUT", f"/nodes/pve1/qemu/{vm}/config", error="config_lock_timeout")
    code, message = ops.fails(lambda: ops.stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm, target_version=9), timeout=3))
    assert code is grpc.StatusCode.ABORTED
    assert "lock" in message
