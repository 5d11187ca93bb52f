"""Capabilities: declared once, refused without calling the backend,
reported by GetCapabilities."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from provider_core import Capability, Offer, capabilities, errors, operations, urls
from provider_core.capabilities import STAGING_BACKENDS
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins
_plugins = pytest.importorskip(
    "vmp_testplugins.memory", reason="the test backends are not installed: pip install -e tests/plugins"
)
MemoryPlusBackend = _plugins.MemoryPlusBackend
MemorySettings = _plugins.MemorySettings

CHECKSUM = "a" * 64
#: A valid request for each gated RPC, and the capability it needs.
GATED: dict[str, tuple[Any, str]] = {
    "Reconfigure": (pb.ReconfigureRequest(id="vm", desired_json='{"Class": {"CPU": 2}}'), "reconfigure"),
    "SnapshotCreate": (pb.SnapshotCreateRequest(vm_id="vm", name_hint="s1"), "snapshots"),
    "SnapshotRevert": (pb.SnapshotRevertRequest(vm_id="vm", snapshot_id="s1"), "snapshots"),
    "SnapshotDelete": (pb.SnapshotDeleteRequest(vm_id="vm", snapshot_id="s1"), "snapshots"),
    "Clone": (pb.CloneRequest(source_vm_id="vm", target_name="vm2"), "clone"),
    "ImagePrepare": (
        pb.ImagePrepareRequest(image_json='{"URL": "https://example.test/a.qcow2"}', target_name="a"),
        "image_prepare",
    ),
    "GetDiskInfo": (pb.GetDiskInfoRequest(vm_id="vm"), "disk_info"),
    "ExportDisk": (pb.ExportDiskRequest(vm_id="vm", destination_url="https://example.test/up", format="qcow2"), "disk_export"),
    "ImportDisk": (
        pb.ImportDiskRequest(source_url="https://example.test/a.qcow2", target_name="a", format="qcow2"),
        "disk_import",
    ),
    "HardwareUpgrade": (pb.HardwareUpgradeRequest(id="vm", target_version=2), "hardware_upgrade"),
}


def test_the_gated_rpcs_are_those_of_the_capability_table() -> None:
    table = {rpc: cap.value for cap, rpcs in operations.RPCS.items() for rpc in rpcs}
    assert table == {rpc: cap for rpc, (_, cap) in GATED.items()}
    assert set(operations.RPCS) == set(operations.METHODS)


@pytest.fixture
def nothing_declared(harness: Callable[..., ProviderHarness]) -> ProviderHarness:
    """A backend that implements and declares every optional method, but
    whose endpoint offers none of them: the core must refuse on the offer
    alone."""
    backend = MemoryPlusBackend(MemorySettings())
    backend.offer = Offer  # type: ignore[method-assign]  # this endpoint offers nothing
    h = harness("memory-plus", backend=backend)
    h.stub.Create(pb.CreateRequest(name="vm"))
    return h


@pytest.mark.parametrize("rpc", list(GATED))
@pytest.mark.parametrize("valid", [True, False], ids=["valid-request", "empty-request"])
def test_an_undeclared_capability_is_unimplemented_without_calling_the_backend(
    nothing_declared: ProviderHarness, status_details: Callable[..., list[Any]], rpc: str, valid: bool
) -> None:
    request, capability = GATED[rpc]
    before = dict(nothing_declared.backend.calls)  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        getattr(nothing_declared.stub, rpc)(request if valid else type(request)(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"capability {capability!r}" in info.value.details()
    assert "'memory-plus'" in info.value.details()
    (about,) = status_details(info.value, error_details_pb2.ErrorInfo)
    assert about.metadata["capability"] == capability
    assert dict(nothing_declared.backend.calls) == before  # type: ignore[attr-defined]


@pytest.mark.parametrize("rpc", list(GATED))
def test_a_declared_capability_reaches_the_backend(plus: ProviderHarness, rpc: str) -> None:
    plus.stub.Create(pb.CreateRequest(name="vm"))
    plus.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id="vm", name_hint="s1"))
    request, _ = GATED[rpc]
    getattr(plus.stub, rpc)(request, timeout=10)
    method = {
        "Reconfigure": "reconfigure",
        "GetDiskInfo": "disk_info",
        "ExportDisk": "export_disk",
        "ImportDisk": "import_disk",
    }.get(rpc, rpc.replace("Snapshot", "snapshot_").lower())
    method = {"imageprepare": "image_prepare", "hardwareupgrade": "hardware_upgrade"}.get(method, method)
    assert plus.backend.calls[method] >= 1  # type: ignore[attr-defined]


FLAGS = [
    (
        "SnapshotCreate",
        pb.SnapshotCreateRequest(vm_id="vm", name_hint="m", include_memory=True),
        "memory_snapshots",
        "snapshot_create",
    ),
    ("Clone", pb.CloneRequest(source_vm_id="vm", target_name="linked", linked=True), "linked_clones", "clone"),
    (
        "ExportDisk",
        pb.ExportDiskRequest(vm_id="vm", destination_url="https://example.test/up", format="qcow2", compress=True),
        "export_compression",
        "export_disk",
    ),
]


@pytest.mark.parametrize(("rpc", "request_", "capability", "method"), FLAGS, ids=[f[2] for f in FLAGS])
def test_an_undeclared_option_is_unimplemented_without_calling_the_backend(
    plus: ProviderHarness, rpc: str, request_: Any, capability: str, method: str
) -> None:
    plus.stub.Create(pb.CreateRequest(name="vm"))
    with pytest.raises(grpc.RpcError) as info:
        getattr(plus.stub, rpc)(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"capability {capability!r}" in info.value.details()
    assert plus.backend.calls[method] == 0  # type: ignore[attr-defined]
    # Without the option the same call is served.
    plain = type(request_)()
    plain.CopyFrom(request_)
    plain.ClearField(
        {"memory_snapshots": "include_memory", "linked_clones": "linked", "export_compression": "compress"}[capability]
    )
    getattr(plus.stub, rpc)(plain, timeout=10)
    assert plus.backend.calls[method] == 1  # type: ignore[attr-defined]


def test_an_unsupported_export_format_is_invalid_argument(plus: ProviderHarness) -> None:
    plus.stub.Create(pb.CreateRequest(name="vm"))
    with pytest.raises(grpc.RpcError) as info:
        plus.stub.ExportDisk(pb.ExportDiskRequest(vm_id="vm", destination_url="https://example.test/up", format="vmdk"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "qcow2, raw" in info.value.details()
    assert plus.backend.calls["export_disk"] == 0  # type: ignore[attr-defined]


def test_get_capabilities_of_a_backend_with_only_the_core_operations(memory: ProviderHarness) -> None:
    caps = memory.stub.GetCapabilities(pb.GetCapabilitiesRequest())
    flags = {f.name: v for f, v in caps.ListFields() if f.name.startswith("supports_")}
    assert flags == {}, "no optional capability is declared"
    assert list(caps.supported_disk_types) == ["thin"]
    assert list(caps.supported_network_types) == ["memory"]
    assert list(caps.supported_export_formats) == list(caps.supported_import_formats) == []


def test_get_capabilities_follows_the_declaration(plus: ProviderHarness) -> None:
    caps = plus.stub.GetCapabilities(pb.GetCapabilitiesRequest())
    on = {f.name for f, v in caps.ListFields() if f.name.startswith("supports_") and v}
    assert on == {"supports_snapshots", "supports_image_import", "supports_disk_export", "supports_disk_import"}
    assert list(caps.supported_export_formats) == ["qcow2", "raw"]
    assert list(caps.supported_import_formats) == ["qcow2"]


FIELD_OF = {
    Capability.RECONFIGURE_ONLINE: "supports_reconfigure_online",
    Capability.DISK_EXPANSION_ONLINE: "supports_disk_expansion_online",
    Capability.SNAPSHOTS: "supports_snapshots",
    Capability.MEMORY_SNAPSHOTS: "supports_memory_snapshots",
    Capability.LINKED_CLONES: "supports_linked_clones",
    Capability.IMAGE_PREPARE: "supports_image_import",
    Capability.DISK_EXPORT: "supports_disk_export",
    Capability.DISK_IMPORT: "supports_disk_import",
    Capability.EXPORT_COMPRESSION: "supports_export_compression",
}


@pytest.mark.parametrize("capability", list(FIELD_OF), ids=lambda c: c.value)
def test_each_flag_of_get_capabilities_comes_from_one_capability(
    harness: Callable[..., ProviderHarness], capability: Capability
) -> None:
    class Everything(MemoryPlusBackend):
        capabilities = frozenset(Capability)

    backend = Everything(MemorySettings())
    parent = capabilities.REFINES.get(capability)
    offered = {capability} | ({parent} if parent else set())
    only = dataclasses.replace(backend.declared(), capabilities=frozenset(offered))
    backend.offer = lambda: only  # type: ignore[method-assign]
    caps = harness("memory-plus", backend=backend).stub.GetCapabilities(pb.GetCapabilitiesRequest())
    assert {f.name for f, v in caps.ListFields() if f.name.startswith("supports_") and v} == {
        FIELD_OF[c] for c in offered if c in FIELD_OF
    }


# -- staging backends and transfer modes --------------------------------------------------

MOVING = Offer(
    capabilities=frozenset({Capability.DISK_EXPORT, Capability.DISK_IMPORT}),
    export_formats=("qcow2",),
    import_formats=("qcow2",),
    export_backends=("pvc", "nfs", "s3"),
    import_backends=("pvc", "s3"),
    transfer_modes=("relay",),
)


def test_staging_lists_go_with_their_capability() -> None:
    no_export = MOVING.without(Capability.DISK_EXPORT)
    assert (no_export.export_backends, no_export.import_backends, no_export.transfer_modes) == ((), ("pvc", "s3"), ("relay",))
    neither = MOVING.without(Capability.DISK_EXPORT, Capability.DISK_IMPORT)
    assert (neither.export_backends, neither.import_backends, neither.transfer_modes) == ((), (), ())


def test_the_roots_narrow_the_staging_backends() -> None:
    assert MOVING.staged(("s3",)).export_backends == ("s3",)
    assert MOVING.staged(("nfs", "s3")).import_backends == ("s3",)


def test_staging_lists_beyond_the_declaration_are_reported_and_dropped() -> None:
    declared = dataclasses.replace(MOVING, export_backends=("s3",), transfer_modes=("relay",))
    more = dataclasses.replace(MOVING, transfer_modes=("direct", "relay"))
    assert more.beyond(declared) == ["export_backends 'pvc'", "export_backends 'nfs'", "transfer_modes 'direct'"]
    assert more.within(declared).export_backends == ("s3",)
    assert more.within(declared).transfer_modes == ("relay",)


@pytest.mark.parametrize(
    ("backends", "backend", "mode", "answer"),
    [
        ("export_backends", "pvc", "", "relay"),
        ("export_backends", "pvc", "auto", "relay"),
        ("export_backends", "", "relay", "relay"),  # an http(s) URL needs no staging backend
        ("import_backends", "s3", "auto", "relay"),
    ],
)
def test_auto_and_empty_are_the_best_offered_mode(backends: str, backend: str, mode: str, answer: str) -> None:
    assert MOVING.transfer_mode(backends, backend, mode) == answer
    assert dataclasses.replace(MOVING, transfer_modes=("direct", "relay")).transfer_mode(backends, backend, "") == "direct"


def test_a_backend_not_offered_is_unimplemented_and_a_mode_invalid() -> None:
    with pytest.raises(errors.Unimplemented, match="'nfs' is not offered here; offered: pvc, s3"):
        MOVING.transfer_mode("import_backends", "nfs", "")
    with pytest.raises(errors.InvalidArgument, match="offered: relay") as info:
        MOVING.transfer_mode("export_backends", "pvc", "direct")
    assert info.value.violations[0][0] == "transfer_mode"


def test_a_backend_declares_pvc_s3_and_relay_by_default_nfs_on_request(
    harness: Callable[..., ProviderHarness], tmp_path: Path
) -> None:
    # pvc and s3 work from the URL alone; nfs needs the request's storage options
    (tmp_path / "pvc").mkdir()
    roots = {"pvc_root": tmp_path / "pvc", "nfs_root": tmp_path / "nfs"}
    try:
        plain = harness("memory-plus", **roots)
        caps = plain.stub.GetCapabilities(pb.GetCapabilitiesRequest())
        assert list(caps.supported_export_backends) == list(caps.supported_import_backends) == ["pvc", "s3"]
        assert list(caps.supported_transfer_modes) == ["relay"]
        plain.stub.Create(pb.CreateRequest(name="vm"))
        nfs = pb.ExportDiskRequest(
            vm_id="vm", destination_url="nfs://filer/export/a.qcow2", storage_options_json='{"export": "/export"}'
        )
        with pytest.raises(grpc.RpcError) as info:
            plain.stub.ExportDisk(nfs, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "'nfs' is not offered" in info.value.details()
        assert plain.backend.calls["export_disk"] == 0  # type: ignore[attr-defined]

        class WithNfs(MemoryPlusBackend):  # type: ignore[misc, valid-type]
            export_backends = import_backends = STAGING_BACKENDS

        both = harness(backend=WithNfs(MemorySettings()), **roots)
        caps = both.stub.GetCapabilities(pb.GetCapabilitiesRequest())
        assert list(caps.supported_export_backends) == list(caps.supported_import_backends) == ["pvc", "nfs", "s3"]
        both.stub.Create(pb.CreateRequest(name="vm"))
        both.stub.ExportDisk(nfs, timeout=10)
    finally:
        urls.set_roots()
