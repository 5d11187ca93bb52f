"""UEFI guests on the test bed's real daemon: which firmware libvirt's
auto-selection picks for a plain UEFI VM and for a Secure Boot one (judged
by the firmware descriptors of /usr/share/qemu/firmware, Debian's ``ovmf``),
and snapshots of UEFI VMs, which libvirt refuses while they run.

The test guest boots by direct kernel boot; under OVMF it may or may not
boot, but the domain runs, which is what libvirt's checks look at.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest
from vm_provider_libvirt import domxml, host, marks
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.testbed import libvirtd_uri

from provider_core.pb import provider_pb2 as pb

pytestmark = pytest.mark.libvirtd

DESCRIPTORS = Path("/usr/share/qemu/firmware")


def firmware_features() -> dict[str, set[str]]:
    """Firmware code file -> its features, from the host's descriptors."""
    out: dict[str, set[str]] = {}
    for path in sorted(DESCRIPTORS.glob("*.json")):
        desc = json.loads(path.read_text())
        code = desc.get("mapping", {}).get("executable", {}).get("filename", "")
        if code:
            out.setdefault(code, set()).update(desc.get("features", []))
    return out


@pytest.fixture(scope="module")
def ovmf() -> dict[str, set[str]]:
    found = firmware_features()
    if not any("secure-boot" in f for f in found.values()) or not found:
        skip_missing("needs OVMF with and without Secure Boot (Debian package ovmf, testbed/install.sh)")
    return found


def domain_os(host: Any, vm_id: str, flags: int = 0) -> ET.Element:
    conn = libvirt.open(libvirtd_uri())
    try:
        root = ET.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc(flags))
    finally:
        conn.close()
    os_el = root.find("os")
    assert os_el is not None
    return os_el


def features_asked(os_el: ET.Element) -> dict[str, str]:
    return {f.get("name", ""): f.get("enabled", "") for f in os_el.findall("firmware/feature")}


def uefi_vm(host: Any, suffix: str, secure: bool = False) -> str:
    profile = {"SecurityProfile": {"SecureBoot": True}} if secure else {}
    return host.create(suffix, class_json=host.guest_class(Firmware="UEFI", **profile))


def snapshot(host: Any, vm_id: str, hint: str) -> str:
    resp = host.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm_id, name_hint=hint, include_memory=True))
    host.harness.wait(resp.task)
    return str(resp.snapshot_id)


def test_a_plain_uefi_vm_never_gets_secure_boot_firmware(real_host: Any, ovmf: dict[str, set[str]]) -> None:
    vm_id = uefi_vm(real_host, "uefi")
    try:
        defined = domain_os(real_host, vm_id, libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert defined.get("firmware") == "efi"
        assert features_asked(defined) == {"secure-boot": "no", "enrolled-keys": "no"}
        assert defined.find("loader[@secure='yes']") is None
        assert real_host.power(vm_id, pb.POWER_OP_ON) == "On"
        loader = domain_os(real_host, vm_id).find("loader")
        assert loader is not None
        assert loader.get("type") == "pflash"
        assert "secure-boot" not in ovmf[loader.text or ""], loader.text
        assert loader.get("secure") != "yes"
    finally:
        real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)


def test_a_secure_boot_vm_gets_secure_boot_firmware_with_enrolled_keys(real_host: Any, ovmf: dict[str, set[str]]) -> None:
    vm_id = uefi_vm(real_host, "secure", secure=True)
    try:
        defined = domain_os(real_host, vm_id, libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert features_asked(defined) == {"secure-boot": "yes", "enrolled-keys": "yes"}
        assert real_host.power(vm_id, pb.POWER_OP_ON) == "On"
        live = domain_os(real_host, vm_id)
        loader = live.find("loader")
        assert loader is not None
        assert loader.get("secure") == "yes"
        assert {"secure-boot", "requires-smm"} <= ovmf[loader.text or ""], loader.text
        # The variables come from a template with Microsoft's keys enrolled.
        enrolled = {code for code, f in ovmf.items() if "enrolled-keys" in f}
        assert loader.text in enrolled
    finally:
        real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)


def test_a_running_uefi_vm_is_refused_a_snapshot_before_any_work_a_stopped_one_takes_it(real_host: Any) -> None:
    vm_id = uefi_vm(real_host, "snap")
    stub = real_host.stub
    try:
        assert real_host.power(vm_id, pb.POWER_OP_ON) == "On"
        with pytest.raises(grpc.RpcError) as info:
            stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm_id, name_hint="live", include_memory=True))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "UEFI (pflash)" in str(info.value.details())
        assert "power it off" in str(info.value.details())
        with pytest.raises(grpc.RpcError) as info:  # without memory: the same, libvirt refuses either
            stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm_id, name_hint="live"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert not list(stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id)).snapshots)
        assert stub.Describe(pb.DescribeRequest(id=vm_id)).power_state == "On"  # untouched

        assert real_host.power(vm_id, pb.POWER_OP_OFF) == "Off"
        taken = snapshot(real_host, vm_id, "stopped")
        assert list(stub.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=vm_id)).snapshots) == [taken]
        real_host.harness.wait(stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm_id, snapshot_id=taken)).task)
        assert stub.Describe(pb.DescribeRequest(id=vm_id)).power_state == "Off"
        # Reverting a running UEFI VM to it: stopped, as the snapshot was.
        assert real_host.power(vm_id, pb.POWER_OP_ON) == "On"
        real_host.harness.wait(stub.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=vm_id, snapshot_id=taken)).task)
        assert stub.Describe(pb.DescribeRequest(id=vm_id)).power_state == "Off"
    finally:
        real_host.harness.wait(stub.Delete(pb.DeleteRequest(id=vm_id)).task)


def test_the_secure_boot_xml_of_libvirt_7_2_to_8_5_selects_secure_firmware(ovmf: dict[str, set[str]]) -> None:
    """What a daemon of 7.2-8.5 is given (the features plus ``<loader
    secure='yes'/>``, as uefi_selection decides from its version) is valid
    and selects Secure Boot firmware on this one too."""
    assert host.uefi_selection(8_005_000, secure_boot=True) == (True, True)
    assert host.uefi_selection(8_006_000, secure_boot=True) == (True, False)
    assert host.uefi_selection(8_005_000, secure_boot=False) == (True, False)
    assert host.uefi_selection(7_001_000, secure_boot=False) == (False, False)
    name = f"vmpt-fw-{uuid.uuid4().hex[:6]}"
    plan = domxml.DomainPlan(
        name=name,
        uuid=str(uuid.uuid4()),
        domain_type="qemu",
        arch="x86_64",
        memory_mib=128,
        max_memory_mib=128,
        vcpus=1,
        max_vcpus=1,
        mark=marks.Mark(),
        machine="q35",
        firmware="efi",
        secure_boot=True,
        loader_secure=True,
        graphics="none",
    )
    xml = domxml.build(plan)
    assert '<loader secure="yes" />' in xml
    conn = libvirt.open(libvirtd_uri())
    dom = conn.defineXML(xml)
    try:
        dom.create()
        loader = ET.fromstring(dom.XMLDesc(0)).find("os/loader")
        assert loader is not None
        assert loader.get("secure") == "yes"
        assert {"secure-boot", "enrolled-keys"} <= ovmf[loader.text or ""], loader.text
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        conn.close()


@pytest.mark.parametrize(
    ("name", "machine", "wanted", "field", "said"),
    [
        # QEMU's i440fx machine offers no SMM-backed Secure Boot loader here.
        (
            "pc-secure",
            "pc",
            {"SecureBoot": True},
            "class_json.SecurityProfile.SecureBoot",
            "no Secure Boot UEFI firmware for machine type 'pc",
        ),
        # QEMU's ISA-only machine has no UEFI firmware at all here.
        ("isa-uefi", "isapc", {}, "class_json.Firmware", "no UEFI firmware for machine type 'isapc'"),
    ],
)
def test_firmware_a_machine_type_lacks_is_unimplemented(
    real_host: Any, name: str, machine: str, wanted: dict[str, bool], field: str, said: str
) -> None:
    """What the host's domain capabilities list no firmware for, for that
    machine type, is a host limit: refused before anything is made."""
    fields = real_host.guest_class(Firmware="UEFI", **({"SecurityProfile": wanted} if wanted else {}))
    fields["ExtraConfig"]["libvirt.machine"] = machine
    with pytest.raises(grpc.RpcError) as info:
        real_host.create(name, class_json=fields)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert field in str(info.value.details())
    assert said in str(info.value.details())
    assert not real_host.stub.Describe(pb.DescribeRequest(id=real_host.name(name))).exists


def test_a_clone_of_a_uefi_vm_gets_its_own_variable_store(real_host: Any) -> None:
    """A definition may name its NVRAM file (written by hand, or by a libvirt
    that stores the auto-selected firmware in it; 9.0 fills it in only at
    start): the source is redefined with its NVRAM path here, and its
    clone must not share the source's variable store."""
    src = uefi_vm(real_host, "nvsrc")
    stub = real_host.stub
    clone_id = ""
    conn = libvirt.open(libvirtd_uri())
    try:
        assert real_host.power(src, pb.POWER_OP_ON) == "On"
        live = domain_os(real_host, src)
        nvram = live.find("nvram")
        assert nvram is not None
        assert real_host.power(src, pb.POWER_OP_OFF) == "Off"
        dom = conn.lookupByUUIDString(src)
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        os_el = root.find("os")
        assert os_el is not None
        ET.SubElement(os_el, "nvram").text = nvram.text
        conn.defineXML(ET.tostring(root, encoding="unicode"))
        resp = stub.Clone(pb.CloneRequest(source_vm_id=src, target_name=real_host.name("nvclone")), timeout=120)
        real_host.harness.wait(resp.task)
        clone_id = resp.target_vm_id
        assert real_host.power(clone_id, pb.POWER_OP_ON) == "On"
        theirs = domain_os(real_host, clone_id).find("nvram")
        assert theirs is not None
        assert theirs.text != nvram.text
        assert real_host.name("nvclone") in (theirs.text or "")
    finally:
        conn.close()
        for vm_id in (clone_id, src):
            if vm_id:
                real_host.harness.wait(stub.Delete(pb.DeleteRequest(id=vm_id)).task)
