"""The kit goes by what the endpoint under test offers, as its server
answers, not by the backend's class: checks of what is declared and not
offered are skipped, saying how the server said so, and honesty is checked
against the offer. ``sim-withholding`` (tests/conformance/broken_backends)
is the sim backend on an endpoint that offers all but its ``withhold``
setting."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from vm_provider_sim import SimBackend
from vmp_testplugins.skips import skip_missing

from provider_core import cli, plugins, urls
from provider_core.capabilities import Capability
from provider_core.config import Config
from provider_core.conformance import checks_core, offered, pytest_plugin
from provider_core.conformance.checks_lifecycle import UNSEEN_BACKING
from provider_core.conformance.fixtures import Fixtures
from provider_core.conformance.kit import Kit
from provider_core.conformance.registry import CheckFailed, checks_for
from provider_core.conformance.report import FAIL, PASS, SKIP
from provider_core.conformance.session import Session
from provider_core.errors import ConfigError
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

NAME = "sim-withholding"
#: What the endpoint withholds in most tests: capabilities with a GetCapabilities
#: flag (memory_snapshots, image_prepare) and without one (disk_info, hardware_upgrade).
WITHHELD = ["memory_snapshots", "image_prepare", "disk_info", "hardware_upgrade"]
HOW = {
    "memory_snapshots": "GetCapabilities.supports_memory_snapshots is false",
    "image_prepare": "GetCapabilities.supports_image_import is false",
    "disk_info": "GetDiskInfo answered UNIMPLEMENTED naming it",
    "hardware_upgrade": "HardwareUpgrade answered UNIMPLEMENTED naming it",
}


def require_backend(name: str) -> None:
    if name not in plugins.installed():
        skip_missing(f"backend {name!r} is not installed (make setup installs it)")


def not_offered(cap: str) -> str:
    return f"this endpoint does not offer {cap!r}, which WithholdingBackend declares ({HOW[cap]})"


@pytest.fixture
def withholding(fast_sim: dict[str, Any]) -> dict[str, Any]:
    require_backend(NAME)
    return {**fast_sim, "withhold": WITHHELD}


def test_the_kit_reads_the_offer_from_the_server(withholding: dict[str, Any]) -> None:
    with Session(NAME, Config(backends={NAME: withholding})) as session:
        kit = session.kit
        assert kit.declared == SimBackend.declared()
        served = urls.roots().backends()  # the staging backends this process's roots serve
        assert kit.offer == SimBackend.declared().without(*map(Capability, WITHHELD)).staged(served)
        assert {cap.value: how for cap, how in kit.not_offered.items() if cap.value in WITHHELD} == HOW
        assert set(kit.not_offered) == set(Capability) - kit.offer.capabilities
        checks = {c.name for c in session.checks()}
    # the end-to-end checks of what is withheld stay listed, to be reported skipped
    assert {"disk_info.primary", "hardware_upgrade.upgrade", "memory_snapshots.running", "image_prepare.prepare"} <= checks
    assert {f"{cap}.not_offered" for cap in WITHHELD} <= checks
    assert "snapshots.not_offered" not in checks


def test_the_command_passes_an_endpoint_that_offers_less_skipping_only_with_reasons(
    kit_command: Callable[..., Any], withholding: dict[str, Any]
) -> None:
    proc = kit_command(NAME, withholding)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    words = [line.split() for line in proc.stdout.splitlines()]
    rows = {w[0]: w[1:] for w in words if w and w[0] in WITHHELD}
    assert rows["memory_snapshots"] == ["yes", "no", "1", "0", "1", "PASS"]
    assert rows["image_prepare"] == ["yes", "no", "1", "0", "2", "PASS"]
    assert rows["disk_info"] == ["yes", "no", "1", "0", "1", "PASS"]
    assert rows["hardware_upgrade"] == ["yes", "no", "1", "0", "1", "PASS"]
    assert re.search(r"^linked_clones\s+yes\s+yes\s+0\s+0\s+1\s+SKIP$", proc.stdout, flags=re.M)
    assert (
        "Declared but not offered by this endpoint (their checks are skipped): "
        "memory_snapshots, image_prepare, disk_info, hardware_upgrade"
    ) in proc.stdout
    skipped = dict(re.findall(r"^  SKIP (\S+)\s+(.*)$", proc.stdout, flags=re.M))
    assert skipped == {
        "memory_snapshots.running": not_offered("memory_snapshots"),
        "linked_clones.linked": UNSEEN_BACKING,
        "image_prepare.prepare": not_offered("image_prepare"),
        "image_prepare.checksum": not_offered("image_prepare"),
        "disk_info.primary": not_offered("disk_info"),
        "hardware_upgrade.upgrade": not_offered("hardware_upgrade"),
    }
    assert re.search(r"^\d+ checks: \d+ passed, 0 failed, 6 skipped$", proc.stdout, flags=re.M)


def test_a_withheld_option_the_core_cannot_gate_is_checked_against_the_offer(
    run_kit: Callable[..., Any], withholding: dict[str, Any]
) -> None:
    """sim goes by its class for online reconfiguration: withheld on this
    endpoint, the honesty check of the offer catches it still doing it."""
    results = run_kit(NAME, {**withholding, "withhold": ["reconfigure_online"]}, select="reconfigure_online")
    by_name = {r.check.name: r for r in results}
    assert by_name["reconfigure_online.running"].status == SKIP
    assert by_name["reconfigure_online.not_offered"].status == FAIL
    assert by_name["reconfigure_online.not_offered"].detail == (
        "'reconfigure_online' is not offered, so changing CPU and memory of a running VM must be refused:"
        " Reconfigure succeeded, expected FAILED_PRECONDITION or UNIMPLEMENTED"
    )


def test_pytest_items_follow_the_offer(tmp_path: Path, run_pytest: Callable[..., Any]) -> None:
    require_backend(NAME)
    (tmp_path / "kit.toml").write_text(f'[backends.{NAME}]\ntask_seconds = 0.01\nwithhold = ["disk_info"]\n')
    args = ["-p", pytest_plugin.__name__, "--vm-provider-backend", NAME, "--vm-provider-config", "kit.toml"]
    proc = run_pytest(tmp_path, *args, "-k", "disk_info or linked")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 2 skipped" in proc.stdout
    assert f"PASSED vm-provider-conformance[{NAME}]::disk_info.not_offered" in proc.stdout
    assert "this endpoint does not offer 'disk_info', which WithholdingBackend declares" in proc.stdout
    assert "Declared but not offered by this endpoint (their checks are skipped): disk_info" in proc.stdout


def test_checks_follow_the_offer_within_the_declaration() -> None:
    declared = {Capability.SNAPSHOTS, Capability.MEMORY_SNAPSHOTS, Capability.CLONE}
    names = {c.name for c in checks_for(declared, offered={Capability.SNAPSHOTS})}
    assert {"memory_snapshots.running", "clone.full", "clone.missing_source"} <= names  # skipped when run
    assert {"memory_snapshots.not_offered", "clone.not_offered", "linked_clones.not_offered"} <= names
    assert "snapshots.not_offered" not in names
    assert "linked_clones.linked" not in names  # not declared: nothing to skip


def test_a_backend_that_cannot_connect_stops_the_kit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_backend("memory")
    down = tmp_path / "down"
    down.write_text("the hypervisor is down\n")
    table = {"fail_connect_file": str(down)}
    with pytest.raises(ConfigError, match=r"GetCapabilities answered UNAVAILABLE: .*the kit cannot tell what"):
        Session("memory", Config(backends={"memory": table})).start()
    config = tmp_path / "plugins.toml"
    config.write_text(f'[backends.memory]\nfail_connect_file = "{down}"\n')
    assert cli.main(["conformance", "--backend", "memory", "--config", str(config)]) == 2
    assert "the kit cannot tell what this endpoint offers" in capsys.readouterr().err


# -- the capabilities check, against servers that answer wrongly ---------------------------------


class Answering(pb_grpc.ProviderServicer):
    """A provider.v1 server that answers GetCapabilities as told and NOT_FOUND
    to the kit's questions about the capabilities without a flag."""

    def __init__(self, answer: pb.GetCapabilitiesResponse) -> None:
        self.answer = answer

    def GetCapabilities(self, request: Any, context: grpc.ServicerContext) -> pb.GetCapabilitiesResponse:
        return self.answer

    def _missing(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such VM")

    Reconfigure = Clone = GetDiskInfo = HardwareUpgrade = _missing


@pytest.fixture
def answering() -> Iterator[Callable[..., Kit]]:
    """``answering(backend, **GetCapabilitiesResponse fields)``: a kit for
    that backend's class, talking to a real server on 127.0.0.1 that answers so."""
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []

    def make(backend: str = "sim", **fields: Any) -> Kit:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_ProviderServicer_to_server(Answering(pb.GetCapabilitiesResponse(**fields)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
        require_backend(backend)
        cls = plugins.load_class(backend)
        kit = Kit(pb_grpc.ProviderStub(channels[-1]), backend, cls, Fixtures())  # type: ignore[no-untyped-call]
        kit.offer = offered.read(kit).offer  # as a session does when it starts
        return kit

    yield make
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(None)


SIM_ANSWER: dict[str, Any] = {
    "supports_snapshots": True,
    "supports_memory_snapshots": True,
    "supports_linked_clones": True,
    "supported_disk_types": list(SimBackend.disk_types),
}


def test_a_consistent_answer_within_the_declaration_passes(answering: Callable[..., Kit]) -> None:
    kit = answering("sim", **SIM_ANSWER)
    checks_core.capabilities(kit)
    assert kit.offer.capabilities == {
        Capability.SNAPSHOTS,
        Capability.MEMORY_SNAPSHOTS,
        Capability.LINKED_CLONES,
        Capability.RECONFIGURE,
        Capability.CLONE,
        Capability.DISK_INFO,
        Capability.HARDWARE_UPGRADE,
    }


MEMORY_PLUS: dict[str, Any] = {"supports_snapshots": True, "supported_disk_types": ["thin"]}


@pytest.mark.parametrize(
    ("backend", "fields", "message"),
    [
        (
            "sim",
            {
                **SIM_ANSWER,
                "supports_export_compression": True,
                "supports_disk_export": True,
                "supported_export_formats": ["vmdk"],
            },
            "the endpoint offers more than SimBackend declares: capability 'export_compression', export_formats 'vmdk'",
        ),
        (
            "sim",
            {**SIM_ANSWER, "supported_network_types": ["vxlan"]},
            "the endpoint offers more than SimBackend declares: network_types 'vxlan'",
        ),
        (
            "sim",
            {**SIM_ANSWER, "supports_snapshots": False},
            "the endpoint offers 'memory_snapshots' but not 'snapshots', which it refines "
            "(GetCapabilities.supports_snapshots is false)",
        ),
        (
            "memory-plus",
            {**MEMORY_PLUS, "supported_import_formats": ["qcow2"]},
            "GetCapabilities.supported_import_formats is ['qcow2'], but 'disk_import' is not offered",
        ),
        (
            "memory-plus",
            {**MEMORY_PLUS, "supports_disk_import": True},
            "the endpoint offers 'disk_import' but GetCapabilities.supported_import_formats is empty",
        ),
    ],
    ids=["beyond", "beyond-list", "orphan", "formats-without-capability", "capability-without-formats"],
)
def test_an_inconsistent_answer_fails_the_check(
    answering: Callable[..., Kit], backend: str, fields: dict[str, Any], message: str
) -> None:
    kit = answering(backend, **fields)
    with pytest.raises(CheckFailed) as failed:
        checks_core.capabilities(kit)
    assert str(failed.value) == message


def test_an_answer_that_changes_during_the_run_fails_the_check(answering: Callable[..., Kit]) -> None:
    kit = answering("sim", **SIM_ANSWER)
    kit.offer = kit.offer.without(Capability.SNAPSHOTS)  # what the run started with
    with pytest.raises(CheckFailed, match=r"^GetCapabilities answers .* but at the start of this run it answered"):
        checks_core.capabilities(kit)


def test_results_pass_or_skip_never_silently(run_kit: Callable[..., Any], withholding: dict[str, Any]) -> None:
    """A check that could not look at what it is about does not pass."""
    results = run_kit(NAME, withholding, select="linked_clones")
    assert [(r.check.name, r.status, r.detail) for r in results] == [("linked_clones.linked", SKIP, UNSEEN_BACKING)]
    full = run_kit(NAME, {**withholding, "withhold": []}, select="linked_clones")
    assert [(r.check.name, r.status) for r in full] == [("linked_clones.linked", PASS)]
