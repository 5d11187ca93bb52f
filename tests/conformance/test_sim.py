"""The kit passes the example backend ``sim``: as a command, as a pytest
plugin, and in-process, every applicable check passing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vm_provider_sim import SimBackend

from provider_core.capabilities import Capability
from provider_core.conformance import pytest_plugin
from provider_core.conformance.registry import checks_for
from provider_core.conformance.report import FAIL, PASS
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

PLUGIN = pytest_plugin.__name__
SIM_TOML = "[backends.sim]\ntask_seconds = 0.01\nshutdown_seconds = 0.05\n"


def expected_checks() -> list[str]:
    return [c.name for c in checks_for(SimBackend.capabilities)]


def test_every_check_passes_in_process(run_kit: Callable[..., Any], fast_sim: dict[str, Any]) -> None:
    results = run_kit("sim", fast_sim)
    assert [r.check.name for r in results] == expected_checks()
    assert {r.check.name: r.detail for r in results if r.status != PASS} == {}


def test_the_default_settings_pass_too(run_kit: Callable[..., Any]) -> None:
    """The kit waits for sim's default task and shutdown times (a sample of checks)."""
    results = run_kit("sim", {}, select="power_cycle")
    assert [(r.check.name, r.status) for r in results] == [("core.power_cycle", PASS)]


def test_command_passes_sim_and_prints_the_matrix(kit_command: Callable[..., Any], fast_sim: dict[str, Any]) -> None:
    proc = kit_command("sim", fast_sim)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {
        line.split()[0]: line.split()
        for line in proc.stdout.splitlines()
        if line and line.split()[0] in {c.value for c in Capability}
    }
    for cap in Capability:
        declared = "yes" if cap in SimBackend.capabilities else "no"
        assert rows[cap.value][1:3] == [declared, declared]  # sim offers all it declares
        assert rows[cap.value][-1] == "PASS", rows[cap.value]
    total = len(expected_checks())
    assert f"{total} checks: {total} passed, 0 failed, 0 skipped" in proc.stdout


def test_pytest_plugin_passes_sim(tmp_path: Path, run_pytest: Callable[..., Any]) -> None:
    (tmp_path / "kit.toml").write_text(SIM_TOML)
    proc = run_pytest(tmp_path, "-p", PLUGIN, "--vm-provider-backend", "sim", "--vm-provider-config", "kit.toml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = len(expected_checks())
    assert f"{total} passed" in proc.stdout
    assert "PASSED vm-provider-conformance[sim]::core.create_idempotent" in proc.stdout
    assert "vm-provider conformance: backend 'sim'" in proc.stdout


def test_linked_clone_of_a_given_source(run_kit: Callable[..., Any], fast_sim: dict[str, Any], tmp_path: Path) -> None:
    """With ``linked_clone_source`` the kit clones that VM (one it did not make) and leaves it be."""
    settings = {**fast_sim, "state_file": str(tmp_path / "sim.json"), "foreign_vms": ["golden"]}
    with ProviderHarness.for_backend("sim", settings) as h:
        (golden,) = [vm for vm in h.stub.ListVMs(pb.ListVMsRequest()).vms if vm.name == "golden"]
    fixtures = {"linked_clone_source": golden.id}
    refused = run_kit("sim", settings, fixtures, select="linked_clones.linked")
    assert [(r.check.name, r.status) for r in refused] == [("linked_clones.linked", FAIL)]
    assert "manage_foreign_vms" in refused[0].detail  # cloning a VM it did not make is the operator's choice
    allowed = {"manage_foreign_vms": True}
    results = run_kit("sim", settings, fixtures, select="linked_clones.linked", server=allowed)
    assert [(r.check.name, r.status, r.detail) for r in results] == [("linked_clones.linked", PASS, "")]
    with ProviderHarness.for_backend("sim", settings) as h:
        vms = list(h.stub.ListVMs(pb.ListVMsRequest()).vms)
    assert [(vm.id, vm.name, vm.power_state) for vm in vms] == [(golden.id, "golden", "Off")]
    assert vms[0].disks == golden.disks


def test_a_missing_linked_clone_source_fails_the_check(run_kit: Callable[..., Any], fast_sim: dict[str, Any]) -> None:
    results = run_kit("sim", fast_sim, {"linked_clone_source": "vm-nope"}, select="linked_clones.linked")
    assert [(r.check.name, r.status) for r in results] == [("linked_clones.linked", FAIL)]
    assert "exists=false for the linked_clone_source fixture's VM" in results[0].detail
