"""Every RPC against a real libvirt daemon running QEMU guests.

The guest (testbed/build-guest.sh) boots a Debian kernel and a busybox
initramfs by direct kernel boot in about 3 s under emulation, prints
VMP-GUEST-READY on its serial console, takes a DHCP lease and powers off
on the ACPI power button.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

import grpc
import libvirt
import pytest

from provider_core.pb import provider_pb2 as pb

pytestmark = pytest.mark.libvirtd

ON, OFF, REBOOT, SHUTDOWN = pb.POWER_OP_ON, pb.POWER_OP_OFF, pb.POWER_OP_REBOOT, pb.POWER_OP_SHUTDOWN_GRACEFUL
READY = "VMP-GUEST-READY"
HW = re.compile(r"VMP-GUEST-HW cpus=(\d+) mem_kib=(\d+)")
GIB = 2**30


def raw(host: Any, vm_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(host.stub.Describe(pb.DescribeRequest(id=vm_id)).provider_raw_json)
    return data


def domain(host: Any, vm_id: str) -> libvirt.virDomain:
    return host.harness.backend.session.lookup(vm_id)


@pytest.fixture(scope="module")
def running(real_host: Any) -> str:
    """One booted guest with a data disk, shared by the tests below in order."""
    vm_id = real_host.create("web", disks_json=[{"SizeGiB": 1}], user_data=b"#cloud-config\n", tags=["real"])
    assert real_host.power(vm_id, ON) == "On"
    real_host.wait_console(vm_id, READY)
    return vm_id


def test_validate_names_versions_and_picks_emulation_here(real_host: Any) -> None:
    report = real_host.stub.Validate(pb.ValidateRequest(), timeout=30)
    assert report.ok, report.message
    assert "QEMU 7." in report.message or "QEMU" in report.message
    assert "pool 'default'" in report.message
    assert "network 'default'" in report.message
    # KVM is offered here but its guests hang: the probe picks emulation.
    assert "domain type qemu" in report.message


def test_a_created_guest_boots_and_describes_itself(real_host: Any, running: str) -> None:
    status = real_host.stub.Describe(pb.DescribeRequest(id=running))
    assert status.power_state == "On"
    assert status.console_url.startswith("vnc://127.0.0.1:59")
    ips = real_host.wait_ips(running)
    assert ips[0].startswith("192.168.122.")
    details = raw(real_host, running)
    assert details["state"] == "running"
    assert details["domain_type"] == "qemu"
    assert details["machine"].startswith("pc-q35-")
    assert details["source"] == {"kind": "template", "ref": f"default/{real_host.base}"}
    assert [d["device"] for d in details["disks"]] == ["disk", "disk", "cdrom"]
    disk = real_host.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=running))
    assert (disk.disk_id, disk.format, disk.is_bootable) == ("vda", "qcow2", True)
    assert disk.backing_file.endswith(real_host.base)
    assert disk.virtual_size_bytes == 64 * 2**20
    assert 0 < disk.actual_size_bytes < disk.virtual_size_bytes
    listed = {vm.id: vm for vm in real_host.stub.ListVMs(pb.ListVMsRequest()).vms}
    assert listed[running].power_state == "On"
    assert list(listed[running].ips) == ips
    assert [(d.id, d.size_gib) for d in listed[running].disks] == [("vda", 0), ("vdb", 1)]


def guest_hw(host: Any, vm_id: str) -> list[tuple[int, int]]:
    """(vCPUs, MemTotal KiB) as the guest reported them, oldest first."""
    return [(int(c), int(m)) for c, m in HW.findall(host.console(vm_id))]


def settled_hw(host: Any, vm_id: str, balloon_kib: int) -> tuple[int, int]:
    """The guest's report once its balloon driver reached ``balloon_kib``
    and its reports stopped changing (it checks every 0.5 s)."""
    dom = domain(host, vm_id)
    end = time.monotonic() + 60
    while dom.memoryStats().get("actual") != balloon_kib or not guest_hw(host, vm_id):
        assert time.monotonic() < end, f"the balloon never reached {balloon_kib} KiB: {dom.memoryStats()}"
        time.sleep(0.2)
    last, since = guest_hw(host, vm_id)[-1], time.monotonic()
    while time.monotonic() - since < 2:
        assert time.monotonic() < end, f"the guest's reports do not settle: {guest_hw(host, vm_id)}"
        time.sleep(0.2)
        if guest_hw(host, vm_id)[-1] != last:
            last, since = guest_hw(host, vm_id)[-1], time.monotonic()
    return last


def test_online_cpu_memory_and_disk_growth(real_host: Any, running: str) -> None:
    cpus, mem_kib = settled_hw(real_host, running, 128 * 1024)  # booted with 256 MiB, ballooned to 128
    assert cpus == 1
    desired = {"Class": {"CPU": 2, "MemoryMiB": 192}, "Disks": [{"SizeGiB": 2}]}
    resp = real_host.stub.Reconfigure(pb.ReconfigureRequest(id=running, desired_json=json.dumps(desired)))
    real_host.harness.wait(resp.task)
    dom = domain(real_host, running)
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2
    # The guest itself sees the new vCPU and gets the balloon's 64 MiB back.
    cpus, grown_kib = settled_hw(real_host, running, 192 * 1024)
    assert cpus == 2
    assert 60 * 1024 <= grown_kib - mem_kib <= 64 * 1024, (mem_kib, grown_kib)
    config = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert config.findtext("currentMemory") == str(192 * 1024)
    assert dom.blockInfo("vdb")[0] == 2 * GIB
    details = raw(real_host, running)
    assert (details["vcpus"], details["max_memory_mib"], details["state"]) == (2, 256, "running")
    with pytest.raises(grpc.RpcError) as info:
        real_host.stub.Reconfigure(pb.ReconfigureRequest(id=running, desired_json=json.dumps({"Class": {"MemoryMiB": 1024}})))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "power it off" in (info.value.details() or "")


def test_memory_snapshot_and_revert_while_running(real_host: Any, running: str) -> None:
    stub = real_host.stub
    request = pb.SnapshotCreateRequest(vm_id=running, name_hint="live", include_memory=True)
    # vCPUs were hot-plugged above: QEMU could not restore such a snapshot.
    with pytest.raises(grpc.RpcError) as info:
        stub.SnapshotCreate(request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "hot-plugged" in (info.value.details() or "")
    assert real_host.power(running, OFF) == "Off"
    assert real_host.power(running, ON) == "On"
    real_host.wait_console(running, READY)
    resp = stub.SnapshotCreate(request)
    real_host.harness.wait(resp.task)
    snap = domain(real_host, running).snapshotLookupByName(resp.snapshot_id)
    assert "<memory snapshot='internal'/>" in snap.getXMLDesc(0)
    revert = stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=running, snapshot_id=resp.snapshot_id))
    real_host.harness.wait(revert.task)
    details = raw(real_host, running)
    assert (details["state"], details["reason"], details["vcpus"]) == ("running", "from_snapshot", 2)


def test_reboot_restarts_the_guest(real_host: Any, running: str) -> None:
    before = real_host.console(running).count(READY)
    assert real_host.power(running, REBOOT, graceful=30) == "On"
    real_host.wait_console(running, READY, count=before + 1)


def test_libvirts_event_loop_runs_only_while_needed(real_host: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A local daemon needs the loop only for domain events: a graceful
    reboot holds it until the guest's reboot event arrived (so the guest is
    not reset), and it stops after."""
    from vm_provider_libvirt import connection

    caplog.set_level(logging.INFO, logger="vm_provider_libvirt")
    vm_id = real_host.create("events")
    assert real_host.power(vm_id, ON) == "On"
    real_host.wait_console(vm_id, READY)
    assert not connection.event_loop_running()

    dom = domain(real_host, vm_id)
    conn = real_host.harness.backend.session.conn()
    seen: list[int] = []
    arrived = threading.Event()

    def on_lifecycle(_conn: object, _dom: object, event: int, _detail: int, _opaque: object) -> None:
        seen.append(event)
        arrived.set()

    with connection.event_loop():
        callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)
        try:
            dom.suspend()
            assert arrived.wait(10), "no event while the loop runs"
            dom.resume()
        finally:
            conn.domainEventDeregisterAny(callback)
    assert libvirt.VIR_DOMAIN_EVENT_SUSPENDED in seen
    assert not connection.event_loop_running()

    before = real_host.console(vm_id).count(READY)
    assert real_host.power(vm_id, REBOOT, graceful=30) == "On"
    real_host.wait_console(vm_id, READY, count=before + 1)
    assert "did not reboot" not in caplog.text  # the reboot event arrived: no reset
    assert not connection.event_loop_running()
    real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)


def test_paused_is_suspended_and_forced_off_after_the_timeout(real_host: Any, running: str) -> None:
    domain(real_host, running).suspend()
    assert real_host.stub.Describe(pb.DescribeRequest(id=running)).power_state == "Suspended"
    start = time.monotonic()
    assert real_host.power(running, SHUTDOWN, graceful=2) == "Off"
    assert time.monotonic() - start >= 2  # it waited for the guest, which could not react
    assert raw(real_host, running)["reason"] == "destroyed"


def test_graceful_shutdown_powers_the_guest_off(real_host: Any, running: str) -> None:
    assert real_host.power(running, ON) == "On"
    real_host.wait_console(running, READY)
    assert real_host.power(running, SHUTDOWN, graceful=30) == "Off"
    assert raw(real_host, running)["reason"] == "shutdown"  # the guest itself powered off
    assert "VMP-GUEST-POWEROFF" in real_host.console(running)


def test_stopped_snapshot_is_disk_only_and_reverts_stopped(real_host: Any, running: str) -> None:
    resp = real_host.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=running, name_hint="cold"))
    assert not resp.task.id  # a stopped VM's snapshot is quick
    snap = domain(real_host, running).snapshotLookupByName("cold")
    xml = ET.fromstring(snap.getXMLDesc(0))
    assert xml.findtext("state") == "shutoff"
    assert {d.get("name"): d.get("snapshot") for d in xml.findall("disks/disk")} == {
        "vda": "internal",
        "vdb": "internal",
        "sda": "no",
    }
    assert real_host.power(running, ON) == "On"
    real_host.harness.wait(real_host.stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=running, snapshot_id="cold")).task)
    assert real_host.stub.Describe(pb.DescribeRequest(id=running)).power_state == "Off"
    assert set(real_host.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=running)).snapshots) == {"live", "cold"}


def test_hardware_upgrade_moves_a_stopped_vm_forward(real_host: Any) -> None:
    klass = real_host.guest_class()
    klass["ExtraConfig"]["libvirt.machine"] = "pc-q35-7.0"
    vm_id = real_host.create("old", class_json=klass)
    stub = real_host.stub
    with pytest.raises(grpc.RpcError) as info:
        stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm_id, target_version=99))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "versions: 2, 3, 4, 5, 6, 7" in (info.value.details() or "")
    stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm_id, target_version=7))
    assert raw(real_host, vm_id)["machine"] == "pc-q35-7.2"
    with pytest.raises(grpc.RpcError) as info:
        stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm_id, target_version=6))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # never backwards
    stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm_id, target_version=0))  # already the newest
    stub.Power(pb.PowerRequest(id=vm_id, op=ON))
    with pytest.raises(grpc.RpcError) as info:
        stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.Delete(pb.DeleteRequest(id=vm_id))


def test_delete_a_vm_with_snapshots_removes_everything(real_host: Any, running: str) -> None:
    conn = real_host.harness.backend.session.conn()
    paths = [d["path"] for d in raw(real_host, running)["disks"]]
    real_host.power(running, ON)
    resp = real_host.stub.Delete(pb.DeleteRequest(id=running))
    real_host.harness.wait(resp.task)
    assert not real_host.stub.Describe(pb.DescribeRequest(id=running)).exists
    for path in paths:
        with pytest.raises(libvirt.libvirtError):
            conn.storageVolLookupByPath(path)
    assert conn.storagePoolLookupByName("default").storageVolLookupByName(real_host.base)  # the template stays


def test_uefi_firmware_is_selected_by_libvirt(real_host: Any) -> None:
    vm_id = real_host.create("efi", class_json=real_host.guest_class(Firmware="UEFI"))
    assert raw(real_host, vm_id)["firmware"] == "efi"
    assert real_host.power(vm_id, ON) == "On"
    live = ET.fromstring(domain(real_host, vm_id).XMLDesc(0))
    loader = live.find("os/loader")
    assert loader is not None
    assert "OVMF" in (loader.text or "")
    nvram = live.findtext("os/nvram") or ""
    assert nvram
    real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
    assert not real_host.stub.Describe(pb.DescribeRequest(id=vm_id)).exists


def test_a_path_image_is_copied_and_grown(real_host: Any) -> None:
    image = {"Path": f"default/{real_host.base}"}
    vm_id = real_host.create("copied", image_json=image, class_json=real_host.guest_class(DiskDefaults={"SizeGiB": 1}))
    disk = real_host.stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id))
    assert disk.backing_file == ""
    assert disk.virtual_size_bytes == GIB
    assert disk.path.endswith(f"{real_host.name('copied')}-vda.qcow2")
    assert real_host.power(vm_id, ON) == "On"
    real_host.wait_console(vm_id, "VMP-GUEST-DISKS vda")
    real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
