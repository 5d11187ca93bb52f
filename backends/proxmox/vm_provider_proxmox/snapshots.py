"""Snapshots: create (with the VM's RAM when asked), revert, delete.

Each is one Proxmox task and returns its UPID. The snapshot id is the
Proxmox snapshot name: the request's name hint when it is a valid one
(a letter, then letters, digits, ``-`` or ``_``, 2 to 40 characters), made
valid otherwise, or generated when none is given. A name already in use is
ALREADY_EXISTS.

``include_memory`` saves the RAM (``vmstate=1``) of a running VM; a stopped
VM has no RAM to save and gets a disk snapshot. Reverting to a snapshot with
RAM resumes the VM as it was (Proxmox does that itself); reverting to a
disk-only snapshot leaves it stopped.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from provider_core import AlreadyExists, NotFound, Outcome, SnapshotSpec

from .inventory import Cluster, VmRef, VmState

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{1,39}$")


def snapshot_name(hint: str) -> str:
    """A valid Proxmox snapshot name from the client's hint."""
    if not hint:
        return time.strftime("snap-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(2)
    if NAME_RE.match(hint) and hint != "current":
        return hint
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", hint).strip("-")
    if not name[:1].isalpha() or len(name) < 2 or name == "current":
        name = "s-" + name
    name = name[:40].rstrip("-")
    return name if NAME_RE.match(name) else snapshot_name("")


def listing(cluster: Cluster, ref: VmRef | VmState) -> dict[str, dict[str, Any]]:
    """The VM's snapshots by name (without Proxmox's "current" entry)."""
    entries: list[dict[str, Any]] = cluster.client.get(f"{ref.path}/snapshot") or []
    return {str(e["name"]): e for e in entries if e.get("name") and e.get("name") != "current"}


def names(cluster: Cluster, ref: VmRef | VmState) -> list[str]:
    return list(listing(cluster, ref))


def create(cluster: Cluster, spec: SnapshotSpec) -> Outcome[str]:
    ref = cluster.state(spec.vm_id)
    name = snapshot_name(spec.name)
    if name in names(cluster, ref):
        raise AlreadyExists(f"VM {ref.vmid} already has a snapshot named {name!r}")
    params: dict[str, Any] = {"snapname": name, "description": spec.description or None}
    if spec.include_memory and ref.running:  # a paused VM has its RAM too
        params["vmstate"] = 1
    return Outcome.native(name, cluster.client.post(f"{ref.path}/snapshot", **params))


def find(cluster: Cluster, ref: VmRef | VmState, snapshot_id: str) -> dict[str, Any]:
    """The VM's snapshot of that name (its entry in the snapshot list);
    NotFound when it has none."""
    snap = listing(cluster, ref).get(snapshot_id)
    if snap is None:
        raise NotFound(f"VM {ref.vmid} has no snapshot {snapshot_id!r}")
    return snap


def _existing(cluster: Cluster, vm_id: str, snapshot_id: str) -> tuple[VmState, dict[str, Any]]:
    ref = cluster.state(vm_id)
    return ref, find(cluster, ref, snapshot_id)


def revert(cluster: Cluster, vm_id: str, snapshot_id: str) -> Outcome[None]:
    """Roll back; a snapshot with RAM resumes the VM (``start=1``, which
    Proxmox implies for such snapshots anyway)."""
    ref, snap = _existing(cluster, vm_id, snapshot_id)
    start = 1 if str(snap.get("vmstate", "0")) in ("1", "True", "true") else None
    return Outcome.native(None, cluster.client.post(f"{ref.path}/snapshot/{snapshot_id}/rollback", start=start))


def delete(cluster: Cluster, vm_id: str, snapshot_id: str) -> Outcome[None]:
    ref, _ = _existing(cluster, vm_id, snapshot_id)
    return Outcome.native(None, cluster.client.delete(f"{ref.path}/snapshot/{snapshot_id}"))
