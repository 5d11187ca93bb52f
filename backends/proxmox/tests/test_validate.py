"""Validate: reachability, version, effective privileges, settings."""

from __future__ import annotations

from typing import Any

from vm_provider_proxmox.validate import holds

from provider_core.pb import provider_pb2 as pb

TOKEN = "vmp@pve!ci"


def validate(ops: Any) -> Any:
    return ops.stub.Validate(pb.ValidateRequest(), timeout=30)


def test_all_good(ops: Any) -> None:
    report = validate(ops)
    assert report.ok, report.message
    assert "Proxmox VE 9.0.10" in report.message
    assert "every privilege" in report.message


def test_missing_privileges_listed_by_name(ops: Any, pve: Any) -> None:
    pve.grant(TOKEN, "/vms", "VM.Audit", "VM.PowerMgmt", "VM.Allocate")
    pve.grant("vmp@pve", "/storage/local-lvm", "Datastore.AllocateSpace")  # the user's grants count for its token
    report = validate(ops)
    assert not report.ok
    for privilege in (
        "VM.Clone on /vms",
        "VM.Config.CPU on /vms",
        "VM.Snapshot on /vms",
        "Datastore.Audit on /storage/local-lvm",
        "Datastore.AllocateTemplate on /storage/cloud",
        "SDN.Use on /sdn/zones/localnetwork/vmbr0",
    ):
        assert privilege in report.message
    for held in ("VM.PowerMgmt on", "VM.Allocate on", "Datastore.AllocateSpace on"):
        assert held not in report.message
    assert "(for SnapshotCreate, SnapshotDelete)" in report.message


def test_privilege_paths() -> None:
    perms = {"/": {"Sys.Audit": 0}, "/vms": {"VM.Audit": 1}, "/storage/a": {"Datastore.Audit": 0}}
    assert holds(perms, "/vms", "VM.Audit")
    assert holds(perms, "/vms/100", "VM.Audit")
    assert holds(perms, "/", "Sys.Audit")
    assert not holds(perms, "/nodes", "Sys.Audit")  # granted on / without propagation
    assert holds(perms, "/storage/a", "Datastore.Audit")
    assert not holds(perms, "/storage/b", "Datastore.Audit")


def test_bad_settings(provider: Any, ops_for: Any, settings: dict[str, Any]) -> None:
    ops = ops_for(provider({**settings, "node": "pve9", "storage": "local", "import_storage": "nope", "bridge": "vmbr7"}))
    report = validate(ops)
    assert not report.ok
    assert "node 'pve9' is not in the cluster" in report.message
    assert "storage 'local' does not hold 'images' content" in report.message
    assert "import_storage 'nope' does not exist" in report.message


def test_missing_bridge_and_offline_node(provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any) -> None:
    report = validate(ops_for(provider({**settings, "bridge": "vmbr7"})))
    assert "bridge 'vmbr7' does not exist on node pve1" in report.message
    pve.set_node_offline("pve1")
    report = validate(ops_for(provider(settings)))
    assert not report.ok
    assert "node 'pve1' is offline" in report.message


def test_old_version(ops: Any, pve: Any) -> None:
    pve.version = "7.4-3"
    report = validate(ops)
    assert not report.ok
    assert "too old" in report.message


def test_import_storage_needs_read_access(ops: Any, pve: Any) -> None:
    """Proxmox reads an image on import storage for a VM (import-from, ISO
    and Path images) only with Datastore.AllocateSpace or Datastore.Audit
    there (pve-storage src/PVE/Storage.pm, check_volume_access); listing
    its content needs the same (API2/Storage/Content.pm)."""
    pve.grant(TOKEN, "/", "Sys.Audit", "Sys.Modify")
    pve.grant(TOKEN, "/storage/cloud", "Datastore.AllocateTemplate")
    report = validate(ops)
    assert not report.ok
    assert "Datastore.AllocateSpace or Datastore.Audit on /storage/cloud" in report.message
    pve.grant(TOKEN, "/storage/cloud", "Datastore.Audit")
    assert "on /storage/cloud" not in validate(ops).message
