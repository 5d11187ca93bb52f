"""Our mark on a domain: a ``<metadata>`` element in our own XML namespace.

Its presence says "made by vm-provider" (Create is idempotent only for
marked domains; Delete of an unmarked one keeps disks it cannot prove are its
own; ListVMs says which domains are marked). It
records what cannot be read back from the domain itself::

  <vmp:vm xmlns:vmp="https://vm-provider.dev/xmlns/libvirt/1" created="2025-01-01T00:00:00Z">
    <vmp:spec-hash>3f5c...</vmp:spec-hash>
    <vmp:source kind="template" ref="default/debian-12.qcow2"/>
    <vmp:tag>web</vmp:tag>
    <vmp:volume pool="default" name="web-1-vda.qcow2" role="root" target="vda" spec="root"/>
    <vmp:volume pool="default" name="web-1-cidata.iso" role="cidata" target="sda"/>
    <vmp:networks>[{"network_name": "default", ...}]</vmp:networks>
    <vmp:clone-of>uuid of the source VM</vmp:clone-of>
  </vmp:vm>

Volume roles: ``root`` (the disk made from the image), ``data`` (blank disks
from disks_json, ``spec`` is their index), ``cidata`` (the cloud-init ISO),
``base`` (a frozen base shared by linked clones: deleted only once no
volume is backed by it). Delete removes exactly the volumes listed here, so
a shared template or base image is never deleted by a VM's delete.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

NS = "https://vm-provider.dev/xmlns/libvirt/1"
PREFIX = "vmp"
ROOT = f"{{{NS}}}vm"

ET.register_namespace(PREFIX, NS)

#: Set in the live mark (never the persistent one) once vCPUs were
#: hot-plugged or unplugged: QEMU 7.2 / libvirt 9 cannot restore a memory
#: snapshot taken after that ("Unknown savevm section ... cpu_common"), so
#: such snapshots are refused until the VM is powered off and on again.
VCPU_HOTPLUG = "vcpu-hotplug"


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


@dataclass(frozen=True)
class VolumeRef:
    """A storage volume this VM owns."""

    pool: str
    name: str
    role: str
    target: str = ""
    """Disk target (vda) it is attached as; empty for a base."""
    spec: str = ""
    """Which spec made it: ``root``, or the index into disks_json."""


@dataclass(frozen=True)
class Mark:
    created: str = ""
    spec_hash: str = ""
    source_kind: str = ""
    source_ref: str = ""
    tags: tuple[str, ...] = ()
    volumes: tuple[VolumeRef, ...] = ()
    networks_json: str = ""
    """The NetworkAttachment list of Create, as JSON (for clones)."""
    clone_of: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    """Further ``<vmp:*>`` text elements, kept as they are."""

    def to_element(self) -> ET.Element:
        root = ET.Element(ROOT, {"created": self.created} if self.created else {})
        if self.spec_hash:
            ET.SubElement(root, _q("spec-hash")).text = self.spec_hash
        if self.source_kind:
            ET.SubElement(root, _q("source"), {"kind": self.source_kind, "ref": self.source_ref})
        for tag in self.tags:
            ET.SubElement(root, _q("tag")).text = tag
        for vol in self.volumes:
            attrs = {"pool": vol.pool, "name": vol.name, "role": vol.role}
            if vol.target:
                attrs["target"] = vol.target
            if vol.spec:
                attrs["spec"] = vol.spec
            ET.SubElement(root, _q("volume"), attrs)
        if self.networks_json:
            ET.SubElement(root, _q("networks")).text = self.networks_json
        if self.clone_of:
            ET.SubElement(root, _q("clone-of")).text = self.clone_of
        for key, value in self.extra.items():
            ET.SubElement(root, _q(key)).text = value
        return root

    def to_xml(self) -> str:
        return ET.tostring(self.to_element(), encoding="unicode")

    def to_metadata(self) -> str:
        """The element without its namespace, as ``virDomainSetMetadata``
        wants it (libvirt puts it in our namespace itself)."""
        el = self.to_element()
        for node in el.iter():
            node.tag = node.tag.removeprefix(f"{{{NS}}}")
        return ET.tostring(el, encoding="unicode")

    @classmethod
    def from_element(cls, el: ET.Element) -> Mark:
        source = el.find(_q("source"))
        extra: dict[str, str] = {}
        known = {"spec-hash", "source", "tag", "volume", "networks", "clone-of"}
        for child in el:
            local = child.tag.removeprefix(f"{{{NS}}}")
            if local not in known and child.tag.startswith(f"{{{NS}}}"):
                extra[local] = child.text or ""
        return cls(
            created=el.get("created", ""),
            spec_hash=el.findtext(_q("spec-hash")) or "",
            source_kind=source.get("kind", "") if source is not None else "",
            source_ref=source.get("ref", "") if source is not None else "",
            tags=tuple(t.text or "" for t in el.findall(_q("tag"))),
            volumes=tuple(
                VolumeRef(
                    pool=v.get("pool", ""),
                    name=v.get("name", ""),
                    role=v.get("role", ""),
                    target=v.get("target", ""),
                    spec=v.get("spec", ""),
                )
                for v in el.findall(_q("volume"))
            ),
            networks_json=el.findtext(_q("networks")) or "",
            clone_of=el.findtext(_q("clone-of")) or "",
            extra=extra,
        )

    def with_volumes(self, volumes: tuple[VolumeRef, ...]) -> Mark:
        return replace(self, volumes=volumes)

    def with_tags(self, tags: tuple[str, ...]) -> Mark:
        return replace(self, tags=tags)

    def with_extra(self, key: str, value: str | None) -> Mark:
        """With ``<vmp:key>value</vmp:key>`` set (None: removed)."""
        extra = {k: v for k, v in self.extra.items() if k != key}
        if value is not None:
            extra[key] = value
        return replace(self, extra=extra)

    def volume_for(self, target: str) -> VolumeRef | None:
        return next((v for v in self.volumes if v.target == target), None)


def read(domain: ET.Element) -> Mark | None:
    """Our mark in a parsed domain XML, or None for a domain we did not make."""
    el = domain.find(f"metadata/{ROOT}")
    return None if el is None else Mark.from_element(el)


def write(domain: ET.Element, mark: Mark) -> None:
    """Put (or replace) our mark in a parsed domain XML."""
    metadata = domain.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        domain.insert(3, metadata)
    for old in metadata.findall(ROOT):
        metadata.remove(old)
    metadata.append(mark.to_element())
