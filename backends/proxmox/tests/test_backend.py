"""The plugin as the core sees it: entry point, contract check,
capabilities, and what it does not offer (UNIMPLEMENTED, never faked)."""

from __future__ import annotations

from typing import Any

import grpc
from vm_provider_proxmox import ProxmoxBackend

from provider_core import plugins
from provider_core.pb import provider_pb2 as pb


def test_entry_point_and_contract() -> None:
    assert "proxmox" in plugins.installed()
    assert plugins.load_class("proxmox") is ProxmoxBackend


def test_capabilities(ops: Any) -> None:
    caps = ops.stub.GetCapabilities(pb.GetCapabilitiesRequest())
    assert caps.supports_snapshots
    assert caps.supports_memory_snapshots
    assert caps.supports_linked_clones
    assert caps.supports_image_import
    assert caps.supports_disk_expansion_online
    assert not caps.supports_reconfigure_online  # cores change at the next reboot on Proxmox
    assert not caps.supports_disk_export
    assert not caps.supports_disk_import
    assert list(caps.supported_export_formats) == []
    assert list(caps.supported_import_formats) == []


def test_disk_export_and_import_are_unimplemented(ops: Any, pve: Any) -> None:
    vm = ops.create("ex-1")
    mark = ops.mark()
    code, message = ops.fails(
        lambda: ops.stub.ExportDisk(pb.ExportDiskRequest(vm_id=vm, destination_url="http://127.0.0.1:9/x", format="qcow2"))
    )
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert "disk_export" in message
    code, message = ops.fails(
        lambda: ops.stub.ImportDisk(pb.ImportDiskRequest(source_url="http://127.0.0.1:9/x", target_name="d", format="qcow2"))
    )
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert "disk_import" in message
    assert ops.requests_since(mark) == []  # nothing asked of Proxmox
