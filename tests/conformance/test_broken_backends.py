"""The kit fails backends that break the contract, on exactly the checks
that expose each defect (see broken_backends/README.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provider_core.conformance.report import FAIL, PASS

BROKEN = {
    # declares clone and linked_clones; Clone only makes up an id
    "broken-fake-clone": {"clone.full", "linked_clones.linked"},
    # does not declare the online refinements, yet changes running VMs
    "broken-silent-hotplug": {"reconfigure_online.not_offered", "disk_expansion_online.not_offered"},
    # Delete answers success and leaves the VM
    "broken-leaky-delete": {"core.delete", "core.delete_running", "snapshots.delete_vm"},
}


@pytest.mark.parametrize(("backend", "failing"), BROKEN.items(), ids=list(BROKEN))
def test_kit_fails_exactly_the_defect(
    run_kit: Callable[..., Any], fast_sim: dict[str, Any], backend: str, failing: set[str]
) -> None:
    results = run_kit(backend, fast_sim)
    assert {r.check.name for r in results if r.status == FAIL} == failing
    assert all(r.status == PASS for r in results if r.check.name not in failing)


def test_fake_clone_failure_says_what_is_wrong(run_kit: Callable[..., Any], fast_sim: dict[str, Any]) -> None:
    (result,) = run_kit("broken-fake-clone", fast_sim, select="clone.full")
    assert "Describe says exists=false for the id Clone returned" in result.detail


def test_silent_hotplug_failure_names_the_capability(run_kit: Callable[..., Any], fast_sim: dict[str, Any]) -> None:
    (result,) = run_kit("broken-silent-hotplug", fast_sim, select="reconfigure_online.not_offered")
    assert result.detail.startswith("'reconfigure_online' is not offered")
    assert "Reconfigure succeeded, expected FAILED_PRECONDITION or UNIMPLEMENTED" in result.detail


def test_command_exits_non_zero(kit_command: Callable[..., Any], fast_sim: dict[str, Any]) -> None:
    proc = kit_command("broken-fake-clone", fast_sim, "-k", "clone")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith(("clone ", "linked_clones "))}
    assert rows["clone"][1:] == ["yes", "yes", "1", "1", "0", "FAIL"]
    assert rows["linked_clones"][1:] == ["yes", "yes", "0", "1", "0", "FAIL"]
    assert "3 checks: 1 passed, 2 failed, 0 skipped" in proc.stdout


def test_pytest_plugin_fails_and_the_ini_option_and_fixture_work(tmp_path: Path, run_pytest: Callable[..., Any]) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'addopts = "-p provider_core.conformance.pytest_plugin"\n'
        'vm_provider_backend = "broken-fake-clone"\n'
        'vm_provider_config = "kit.toml"\n'
    )
    (tmp_path / "kit.toml").write_text("[backends.broken-fake-clone]\ntask_seconds = 0.01\nshutdown_seconds = 0.05\n")
    (tmp_path / "test_own.py").write_text(
        "from provider_core.pb import provider_pb2 as pb\n\n\n"
        "def test_own_server_answers(vm_provider_harness):\n"
        "    assert vm_provider_harness.stub.Validate(pb.ValidateRequest(), timeout=30).ok\n"
    )
    proc = run_pytest(tmp_path, "-k", "full or linked or missing_source or own_server")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 failed, 2 passed" in proc.stdout
    assert "FAILED vm-provider-conformance[broken-fake-clone]::clone.full" in proc.stdout
    assert "clone.full: Describe says exists=false for the id Clone returned" in proc.stdout
    assert "PASSED vm-provider-conformance[broken-fake-clone]::clone.missing_source" in proc.stdout
    assert "PASSED test_own.py::test_own_server_answers" in proc.stdout
