"""Where a domain ``<disk>`` reads its data: a file, a block device, or a
network volume (RBD, Gluster).

:func:`vm_provider_libvirt.storage.attach` decides it from a volume's and
its pool's XML; :meth:`DiskSource.write` is the one place that writes a
disk's ``type`` and ``<source>`` (creating a VM, a clone's disks and seed).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    """A network disk's protocol, servers and credentials (copied from its
    pool's ``<source>``)."""

    protocol: str
    """rbd or gluster."""
    hosts: tuple[tuple[str, str], ...] = ()
    """(name, port); port "" for the protocol's default."""
    auth_username: str = ""
    secret_type: str = ""
    """ceph, iscsi: the libvirt secret's usage type."""
    secret_uuid: str = ""
    secret_usage: str = ""


@dataclass(frozen=True)
class DiskSource:
    type: str
    """file, block or network: the ``<disk type>``."""
    path: str
    """The file, the device, or the network volume's name (``pool/image``
    for RBD, ``volume/path`` for Gluster)."""
    network: Network | None = None

    def write(self, disk: ET.Element) -> None:
        """Set ``disk``'s type and replace its ``<source>`` (and ``<auth>``)
        with this one, keeping the element's place."""
        disk.set("type", self.type)
        children = list(disk)
        old = disk.find("source")
        index = children.index(old) if old is not None else _after(children, "driver")
        for tag in ("source", "auth"):
            for el in disk.findall(tag):
                disk.remove(el)
        source = ET.Element("source")
        if self.type == "network" and self.network is not None:
            source.set("protocol", self.network.protocol)
            source.set("name", self.path)
            for name, port in self.network.hosts:
                ET.SubElement(source, "host", {"name": name, **({"port": port} if port else {})})
        else:
            source.set("dev" if self.type == "block" else "file", self.path)
        disk.insert(index, source)
        auth = self._auth()
        if auth is not None:
            disk.insert(index + 1, auth)

    def _auth(self) -> ET.Element | None:
        net = self.network
        if net is None or not (net.secret_uuid or net.secret_usage):
            return None
        auth = ET.Element("auth", {"username": net.auth_username} if net.auth_username else {})
        secret = ET.SubElement(auth, "secret", type=net.secret_type or "ceph")
        if net.secret_uuid:
            secret.set("uuid", net.secret_uuid)
        else:
            secret.set("usage", net.secret_usage)
        return auth


def _after(children: list[ET.Element], tag: str) -> int:
    """The index just after the first ``tag`` child (0 without one)."""
    return next((i + 1 for i, el in enumerate(children) if el.tag == tag), 0)


__all__ = ["DiskSource", "Network"]
