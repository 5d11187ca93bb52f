"""What a connected libvirt host offers (vm_provider_libvirt.offers), seen
through GetCapabilities of a real server, and the refusal of what it does
not offer: on libvirt's test driver, and on a real daemon running QEMU."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace

import grpc
import pytest
from vm_provider_libvirt import offers
from vm_provider_libvirt.backend import LibvirtBackend
from vm_provider_libvirt.host import HostInfo, machine_version
from vmp_testplugins.testbed import libvirtd_uri

from provider_core import Capability
from provider_core.conformance.kit import missing_capability
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

#: What libvirt's test driver cannot do: it keeps no disk bytes and has no
#: volume streams, cannot resize volumes or disks, and lists no machine types.
NOT_ON_THE_TEST_DRIVER = {
    Capability.IMAGE_PREPARE,
    Capability.DISK_EXPORT,
    Capability.EXPORT_COMPRESSION,
    Capability.DISK_IMPORT,
    Capability.DISK_EXPANSION_ONLINE,
    Capability.HARDWARE_UPGRADE,
}


def flags(caps: pb.GetCapabilitiesResponse) -> dict[str, bool]:
    return {field.name: value for field, value in caps.ListFields() if field.name.startswith("supports_")}


@pytest.fixture
def embedded() -> Iterator[ProviderHarness]:
    """A server on the backend's defaults: libvirt's test driver,
    test:///default (one instance per process: the VMs of a test are
    deleted after it)."""
    with ProviderHarness.for_backend("libvirt", {}) as h:
        before = {vm.id for vm in h.stub.ListVMs(pb.ListVMsRequest(), timeout=10).vms}
        try:
            yield h
        finally:
            for vm in h.stub.ListVMs(pb.ListVMsRequest(), timeout=10).vms:
                if vm.id not in before:
                    h.wait(h.stub.Delete(pb.DeleteRequest(id=vm.id), timeout=10).task)


def test_the_test_driver_offers_what_it_can_do(embedded: ProviderHarness) -> None:
    caps = embedded.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
    assert flags(caps) == {
        "supports_reconfigure_online": True,
        "supports_snapshots": True,
        "supports_memory_snapshots": True,
        "supports_linked_clones": True,
    }
    assert list(caps.supported_disk_types) == ["thin", "thick", "qcow2", "raw"]
    assert list(caps.supported_network_types) == ["network", "bridge"]
    assert list(caps.supported_export_formats) == list(caps.supported_import_formats) == []
    offered = embedded.backend.offer()
    assert offered.capabilities == LibvirtBackend.capabilities - NOT_ON_THE_TEST_DRIVER


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_calls_outside_the_test_drivers_offer_answer_unimplemented_naming_the_capability(
    embedded: ProviderHarness,
) -> None:
    stub = embedded.stub
    vm = stub.Create(pb.CreateRequest(name="vmpt-offer", disks_json='[{"SizeGiB": 1}]'), timeout=30).id
    url = "http://127.0.0.1:9/never-fetched"
    calls: dict[Capability, Callable[[], object]] = {
        Capability.IMAGE_PREPARE: lambda: stub.ImagePrepare(
            pb.ImagePrepareRequest(image_json=json.dumps({"URL": url}), target_name="img"), timeout=10
        ),
        Capability.DISK_EXPORT: lambda: stub.ExportDisk(
            pb.ExportDiskRequest(vm_id=vm, destination_url=url, format="qcow2"), timeout=10
        ),
        Capability.DISK_IMPORT: lambda: stub.ImportDisk(
            pb.ImportDiskRequest(source_url=url, format="qcow2", target_name="imported"), timeout=10
        ),
        Capability.HARDWARE_UPGRADE: lambda: stub.HardwareUpgrade(pb.HardwareUpgradeRequest(id=vm), timeout=10),
    }
    for cap, call in calls.items():
        err = _refused(call)
        assert (err.code(), missing_capability(err)) == (grpc.StatusCode.UNIMPLEMENTED, cap.value), err.details()
    err = _refused(
        lambda: stub.ExportDisk(pb.ExportDiskRequest(vm_id=vm, destination_url=url, format="qcow2", compress=True), timeout=10)
    )
    assert missing_capability(err) == Capability.DISK_EXPORT.value  # the parent, not offered either


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_disk_growth_on_the_test_driver_is_unimplemented_and_changes_nothing(embedded: ProviderHarness, running: bool) -> None:
    """CPU and memory are reconfigured there; a disk cannot grow, whatever
    the power state, so the whole request is refused before any change."""
    stub = embedded.stub
    vm = stub.Create(
        pb.CreateRequest(name="vmpt-grow", class_json='{"CPU": 1, "MemoryMiB": 256}', disks_json='[{"SizeGiB": 1}]'),
        timeout=30,
    ).id
    if running:
        stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_ON), timeout=10)
    desired = {"Class": {"CPU": 2, "MemoryMiB": 512}, "Disks": [{"SizeGiB": 2}]}
    err = _refused(lambda: stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps(desired)), timeout=10))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "desired_json.Disks[0].SizeGiB: growing disk vda needs volume resizing" in (err.details() or "")
    assert "libvirt's test driver" in (err.details() or "")
    (listed,) = [v for v in stub.ListVMs(pb.ListVMsRequest(), timeout=10).vms if v.id == vm]
    assert (listed.cpu, listed.memory_mib) == (1, 256)
    stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json=json.dumps({"Class": desired["Class"]})), timeout=10)
    (listed,) = [v for v in stub.ListVMs(pb.ListVMsRequest(), timeout=10).vms if v.id == vm]
    assert (listed.cpu, listed.memory_mib) == (2, 512)


# -- the decision, host by host ---------------------------------------------------------

QEMU_HOST = HostInfo(
    driver="QEMU",
    hostname="kvm1",
    libvirt_version=9_000_000,
    hypervisor_version=7_002_000,
    arch="x86_64",
    domain_types=("qemu", "kvm"),
    machines=("pc-q35-7.2", "pc-i440fx-7.2"),
)


def test_a_qemu_host_offers_everything_declared() -> None:
    assert offers.offer(LibvirtBackend.declared(), QEMU_HOST) == LibvirtBackend.declared()


def test_a_daemon_without_sparse_streams_offers_no_disk_data_path() -> None:
    old = offers.offer(LibvirtBackend.declared(), replace(QEMU_HOST, libvirt_version=4_003_000))
    assert LibvirtBackend.capabilities - old.capabilities == {
        Capability.IMAGE_PREPARE,
        Capability.DISK_EXPORT,
        Capability.EXPORT_COMPRESSION,
        Capability.DISK_IMPORT,
    }
    assert old.export_formats == old.import_formats == ()


def test_a_host_without_machine_types_offers_no_hardware_upgrade() -> None:
    bare = offers.offer(LibvirtBackend.declared(), replace(QEMU_HOST, machines=()))
    assert LibvirtBackend.capabilities - bare.capabilities == {Capability.HARDWARE_UPGRADE}


@pytest.mark.libvirtd
def test_a_qemu_daemon_offers_everything_declared() -> None:
    with ProviderHarness.for_backend("libvirt", {"uri": libvirtd_uri()}) as h:
        caps = h.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
    assert flags(caps) == {
        "supports_reconfigure_online": True,
        "supports_disk_expansion_online": True,
        "supports_snapshots": True,
        "supports_memory_snapshots": True,
        "supports_linked_clones": True,
        "supports_image_import": True,
        "supports_disk_export": True,
        "supports_disk_import": True,
        "supports_export_compression": True,
    }
    assert list(caps.supported_export_formats) == list(caps.supported_import_formats) == ["qcow2", "raw", "vmdk"]
    assert list(caps.supported_disk_types) == ["thin", "thick", "qcow2", "raw"]


RHEL_9_2 = ("pc-q35-rhel9.2.0", "pc-q35-rhel9.0.0", "pc-q35-rhel8.6.0", "pc-q35-rhel7.6.0", "pc-i440fx-rhel7.6.0")
UBUNTU_24_04 = ("pc-q35-noble", "pc-q35-mantic", "pc-q35-jammy", "pc-q35-jammy-hpb", "pc-q35-8.2", "pc-i440fx-noble", "ubuntu")


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("pc-q35-7.2", ("pc-q35", (7, 2))),
        ("pc-i440fx-2.12", ("pc-i440fx", (2, 12))),
        ("pc-q35-rhel9.2.0", ("pc-q35-rhel", (9, 2, 0))),
        ("pc-i440fx-rhel7.6.0", ("pc-i440fx-rhel", (7, 6, 0))),
        ("pc-q35-noble", ("pc-q35-ubuntu", (24, 4))),
        ("pc-q35-jammy-hpb", ("pc-q35-ubuntu-hpb", (22, 4))),
        ("q35", None),
        ("ubuntu-q35", None),
        ("pc-q35-unknownname", None),
    ],
)
def test_machine_types_of_qemu_rhel_and_ubuntu_have_versions(name: str, parsed: object) -> None:
    assert machine_version(name) == parsed


def test_distribution_machine_types_make_families_to_upgrade_within() -> None:
    rhel = replace(QEMU_HOST, machines=RHEL_9_2).machine_families
    assert [n for _, n in rhel["pc-q35-rhel"]] == ["pc-q35-rhel7.6.0", "pc-q35-rhel8.6.0", "pc-q35-rhel9.0.0", "pc-q35-rhel9.2.0"]
    ubuntu = replace(QEMU_HOST, machines=UBUNTU_24_04).machine_families
    assert [n for _, n in ubuntu["pc-q35-ubuntu"]] == ["pc-q35-jammy", "pc-q35-mantic", "pc-q35-noble"]
    assert [n for _, n in ubuntu["pc-q35"]] == ["pc-q35-8.2"]
    for machines in (RHEL_9_2, UBUNTU_24_04):
        offered = offers.offer(LibvirtBackend.declared(), replace(QEMU_HOST, machines=machines))
        assert Capability.HARDWARE_UPGRADE in offered.capabilities
