"""The simulated hypervisor's own records: machines, disks, NICs, snapshots, images.

These are the "native" objects of the simulation, the equivalent of a libvirt
domain or a Proxmox VM config. They serialise to plain JSON so the
hypervisor can keep them in a state file across restarts.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

#: Native states of a simulated machine.
CREATING = "creating"
SHUTOFF = "shutoff"
RUNNING = "running"
SHUTTING_DOWN = "shutting-down"
"""The guest was asked to shut down (ACPI) and has not finished yet."""
PAUSED = "paused"
"""The guest's CPUs are stopped, its memory kept (while its memory is saved to a snapshot)."""

STATES = (CREATING, SHUTOFF, RUNNING, SHUTTING_DOWN, PAUSED)
LIVE = (RUNNING, SHUTTING_DOWN, PAUSED)
"""States in which the guest exists in memory (it has addresses and a console)."""


@dataclass
class Disk:
    name: str
    size_gib: int
    format: str = "qcow2"
    path: str = ""
    backing: str = ""
    """Path of the image or disk this one is an overlay on ("" for none)."""
    bootable: bool = False
    thick: bool = False

    @property
    def allocated_bytes(self) -> int:
        """A stable made-up allocation: thick and raw disks are fully
        allocated, overlays hold little, thin disks an eighth."""
        size = self.size_gib * 2**30
        if self.thick or self.format == "raw":
            return size
        return size // 64 if self.backing else size // 8


@dataclass
class Nic:
    name: str
    mac: str
    network: str = ""
    bridge: str = ""
    model: str = "virtio"
    vlan: int = 0
    static_ip: str = ""
    prefix: int = 0

    def address(self, vm_id: str) -> str:
        """The address the guest holds on this NIC: the static one, else a
        stable made-up DHCP lease."""
        if self.static_ip:
            return self.static_ip
        digest = hashlib.sha256(f"{vm_id}/{self.mac}".encode()).digest()
        return f"10.88.{digest[0]}.{2 + digest[1] % 252}"


@dataclass
class Snapshot:
    id: str
    name: str
    description: str
    created: float
    memory: bool
    state: str
    cpu: int
    memory_mib: int
    disk_sizes: dict[str, int]
    hardware_version: int


@dataclass
class Machine:
    id: str
    name: str
    owned: bool
    """Made by this provider (Create/Clone); a foreign machine's name is never reused."""
    state: str
    cpu: int
    memory_mib: int
    max_cpu: int
    max_memory_mib: int
    hardware_version: int
    firmware: str = "BIOS"
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    extra_config: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    image: str = ""
    """Where the root disk came from: an image path, a URL, or "" (blank)."""
    placement: dict[str, str] = field(default_factory=dict)
    linked_from: str = ""
    """Id of the machine whose disks back this one's (linked clone)."""
    customization: dict[str, Any] = field(default_factory=dict)
    user_data_bytes: int = 0
    console_port: int = 5900
    created: float = 0.0
    shutdown_at: float | None = None
    """When an ACPI shutdown in progress completes (SHUTTING_DOWN only)."""

    @property
    def ignores_acpi(self) -> bool:
        return self.extra_config.get("sim.ignore_acpi", "").lower() in ("1", "true", "yes")

    def disk(self, name: str) -> Disk | None:
        return next((d for d in self.disks if d.name == name), None)

    def snapshot(self, snap: str) -> Snapshot | None:
        return next((s for s in self.snapshots if snap in (s.id, s.name)), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Machine:
        data = dict(data)
        data["disks"] = [Disk(**d) for d in data.get("disks", [])]
        data["nics"] = [Nic(**n) for n in data.get("nics", [])]
        data["snapshots"] = [Snapshot(**s) for s in data.get("snapshots", [])]
        return cls(**data)


@dataclass
class Image:
    name: str
    path: str
    size_gib: int
    format: str = "qcow2"
    source: str = ""
    """Where it came from: a URL, another image's path, or "" (present at start)."""
    checksum: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Image:
        return cls(**data)
