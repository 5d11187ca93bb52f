"""A domain stuck in a job on the test bed's real daemon does not stall
ListVMs: its QEMU is stopped (SIGSTOP), so a suspend sent to it holds the
domain's job until QEMU continues; without NOWAIT getAllDomainStats would
wait for that job (libvirt's 30 s job wait) before answering."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import libvirt
import pytest
from vmp_testplugins.testbed import libvirtd_socket, libvirtd_uri

from provider_core.pb import provider_pb2 as pb

pytestmark = pytest.mark.libvirtd


def test_a_vm_stuck_in_a_job_does_not_stall_listvms(real_host: Any) -> None:
    vm_id = real_host.create("stuck")
    name = real_host.name("stuck")
    conn = libvirt.open(libvirtd_uri())
    stopped = 0
    try:
        assert real_host.power(vm_id, pb.POWER_OP_ON) == "On"
        socket = libvirtd_socket()
        assert socket is not None
        pid = int((socket.parent / "qemu" / f"{name}.pid").read_text())
        dom = conn.lookupByUUIDString(vm_id)
        os.kill(pid, signal.SIGSTOP)
        stopped = pid
        holder = threading.Thread(target=lambda: _suspend_quietly(dom), daemon=True)
        holder.start()
        time.sleep(1.0)
        assert holder.is_alive(), "the suspend should wait on the stopped QEMU, holding the domain's job"

        start = time.monotonic()
        listed = real_host.stub.ListVMs(pb.ListVMsRequest(), timeout=60)
        took = time.monotonic() - start
        assert took < 5, f"ListVMs took {took:.1f}s with a domain in a job"
        assert vm_id in {vm.id for vm in listed.vms}
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        conn.close()
        real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)


def _suspend_quietly(dom: libvirt.virDomain) -> None:
    try:
        dom.suspend()
    except libvirt.libvirtError:
        pass  # the domain went away at the test's end
