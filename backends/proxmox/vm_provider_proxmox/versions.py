"""What each node's packages can do: ``/nodes/{node}/apt/versions``.

Nodes of a cluster may run different versions (a rolling upgrade), so a
feature is looked up on the node that will do the work. The answer lists
each Proxmox package with ``Version``, the *candidate* apt would install,
and ``OldVersion``, the version installed (pve-manager PVE/API2/APT.pm,
``$assemble_pkginfo``): the installed one is what counts. Versions are read
once per node per connection (the call needs Sys.Audit on the node); a node
whose versions cannot be read is "unknown", and a feature there is neither
assumed nor ruled out.

Features and the version that brought them:

- :data:`OVERRULE_SHUTDOWN`: a stop may abort a graceful shutdown in
  progress (``overrule-shutdown``; qemu-server 8.1.2, bug #4474);
- :data:`IMPORT_IMAGES`: download-url takes qcow2, raw and vmdk files into
  ``import`` content (libpve-storage-perl 8.3.6, Proxmox VE 8.4).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from provider_core import ProviderError

from .client import PveClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Feature:
    package: str
    minimum: tuple[int, ...]
    what: str

    @property
    def needs(self) -> str:
        return f"{self.package} {'.'.join(map(str, self.minimum))}"


OVERRULE_SHUTDOWN = Feature("qemu-server", (8, 1, 2), "stopping a VM during a graceful shutdown (overrule-shutdown)")
IMPORT_IMAGES = Feature(
    "libpve-storage-perl", (8, 3, 6), "download-url of qcow2, raw and vmdk images into 'import' content (image URLs)"
)


def parse(version: str) -> tuple[int, ...]:
    """``8.3.6`` -> (8, 3, 6); a Debian suffix (``~rc1``, ``+pve1``) is ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", re.split(r"[~+-]", version, maxsplit=1)[0])[:3])


class NodeVersions:
    """Installed package versions per node, read on first use."""

    def __init__(self, client: PveClient) -> None:
        self.client = client
        self._known: dict[str, dict[str, str] | None] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Read them again (after a reconnect: nodes may have been upgraded)."""
        with self._lock:
            self._known.clear()

    def packages(self, node: str) -> dict[str, str] | None:
        """{package: installed version} of a node; None when unreadable."""
        with self._lock:
            if node in self._known:
                return self._known[node]
        try:
            entries: list[dict[str, Any]] = self.client.get(f"nodes/{node}/apt/versions") or []
        except ProviderError as exc:
            log.info("package versions of node %s are unknown: %s", node, exc)
            return None  # not remembered: a passing failure is asked again next time
        found = {
            str(e["Package"]): str(e.get("OldVersion") or e.get("Version") or "")
            for e in entries
            if e.get("Package") and e.get("CurrentState", "Installed") == "Installed"
        }
        with self._lock:
            self._known[node] = found
        return found

    def version(self, node: str, package: str) -> str | None:
        known = self.packages(node)
        return None if known is None else known.get(package)

    def has(self, node: str, feature: Feature) -> bool | None:
        """Whether the node has the feature; None when its version is unknown."""
        version = self.version(node, feature.package)
        if not version or not parse(version):
            return None
        return parse(version) >= feature.minimum

    def lacking(self, node: str, feature: Feature) -> str:
        """Why the node lacks the feature ("" when it has it or is unknown)."""
        if self.has(node, feature) is not False:
            return ""
        return (
            f"node {node} runs {feature.package} {self.version(node, feature.package)}; "
            f"{feature.what} needs {feature.needs} or later"
        )
