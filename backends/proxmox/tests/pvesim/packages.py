"""Package versions per node, as ``/nodes/{node}/apt/versions`` reports them.

pve-manager PVE/API2/APT.pm:776-988 (``versions``, Sys.Audit on the node):
one entry per Proxmox package with ``Package``, ``Version`` and
``OldVersion``. Careful: ``Version`` is the *candidate* (what apt would
install) and ``OldVersion`` the installed version (APT.pm:94-120,
``$assemble_pkginfo``); here the candidate is one patch level newer, as on a
node with updates pending.

Which features depend on a version (checked by the other behaviours):

- ``overrule-shutdown`` on stop: qemu-server 8.1.2 (its debian/changelog,
  "fix #4474");
- download-url into ``import`` content: libpve-storage-perl 8.2.8 for the
  content type (OVA only), 8.3.6 for qcow2, raw and vmdk files (its
  debian/changelog, "import: allow upload of guest images files into import
  storage"; PVE/API2/Storage/Status.pm ``UPLOAD_IMPORT_EXT_RE_1``).

Before PVE 9 the guest agent's privilege was VM.Monitor: PVE 9's
libpve-access-control (9.0.2, "drop VM.Monitor in favor of more granular
VM.GuestAgent.*") replaced it. fakepve lists PVE 9's privileges; a node of
an older release reports VM.Monitor instead in ``/access/permissions``.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .proxy import Call, Layer

#: Installed versions of a node of each release (from the packages' changelogs).
RELEASES: dict[str, dict[str, str]] = {
    "9.0": {"pve-manager": "9.0.10", "qemu-server": "9.0.22", "libpve-storage-perl": "9.0.13"},
    "8.4": {"pve-manager": "8.4.1", "qemu-server": "8.3.9", "libpve-storage-perl": "8.3.6"},
    "8.3": {"pve-manager": "8.3.5", "qemu-server": "8.3.8", "libpve-storage-perl": "8.3.3"},
    "8.1": {"pve-manager": "8.1.4", "qemu-server": "8.0.8", "libpve-storage-perl": "8.0.5"},
}


def parse(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("~", maxsplit=1)[0])[:3])


def candidate(version: str) -> str:
    major, minor, patch = [*parse(version), 0, 0, 0][:3]
    return f"{major}.{minor}.{patch + 1}"


class Packages:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.installed: dict[str, dict[str, str]] = {}
        layer.route("GET", r"/nodes/(?P<node>[^/]+)/apt/versions", self.versions)
        layer.route("GET", r"/access/permissions", self.permissions)

    def release(self, release: str, *nodes: str) -> None:
        """Make nodes (all, when none are named) run a release; the API's
        own version (``/version``) follows."""
        for node in nodes or tuple(self.layer.pve.nodes):
            self.installed[node] = dict(RELEASES[release])
        self.layer.pve.version = RELEASES[release]["pve-manager"]
        self.layer.pve.release_version = release

    def of(self, node: str) -> dict[str, str]:
        return self.installed.get(node) or RELEASES["9.0"]

    def has(self, node: str, package: str, minimum: tuple[int, ...]) -> bool:
        return parse(self.of(node)[package]) >= minimum

    async def permissions(self, call: Call, _m: re.Match[str]) -> web.StreamResponse | None:
        if parse(self.layer.pve.version) >= (9,):
            return None
        up = await self.layer.forward(call)
        if up.status != 200:
            return self.layer.relay(up)
        held: dict[str, dict[str, int]] = up.data() or {}
        for privileges in held.values():
            agent = [p for p in privileges if p.startswith("VM.GuestAgent.")]
            for privilege in agent:
                del privileges[privilege]
            if agent:
                privileges["VM.Monitor"] = 1
        return self.layer.answer(held)

    async def versions(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        node = m["node"]
        if node not in self.layer.pve.nodes:
            return None  # fakepve's "hostname lookup ... failed"
        if not self.layer.pve.nodes[node].get("online", True):
            return self.layer.error(595, "No route to host")
        out: list[dict[str, Any]] = []
        for package, version in sorted(self.of(node).items()):
            entry = {
                "Package": package,
                "Title": package,
                "Version": candidate(version),
                "OldVersion": version,
                "CurrentState": "Installed",
                "Origin": "Proxmox",
            }
            if package == "pve-manager":
                entry["ManagerVersion"] = version
            out.append(entry)
        return self.layer.answer(out)
