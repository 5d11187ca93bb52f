"""Typed values that pass between the core and a backend.

Backends take and return these, never protobuf messages: the gRPC layer
converts. Request specs (``CreateSpec`` ...) are built by the core from the
request after the JSON fields were parsed and checked.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .specs import Customization, DesiredVM, DiskSpec, NetworkAttachment, Placement, VMClass, VMImage


class PowerState(str, Enum):
    """The four power-state words deployed clients compare exactly."""

    ON = "On"
    OFF = "Off"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"


class PowerOp(str, Enum):
    ON = "on"
    OFF = "off"
    REBOOT = "reboot"
    SHUTDOWN_GRACEFUL = "shutdown_graceful"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class CreateSpec(_Model):
    """Everything a Create request asks for, parsed and checked."""

    name: str
    vm_class: VMClass = VMClass()
    image: VMImage = VMImage()
    networks: list[NetworkAttachment] = []
    disks: list[DiskSpec] = []
    placement: Placement = Placement()
    tags: list[str] = []
    user_data: bytes = b""
    meta_data: bytes = b""


class CloneSpec(_Model):
    source_vm_id: str
    target_name: str
    linked: bool = False
    vm_class: VMClass = VMClass()
    placement: Placement = Placement()
    customize: Customization = Customization()


class ImagePrepareSpec(_Model):
    image: VMImage
    target_name: str
    storage_hint: str = ""


class ExportSpec(_Model):
    vm_id: str
    disk_id: str = ""
    snapshot_id: str = ""
    destination_url: str
    format: str
    compress: bool = False
    credentials: dict[str, str] = Field(default_factory=dict, repr=False)


class ImportSpec(_Model):
    source_url: str
    storage_hint: str = ""
    format: str
    target_name: str
    verify_checksum: bool = False
    expected_checksum: str = ""
    credentials: dict[str, str] = Field(default_factory=dict, repr=False)


class SnapshotSpec(_Model):
    vm_id: str
    name: str
    description: str = ""
    include_memory: bool = False


class VMStatus(_Model):
    """Describe's answer for an existing VM."""

    power_state: PowerState
    ips: list[str] = []
    console_url: str = ""
    raw: dict[str, Any] = {}
    """Backend-specific details (JSON-serialisable); include the native state."""


class Disk(_Model):
    id: str
    path: str = ""
    size_gib: int = 0
    format: str = ""


class Nic(_Model):
    name: str = ""
    mac: str = ""
    ip_address: str = ""


class VMInfo(_Model):
    """One entry of ListVMs."""

    id: str
    name: str
    power_state: PowerState
    ips: list[str] = []
    cpu: int = 0
    memory_mib: int = 0
    disks: list[Disk] = []
    networks: list[Nic] = []
    raw: dict[str, str] = {}


class DiskDetails(_Model):
    """GetDiskInfo's answer."""

    disk_id: str
    format: str = ""
    virtual_size_bytes: int = 0
    actual_size_bytes: int = 0
    path: str = ""
    is_bootable: bool = False
    snapshots: list[str] = []
    backing_file: str = ""
    metadata: dict[str, str] = {}


class ExportResult(_Model):
    export_id: str
    estimated_size_bytes: int = 0
    checksum: str = ""
    """SHA256 hex of the exported bytes; empty until the export finished."""


class ImportResult(_Model):
    disk_id: str
    path: str = ""
    actual_size_bytes: int = 0
    checksum: str = ""


class ValidationReport(_Model):
    ok: bool
    message: str


class TaskState(_Model):
    """TaskStatus's answer for a backend-native task."""

    done: bool
    error: str = ""


__all__ = [
    "CloneSpec",
    "CreateSpec",
    "DesiredVM",
    "Disk",
    "DiskDetails",
    "ExportResult",
    "ExportSpec",
    "ImagePrepareSpec",
    "ImportResult",
    "ImportSpec",
    "Nic",
    "PowerOp",
    "PowerState",
    "SnapshotSpec",
    "TaskState",
    "ValidationReport",
    "VMInfo",
    "VMStatus",
]
