"""The backend reconnects by itself when libvirtd restarts.

The test bed's own daemon is restarted between two calls with
testbed/libvirtd.sh (the machine's qemu:///system is never touched). The
second call succeeds, a read as well as a change: nothing watches a local
connection between calls, so the first call after the restart meets the
closed socket; a read is retried on a new connection, and a change first
checks the connection with a cheap call that is.

This module restarts that daemon, which stops every running guest on it; it
runs last among the libvirt tests and uses only a stopped VM.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb

pytestmark = pytest.mark.libvirtd


def restart_libvirtd(testbed: str) -> None:
    for action in ("stop", "start"):
        done = subprocess.run(["bash", f"{testbed}/libvirtd.sh", action], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"libvirtd.sh {action} failed:\n{done.stdout}\n{done.stderr}"


def test_the_call_after_a_daemon_restart_succeeds(real_host: Any) -> None:
    from pathlib import Path

    testbed = str(Path(__file__).resolve().parents[3] / "testbed")
    vm_id = real_host.create("survivor")
    stub = real_host.stub
    before = stub.Describe(pb.DescribeRequest(id=vm_id))
    assert before.exists
    assert before.power_state == "Off"
    generation = real_host.harness.backend.session.connection.generation

    restart_libvirtd(testbed)

    after = stub.Describe(pb.DescribeRequest(id=vm_id))  # the very next call
    assert after.exists
    assert after.power_state == "Off"
    assert real_host.harness.backend.session.connection.generation == generation + 1
    assert any(vm.id == vm_id for vm in stub.ListVMs(pb.ListVMsRequest()).vms)
    assert stub.Validate(pb.ValidateRequest()).ok
    other = real_host.create("after-restart")
    real_host.harness.wait(stub.Delete(pb.DeleteRequest(id=other)).task)
    real_host.harness.wait(stub.Delete(pb.DeleteRequest(id=vm_id)).task)


def test_a_change_right_after_a_daemon_restart_succeeds(real_host: Any) -> None:
    from pathlib import Path

    testbed = str(Path(__file__).resolve().parents[3] / "testbed")
    real_host.stub.Validate(pb.ValidateRequest())  # the connection is open before the restart
    generation = real_host.harness.backend.session.connection.generation

    restart_libvirtd(testbed)

    vm_id = real_host.create("first-after-restart")  # the very next call
    assert real_host.harness.backend.session.connection.generation == generation + 1
    real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
