"""Validate: can this provider work against this cluster, with these
credentials and settings? Never raises: every failed check is reported.

Checks: the API answers (and the credentials are accepted); the Proxmox VE
version (8.0 or later) and, per node, the package versions the settings
need (``/nodes/{node}/apt/versions``): with ``import_storage``,
libpve-storage-perl 8.3.6 (Proxmox VE 8.4) on the nodes that download
images, since older ones take no qcow2, raw or vmdk file into ``import``
content; the effective privileges of the token or user from
``/access/permissions`` against what each operation needs (missing ones
listed by name, path and the operations that need them); the configured
node, storages (with the content types they are used for), bridge and
snippets directory; with the SSH data path, a login to each online node
(host key checked) that finds ``pvesm`` and ``qemu-img`` there.

Privileges granted on a path count for it and, when propagated, for
everything below. Privileges that come only through resource pools or on
individual VMs are not enough for a provider that creates VMs, and are not
counted.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from provider_core import ProviderError, ValidationReport

from .inventory import Cluster
from .node import NodeShell
from .versions import IMPORT_IMAGES, OVERRULE_SHUTDOWN

MIN_VERSION = (8, 0)


@dataclass(frozen=True)
class Need:
    path: str
    privileges: tuple[str, ...]
    """Any one of these satisfies the need (usually exactly one)."""
    operations: str


def needs(cluster: Cluster, version: tuple[int, int]) -> list[Need]:
    s = cluster.settings
    agent = "VM.GuestAgent.Audit" if version >= (9, 0) else "VM.Monitor"
    out = [
        Need("/vms", ("VM.Audit",), "every operation"),
        Need("/vms", ("VM.Allocate",), "Create, Clone, Delete, ExportDisk of an LVM-thin or krbd snapshot"),
        Need("/vms", ("VM.Clone",), "Clone, Create from a template, ExportDisk of an LVM-thin or krbd snapshot"),
        Need("/vms", ("VM.Config.CPU",), "Create, Reconfigure"),
        Need("/vms", ("VM.Config.Memory",), "Create, Reconfigure"),
        Need("/vms", ("VM.Config.Disk",), "Create, Reconfigure"),
        Need("/vms", ("VM.Config.Network",), "Create, Reconfigure"),
        Need("/vms", ("VM.Config.Options",), "Create, Reconfigure, ExportDisk of an LVM-thin or krbd snapshot"),
        Need("/vms", ("VM.Config.HWType",), "Create, HardwareUpgrade"),
        Need("/vms", ("VM.Config.Cloudinit",), "Create, Clone (cloud-init)"),
        Need("/vms", ("VM.Config.CDROM",), "Create (ISO images, cloud-init drive)"),
        Need("/vms", ("VM.PowerMgmt",), "Power, Delete"),
        Need("/vms", ("VM.Snapshot",), "SnapshotCreate, SnapshotDelete"),
        Need("/vms", ("VM.Snapshot.Rollback",), "SnapshotRevert"),
        Need("/vms", (agent,), "Describe (IPs from the guest agent)"),
        Need("/nodes", ("Sys.Audit",), "Validate, and choosing a node when node is not set"),
        Need(f"/storage/{s.storage}", ("Datastore.AllocateSpace",), "Create, Clone, Reconfigure (disks)"),
        Need(f"/storage/{s.storage}", ("Datastore.Audit",), "GetDiskInfo"),
        Need(f"/sdn/zones/localnetwork/{s.bridge}", ("SDN.Use",), "Create, Reconfigure (NICs)"),
    ]
    if s.import_storage:
        out += [
            Need(f"/storage/{s.import_storage}", ("Datastore.AllocateTemplate",), "ImagePrepare, Create from a URL"),
            Need(
                f"/storage/{s.import_storage}",
                ("Datastore.AllocateSpace", "Datastore.Audit"),
                "Create from a URL or Path (Proxmox reads the image for the VM), ImagePrepare (listing the images there)",
            ),
            Need("/", ("Sys.Audit",), "ImagePrepare, Create from a URL (download-url)"),
            Need("/", ("Sys.Modify", "Sys.AccessNetwork"), "ImagePrepare, Create from a URL (download-url)"),
        ]
    if s.snippets_storage:
        out.append(Need(f"/storage/{s.snippets_storage}", ("Datastore.Audit",), "cloud-init user data (snippets)"))
    return out


def _ancestors(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) if i else "/" for i in range(len(parts), -1, -1)]


def holds(perms: dict[str, dict[str, Any]], path: str, privilege: str) -> bool:
    """Whether ``privilege`` applies on ``path``: granted there, or on an
    ancestor with propagation."""
    for i, p in enumerate(_ancestors(path)):
        granted = perms.get(p, {})
        if privilege in granted and (i == 0 or str(granted[privilege]) in ("1", "True", "true")):
            return True
    return False


def _version(text: str) -> tuple[int, int]:
    parts = [*text.split("."), "0", "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


def validate(cluster: Cluster) -> ValidationReport:
    client, s = cluster.client, cluster.settings
    try:
        info: dict[str, Any] = client.get("version")
    except ProviderError as exc:
        return ValidationReport(ok=False, message=f"Proxmox API at {s.endpoint}: {exc}")
    version = _version(str(info.get("version", "")))
    cluster.versions.forget()  # read the nodes' packages afresh
    ok_lines = [f"Proxmox VE {info.get('version', '?')} at {s.endpoint}"]
    problems: list[str] = []
    if version < MIN_VERSION:
        problems.append(
            f"Proxmox VE {info.get('version')} is too old; this backend needs {MIN_VERSION[0]}.{MIN_VERSION[1]} or later"
        )
    for check in (_privileges, _node, _packages, _storages, _snippets_dir, _ssh):
        try:
            check(cluster, version, ok_lines, problems)
        except ProviderError as exc:
            problems.append(f"{check.__name__.strip('_')} check failed: {exc}")
    if problems:
        return ValidationReport(ok=False, message="; ".join(problems) + " (" + "; ".join(ok_lines) + ")")
    return ValidationReport(ok=True, message="; ".join(ok_lines))


def _privileges(cluster: Cluster, version: tuple[int, int], ok_lines: list[str], problems: list[str]) -> None:
    perms: dict[str, dict[str, Any]] = cluster.client.get("access/permissions") or {}
    missing: dict[tuple[str, str], str] = {}
    for need in needs(cluster, version):
        if not any(holds(perms, need.path, p) for p in need.privileges):
            missing[(" or ".join(need.privileges), need.path)] = need.operations
    who = cluster.settings.token_id or cluster.settings.username
    if missing:
        listed = "; ".join(f"{priv} on {path} (for {ops})" for (priv, path), ops in missing.items())
        problems.append(f"{who} lacks privileges: {listed}")
    else:
        ok_lines.append(f"{who} holds every privilege the provider needs")


def _node(cluster: Cluster, version: tuple[int, int], ok_lines: list[str], problems: list[str]) -> None:
    s = cluster.settings
    nodes: list[dict[str, Any]] = cluster.client.get("cluster/resources", type="node") or []
    online = sorted(str(n.get("node")) for n in nodes if n.get("status") == "online")
    if s.node:
        if s.node not in {str(n.get("node")) for n in nodes}:
            problems.append(
                f"node {s.node!r} is not in the cluster (nodes: {', '.join(sorted(str(n.get('node')) for n in nodes))})"
            )
            return
        if s.node not in online:
            problems.append(f"node {s.node!r} is offline")
            return
        bridges = cluster.client.get(f"nodes/{s.node}/network", type="any_bridge") or []
        if s.bridge not in {str(b.get("iface")) for b in bridges}:
            problems.append(f"bridge {s.bridge!r} does not exist on node {s.node}")
    elif not online:
        problems.append("no node of the cluster is online")
        return
    ok_lines.append(f"nodes online: {', '.join(online)}")


def download_nodes(cluster: Cluster) -> list[str]:
    """The nodes that would download images: the configured one, else every
    online node."""
    if cluster.settings.node:
        return [cluster.settings.node]
    nodes: list[dict[str, Any]] = cluster.client.get("cluster/resources", type="node") or []
    return sorted(str(n["node"]) for n in nodes if n.get("status") == "online" and n.get("node"))


def images_impossible(cluster: Cluster) -> str:
    """Why no node can take disk images by URL ("" when one can, or when a
    node's versions are unknown)."""
    why: list[str] = []
    for node in download_nodes(cluster):
        lacking = cluster.versions.lacking(node, IMPORT_IMAGES)
        if not lacking:
            return ""  # this node can (or may: its versions are unknown)
        why.append(lacking)
    return "; ".join(why)


def _packages(cluster: Cluster, version: tuple[int, int], ok_lines: list[str], problems: list[str]) -> None:
    seen = []
    for node in download_nodes(cluster):
        packages = cluster.versions.packages(node)
        if packages is None:
            if cluster.settings.import_storage:
                problems.append(f"cannot read the package versions of node {node} (Sys.Audit on /nodes/{node})")
            continue
        seen.append(f"{node} (pve-manager {packages.get('pve-manager', '?')})")
        if cluster.settings.import_storage and (why := cluster.versions.lacking(node, IMPORT_IMAGES)):
            problems.append(f"{why} (Proxmox VE 8.4): leave import_storage empty or upgrade")
        if why := cluster.versions.lacking(node, OVERRULE_SHUTDOWN):
            ok_lines.append(f"{why}: OFF and Delete during a graceful shutdown wait for it")
    if seen:
        ok_lines.append("node versions: " + ", ".join(seen))


def _storages(cluster: Cluster, version: tuple[int, int], ok_lines: list[str], problems: list[str]) -> None:
    s = cluster.settings
    entries: list[dict[str, Any]] = cluster.client.get("storage") or []
    content = {str(e.get("storage")): set(str(e.get("content", "")).split(",")) for e in entries}
    wanted = [(s.storage, "images", "storage")]
    if s.import_storage:
        wanted += [(s.import_storage, "import", "import_storage"), (s.import_storage, "iso", "import_storage")]
    if s.snippets_storage:
        wanted.append((s.snippets_storage, "snippets", "snippets_storage"))
    for name, kind, setting in wanted:
        if name not in content:
            problems.append(f"{setting} {name!r} does not exist")
        elif kind not in content[name]:
            problems.append(f"{setting} {name!r} does not hold {kind!r} content (it holds {', '.join(sorted(content[name]))})")
    if not problems:
        ok_lines.append("storages ok: " + ", ".join(sorted({w[0] for w in wanted})))


def _snippets_dir(cluster: Cluster, version: tuple[int, int], ok_lines: list[str], problems: list[str]) -> None:
    root = cluster.settings.snippets_dir
    if root is None:
        return
    probe = root / "snippets" / f".vm-provider-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        os.unlink(probe)
    except OSError as exc:
        problems.append(f"snippets_dir {root} is not writable: {exc.strerror}")
        return
    ok_lines.append(f"snippets_dir {root} writable")


def _ssh(cluster: Cluster, version: tuple[int, int], ok_lines: list[str], problems: list[str]) -> None:
    shell = NodeShell(cluster.settings)
    if not shell.configured:
        return
    nodes: list[dict[str, Any]] = cluster.client.get("cluster/resources", type="node") or []
    reached = []
    tools = ["pvesm", "qemu-img", *(["curl"] if cluster.settings.direct_transfers else [])]
    for name in sorted(str(n.get("node")) for n in nodes if n.get("status") == "online"):
        try:
            with shell.session(name) as node:
                missing = node.run(["sh", "-c", 'for t; do command -v "$t" >/dev/null || echo "$t"; done', "sh", *tools])
        except ProviderError as exc:
            problem = f"disk data path: {exc}"
            if problem not in problems:  # an unreadable key file is the same for every node: said once
                problems.append(problem)
            continue
        if missing.split():
            problems.append(f"disk data path: node {name} lacks {', '.join(missing.split())}")
            continue
        reached.append(name)
    if reached:
        ok_lines.append(f"SSH data path ({', '.join(tools)}) on: {', '.join(reached)}")
