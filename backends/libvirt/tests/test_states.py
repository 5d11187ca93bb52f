"""The libvirt state table, and the power states clients see over gRPC."""

from __future__ import annotations

import json

import libvirt
import pytest
from vm_provider_libvirt import states

from provider_core import PowerState
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

EXPECTED = {
    libvirt.VIR_DOMAIN_NOSTATE: ("nostate", PowerState.UNKNOWN),
    libvirt.VIR_DOMAIN_RUNNING: ("running", PowerState.ON),
    libvirt.VIR_DOMAIN_BLOCKED: ("blocked", PowerState.ON),
    libvirt.VIR_DOMAIN_PAUSED: ("paused", PowerState.SUSPENDED),
    libvirt.VIR_DOMAIN_SHUTDOWN: ("shutdown", PowerState.ON),
    libvirt.VIR_DOMAIN_SHUTOFF: ("shutoff", PowerState.OFF),
    libvirt.VIR_DOMAIN_CRASHED: ("crashed", PowerState.OFF),
    libvirt.VIR_DOMAIN_PMSUSPENDED: ("pmsuspended", PowerState.SUSPENDED),
}


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_every_libvirt_state_has_its_word(state: int) -> None:
    assert states.native(state) == EXPECTED[state]


def test_the_table_covers_every_state_libvirt_has() -> None:
    assert set(states.STATES) == set(range(libvirt.VIR_DOMAIN_PMSUSPENDED + 1))


def test_paused_is_never_off() -> None:
    assert states.power_state(libvirt.VIR_DOMAIN_PAUSED) is PowerState.SUSPENDED
    assert states.power_state(libvirt.VIR_DOMAIN_PMSUSPENDED) is PowerState.SUSPENDED


def test_unknown_numbers_are_unknown() -> None:
    assert states.native(99).power is PowerState.UNKNOWN
    assert states.reason(99, 3) == "reason-3"


def test_reasons_are_words() -> None:
    assert states.reason(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER) == "user"
    assert states.reason(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED) == "destroyed"
    assert states.reason(libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) == "booted"


def test_running_paused_and_off_are_reported_distinctly(harness: ProviderHarness) -> None:
    stub = harness.stub
    dom = harness.backend.session.lookup("foreign-vm")  # type: ignore[attr-defined]

    def seen() -> tuple[str, str, str]:
        resp = stub.Describe(pb.DescribeRequest(id="foreign-vm"))
        raw = json.loads(resp.provider_raw_json)
        return resp.power_state, raw["state"], raw["reason"]

    assert seen()[:2] == ("On", "running")
    dom.suspend()
    assert seen() == ("Suspended", "paused", "user")
    listed = {vm.name: vm for vm in stub.ListVMs(pb.ListVMsRequest()).vms}
    assert listed["foreign-vm"].provider_raw["managed"] == "false"  # every domain is listed, for adoption
    dom.destroy()
    assert seen() == ("Off", "shutoff", "destroyed")
