"""Where a new VM (or an image download) goes: an online node that has the
storages and bridges it needs.

Storages may be enabled on some nodes only (storage.cfg ``nodes``); Proxmox
finds that out only once a task allocates a disk there (pve-storage
src/PVE/Storage.pm:264-276, ``storage_check_node``), and a missing bridge
only when the VM starts. So the node is checked before anything is made:

- storages from the cluster listing (one request for every node; a storage
  the token may not audit is not listed anywhere and is left to Proxmox);
- bridges from the node's ``network?type=any_bridge`` (its Linux and OVS
  bridges and the SDN vnets it has; pve-manager PVE/API2/Network.pm:427-452),
  one request per node looked at, and only for VMs with NICs.

A node named by the request (placement Host) that lacks something is
INVALID_ARGUMENT naming the field; one named by the settings (``node``) is
FAILED_PRECONDITION naming the setting, or INVALID_ARGUMENT naming the
request's field that asked for what is missing. Without either, the online
node with most free memory that has everything is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provider_core import FailedPrecondition, InvalidArgument, ProviderError

from .inventory import Cluster, Listing
from .versions import Feature


@dataclass
class Needs:
    """What the VM needs on its node: {storage or bridge: where it was asked for}
    (a request field such as ``networks_json[0].Bridge``, or ``settings.storage``)."""

    storages: dict[str, str] = field(default_factory=dict)
    bridges: dict[str, str] = field(default_factory=dict)
    feature: Feature | None = None

    def storage(self, name: str, origin: str) -> None:
        if name:
            self.storages.setdefault(name, origin)

    def bridge(self, name: str, origin: str) -> None:
        if name:
            self.bridges.setdefault(name, origin)


@dataclass(frozen=True)
class Problem:
    origin: str
    text: str

    @property
    def from_request(self) -> bool:
        return not self.origin.startswith("settings.")


def problems(cluster: Cluster, listing: Listing, node: str, needs: Needs) -> list[Problem]:
    """What the node lacks of ``needs`` (an empty list: it has everything)."""
    found: list[Problem] = []
    for storage, origin in needs.storages.items():
        where = listing.storages.get(storage)
        if where is not None and node not in where:
            found.append(Problem(origin, f"storage '{storage}' is not available on node '{node}' ({origin})"))
    if needs.bridges:
        bridges = _bridges(cluster, node)
        for bridge, origin in needs.bridges.items():
            if bridges is not None and bridge not in bridges:
                found.append(Problem(origin, f"bridge '{bridge}' does not exist on node '{node}' ({origin})"))
    if needs.feature is not None and (why := cluster.versions.lacking(node, needs.feature)):
        found.append(Problem("settings.import_storage", why))
    return found


def _bridges(cluster: Cluster, node: str) -> set[str] | None:
    """The node's bridges and SDN vnets; None when they cannot be read."""
    try:
        entries: list[dict[str, Any]] = cluster.client.get(f"nodes/{node}/network", type="any_bridge") or []
    except ProviderError:
        return None
    return {str(e.get("iface")) for e in entries if e.get("iface")}


def _refuse(node: str, found: list[Problem], host_field: str) -> ProviderError:
    text = "; ".join(p.text for p in found)
    if host_field:
        return InvalidArgument.field(host_field, text)
    asked = [p for p in found if p.from_request]
    if asked:
        return InvalidArgument.field(asked[0].origin, text)
    return FailedPrecondition(f"the configured node {node} cannot take this VM: {text}")


def choose(cluster: Cluster, listing: Listing, needs: Needs, host: str = "", prefer: str = "") -> str:
    """The node for a new VM: ``host`` (placement Host), else the configured
    node, else ``prefer`` (a template's node) or the online node with most
    free memory, among those that have what the VM needs."""
    named = host or cluster.settings.node
    if named:
        if listing.nodes and named not in listing.nodes:
            known = ", ".join(sorted(listing.nodes))
            if host:
                raise InvalidArgument.field("placement_json.Host", f"node {host!r} is not in the cluster (nodes: {known})")
            raise FailedPrecondition(f"the configured node {named!r} is not in the cluster (nodes: {known})")
        found = problems(cluster, listing, named, needs)
        if found:
            raise _refuse(named, found, "placement_json.Host" if host else "")
        return named
    node, seen = _first_fit(cluster, listing, needs, prefer)
    if not node:
        raise FailedPrecondition("no online node has what the VM needs (" + " | ".join(seen) + ")")
    return node


def _first_fit(cluster: Cluster, listing: Listing, needs: Needs, prefer: str) -> tuple[str, list[str]]:
    """The first online node (``prefer`` first) that has what ``needs``
    asks for, or "" and what each node lacks."""
    order = listing.online()
    if not order:
        raise FailedPrecondition("no Proxmox node is online")
    if prefer in order:
        order.remove(prefer)
        order.insert(0, prefer)
    seen: list[str] = []
    for node in order:
        found = problems(cluster, listing, node, needs)
        if not found:
            return node, []
        seen.append(f"{node}: " + "; ".join(p.text for p in found))
    return "", seen


def download_node(cluster: Cluster, listing: Listing, storage: str, origin: str, feature: Feature | None) -> str:
    """A node to download an image on: one where ``storage`` is available
    (the configured node first) and, for disk images, that can put them
    into import content."""
    needs = Needs(feature=feature)
    needs.storage(storage, origin)
    node, seen = _first_fit(cluster, listing, needs, cluster.settings.node)
    if not node:
        raise FailedPrecondition("no online node can download the image: " + " | ".join(seen))
    return node
