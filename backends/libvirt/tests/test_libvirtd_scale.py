"""Costs that grow with the host, on the test bed's real daemon.

- A domain stuck in a job does not stall ListVMs: its QEMU is stopped
  (SIGSTOP), so a suspend sent to it holds the domain's job until QEMU
  continues; without NOWAIT getAllDomainStats would wait for that job
  (libvirt's 30 s job wait) before answering.
- A volume path libvirt does not know yet refreshes only the pool whose
  directory holds it.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
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


def test_a_file_copied_into_a_pool_behind_libvirts_back_refreshes_only_that_pool(real_host: Any) -> None:
    conn = libvirt.open(libvirtd_uri())
    default = conn.storagePoolLookupByName("default")
    default_dir = Path(ET.fromstring(default.XMLDesc(0)).findtext("target/path") or "")
    other_dir = real_host.boot / "other-pool"  # removed with the test guest's files
    other_dir.mkdir(mode=0o755, parents=True)
    other = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{real_host.name('other')}</name><target><path>{other_dir}</path></target></pool>", 0
    )
    late, unseen = real_host.name("late.qcow2"), real_host.name("unseen.qcow2")
    vm_id = ""
    try:
        shutil.copy(real_host.boot.parent.parent / "disk.qcow2", default_dir / late)
        shutil.copy(real_host.boot.parent.parent / "disk.qcow2", other_dir / unseen)
        assert late not in default.listVolumes()
        vm_id = real_host.create("late", image_json={"Path": str(default_dir / late)})
        assert late in default.listVolumes()
        assert unseen not in other.listVolumes()  # no other pool was refreshed
    finally:
        if vm_id:
            real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
        other.destroy()
        shutil.rmtree(other_dir, ignore_errors=True)
        (default_dir / late).unlink(missing_ok=True)
        default.refresh(0)
        conn.close()
