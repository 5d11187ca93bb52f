"""What Describe and ListVMs reuse of a domain's XML, and when they read it
afresh (vm_provider_libvirt.readcache), on the test driver.

Changes "behind the provider's back" are made on the backend's own libvirt
connection, as ``virsh`` would make them on a host's daemon."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libvirt
import pytest
from vm_provider_libvirt import readcache
from vm_provider_libvirt.readcache import Changes, Facts, Parsed

from provider_core import Outcome
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

Raw = Callable[[str], dict[str, Any]]
MIB = 1024


def _memory_behind_the_back(harness: ProviderHarness, vm_id: str, mib: int) -> None:
    dom = harness.backend.session.conn().lookupByUUIDString(vm_id)  # type: ignore[attr-defined]
    dom.setMemoryFlags(mib * MIB, libvirt.VIR_DOMAIN_AFFECT_CONFIG)


@pytest.fixture
def vm(make_vm: Callable[..., str]) -> str:
    return make_vm("cached", class_json={"CPU": 1, "MemoryMiB": 512})


def test_a_definition_changed_behind_the_back_shows_within_the_ttl(
    harness: ProviderHarness, vm: str, raw: Raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert raw(vm)["memory_mib"] == 512
    _memory_behind_the_back(harness, vm, 384)
    assert raw(vm)["memory_mib"] == 512, "Describe read the XML again although what it had was recent"
    monkeypatch.setattr(readcache, "DESCRIBE_TTL", 0.2)
    time.sleep(0.25)
    assert raw(vm)["memory_mib"] == 384


def _listed(harness: ProviderHarness, vm_id: str) -> pb.VMInfo:
    (vm,) = [v for v in harness.stub.ListVMs(pb.ListVMsRequest(), timeout=30).vms if v.id == vm_id]
    return vm


def test_listvms_follows_the_same_rule(harness: ProviderHarness, vm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _listed(harness, vm).memory_mib == 512
    _memory_behind_the_back(harness, vm, 384)
    assert _listed(harness, vm).memory_mib == 512  # read within the TTL: reused
    dom = harness.backend.session.conn().lookupByUUIDString(vm)  # type: ignore[attr-defined]
    dom.create()
    started = _listed(harness, vm)
    assert (started.power_state, started.memory_mib) == ("On", 384)  # a new state: read again
    harness.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json='{"Class": {"MemoryMiB": 256}}'))
    assert _listed(harness, vm).memory_mib == 256  # a change through the provider: at once
    dom.setMemoryFlags(320 * MIB, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    monkeypatch.setattr(readcache, "DESCRIBE_TTL", 0.2)
    time.sleep(0.25)
    assert _listed(harness, vm).memory_mib == 320


def test_a_start_or_stop_behind_the_back_shows_at_once(harness: ProviderHarness, vm: str, raw: Raw) -> None:
    assert raw(vm)["id"] == -1  # inactive domains have no id
    dom = harness.backend.session.conn().lookupByUUIDString(vm)  # type: ignore[attr-defined]
    dom.create()
    started = harness.stub.Describe(pb.DescribeRequest(id=vm))
    assert started.power_state == "On"
    assert raw(vm)["id"] == dom.ID() > 0  # the live XML, read again because the state changed
    dom.destroy()
    assert raw(vm)["id"] == -1


def test_a_name_given_to_another_domain_behind_the_back_shows_at_once(harness: ProviderHarness, vm: str, raw: Raw) -> None:
    assert raw("cached")["uuid"] == vm  # Describe by name
    conn = harness.backend.session.conn()  # type: ignore[attr-defined]
    old = conn.lookupByUUIDString(vm)
    xml = old.XMLDesc(0)
    old.undefine()
    newcomer = conn.defineXML(xml.replace(f"<uuid>{vm}</uuid>", ""))  # same name, a new UUID
    assert raw("cached")["uuid"] == newcomer.UUIDString() != vm


def test_changes_through_the_provider_show_at_once(harness: ProviderHarness, vm: str, raw: Raw) -> None:
    assert raw(vm)["memory_mib"] == 512
    harness.stub.Reconfigure(pb.ReconfigureRequest(id=vm, desired_json='{"Class": {"MemoryMiB": 768}}'))
    assert raw(vm)["memory_mib"] == 768


def test_while_a_change_is_under_way_describe_reads_afresh(harness: ProviderHarness, vm: str, raw: Raw) -> None:
    backend: Any = harness.backend
    assert raw(vm)["memory_mib"] == 512
    outcome = backend.session.changing(lambda: Outcome.later(None, lambda: None))  # begun; its work not yet run
    assert outcome.work is not None
    _memory_behind_the_back(harness, vm, 256)
    assert raw(vm)["memory_mib"] == 256
    _memory_behind_the_back(harness, vm, 320)
    assert raw(vm)["memory_mib"] == 320  # what it read during the change is not reused either
    outcome.work()
    _memory_behind_the_back(harness, vm, 448)
    assert raw(vm)["memory_mib"] == 448  # the change ended since the last read
    _memory_behind_the_back(harness, vm, 480)
    assert raw(vm)["memory_mib"] == 448  # quiet again: reused


def test_a_failed_change_ends_too(harness: ProviderHarness, vm: str, raw: Raw) -> None:
    backend: Any = harness.backend

    def broken() -> Outcome[None]:
        raise RuntimeError("failed")

    with pytest.raises(RuntimeError):
        backend.session.changing(broken)
    assert backend.session.quiet() is not None


def _facts(xml: str) -> Facts:
    return Facts(xml=xml, raw={}, nics=[], agent=False, console="", managed=True, listing=None)  # type: ignore[arg-type]


def test_parsed_reuses_only_a_recent_quiet_read_of_the_same_state() -> None:
    parsed, changes = Parsed(), Changes()
    running = libvirt.VIR_DOMAIN_RUNNING
    facts = parsed.get("vm", "<domain/>", _facts, running, changes.quiet())
    assert parsed.recent("vm", running, changes.quiet(), ttl=60) is facts
    assert parsed.get("vm", "<domain/>", _facts, running, changes.quiet()) is facts  # same text: not parsed again
    assert parsed.recent("vm", libvirt.VIR_DOMAIN_PAUSED, changes.quiet(), ttl=60) is None
    assert parsed.recent("vm", running, changes.quiet(), ttl=0) is None
    assert parsed.recent("other", running, changes.quiet(), ttl=60) is None
    changes.begin()
    assert changes.quiet() is None
    assert parsed.recent("vm", running, changes.quiet(), ttl=60) is None
    parsed.get("vm", "<domain id='1'/>", _facts, running, changes.quiet())  # read during the change
    changes.end()
    assert parsed.recent("vm", running, changes.quiet(), ttl=60) is None
    fresh = parsed.get("vm", "<domain id='1'/>", _facts, running, changes.quiet())
    assert parsed.recent("vm", running, changes.quiet(), ttl=60) is fresh
