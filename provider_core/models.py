"""Typed values that pass between the core and a backend.

Backends take and return these, never protobuf messages. Requests
(``CreateSpec``, ``PowerRequest`` ...) are :class:`Request` models: the core
builds them from a request's fields, and their validators are the only
checks of a request (names, ids, URLs, formats, sizes, the JSON inside
``*_json`` fields): what fails is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import urls
from .specs import (
    _CONTROL,
    MAX_ITEMS,
    MAX_PROSE,
    Customization,
    DesiredVM,
    DiskList,
    Line,
    NetworkList,
    Placement,
    Plain,
    Prose,
    Required,
    Tags,
    VMClass,
    VMImage,
    check_url,
    json_text,
    lower_or,
)


class PowerState(str, Enum):
    """The four power-state words deployed clients compare exactly."""

    ON = "On"
    OFF = "Off"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Request(BaseModel):
    """Base of what the core builds from a request, checked, and hands to a
    backend: the one place requests are validated. Built from the
    request's fields by their protocol names (``class_json``) or in Python
    by field name (``vm_class``); a field the request does not have is
    refused, so every field of a request message is accounted for."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    def args(self) -> tuple[Any, ...]:
        """The arguments of the backend method this request calls."""
        return (self,)


def _wire(name: str, default: Any = None, **kw: Any) -> Any:
    """A field whose protocol name differs from its Python one."""
    return Field(default, validation_alias=name, **kw)


class CreateSpec(Request):
    """Everything a Create request asks for, parsed and checked."""

    name: Required
    vm_class: Annotated[VMClass, json_text(VMClass)] = _wire("class_json", VMClass())
    image: Annotated[VMImage, json_text(VMImage)] = _wire("image_json", VMImage())
    networks: Annotated[NetworkList, json_text(NetworkList)] = _wire("networks_json", [])
    disks: Annotated[DiskList, json_text(DiskList)] = _wire("disks_json", [])
    placement: Annotated[Placement, json_text(Placement)] = _wire("placement_json", Placement())
    tags: Tags = []
    user_data: Annotated[bytes, Field(max_length=MAX_PROSE)] = b""
    meta_data: Annotated[bytes, Field(max_length=MAX_PROSE)] = b""


class CloneSpec(Request):
    source_vm_id: Required
    target_name: Required
    linked: bool = False
    vm_class: Annotated[VMClass, json_text(VMClass)] = _wire("class_json", VMClass())
    placement: Annotated[Placement, json_text(Placement)] = _wire("placement_json", Placement())
    customize: Annotated[Customization, json_text(Customization)] = _wire("customize_json", Customization())


class ImagePrepareSpec(Request):
    image: Annotated[VMImage, json_text(VMImage, required=True)] = _wire("image_json", ...)
    target_name: Required
    storage_hint: Plain = ""

    @field_validator("image")
    @classmethod
    def _names_an_image(cls, v: VMImage) -> VMImage:
        if v.source == "blank":
            raise ValueError("names no image: give URL, Path or TemplateName")
        return v

    @model_validator(mode="after")
    def _storage(self) -> ImagePrepareSpec:
        """The image's own storage (the VMImage resource's storagePool) when
        the request gives no storage_hint."""
        if not self.storage_hint and self.image.storage:
            object.__setattr__(self, "storage_hint", self.image.storage)
        return self


def _transfer_url(value: str) -> str:
    check_url(value, urls.SCHEMES)
    parts = urlsplit(value)
    if parts.scheme == "s3" and not parts.path.lstrip("/"):
        raise ValueError("s3 URL names no object key (s3://bucket/key)")
    return value


def _sha256(value: str) -> str:
    value = value.strip().lower().removeprefix("sha256:")
    if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise ValueError("must be a SHA256 hex digest (64 hex digits)")
    return value


TransferURL = Annotated[Line, AfterValidator(_transfer_url)]


def _secret(value: str) -> str:
    """A credential's value: it goes into HTTP headers and signatures, so no
    control characters; never quoted in the error."""
    if _CONTROL.search(value):
        raise ValueError("a value contains control characters")
    if len(value) > MAX_PROSE:
        raise ValueError(f"a value is longer than {MAX_PROSE} characters")
    return value


def _endpoint_allowed(credentials: dict[str, str]) -> dict[str, str]:
    for key in ("endpoint_url",):
        if credentials.get(key):
            try:
                check_url(credentials[key], ("http", "https"))
            except ValueError as exc:
                raise ValueError(f"{key} {exc}") from None
    return credentials


Credentials = Annotated[
    dict[Plain, Annotated[str, AfterValidator(_secret)]],
    Field(max_length=MAX_ITEMS, repr=False),
    AfterValidator(_endpoint_allowed),
]
"""A request's credentials map (keys, secrets): kept out of repr and logs; an
S3 endpoint in it is held to the URL policy."""
DiskFormat = Annotated[Plain, lower_or("qcow2")]


def _keys_fit_the_url(credentials: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    url = info.data.get("destination_url") or info.data.get("source_url") or ""
    problem = urls.credential_problem(credentials, urlsplit(url).scheme) if url else ""
    if problem:
        raise ValueError(problem)
    return credentials


class ExportSpec(Request):
    vm_id: Required
    disk_id: Plain = ""
    snapshot_id: Plain = ""
    destination_url: TransferURL
    format: DiskFormat = "qcow2"
    compress: bool = False
    credentials: Credentials = Field(default_factory=dict, repr=False)

    _credentials = field_validator("credentials")(_keys_fit_the_url)


class ImportSpec(Request):
    source_url: TransferURL
    storage_hint: Plain = ""
    format: DiskFormat = "qcow2"
    target_name: Required
    verify_checksum: bool = False
    expected_checksum: Annotated[str, AfterValidator(_sha256)] = Field("", validate_default=True)
    credentials: Credentials = Field(default_factory=dict, repr=False)

    _credentials = field_validator("credentials")(_keys_fit_the_url)

    @field_validator("expected_checksum")
    @classmethod
    def _given_when_verified(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("verify_checksum") and not v:
            raise ValueError("is required when verify_checksum is set")
        return v


class SnapshotSpec(Request):
    vm_id: Required
    name: Annotated[Plain, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)] = _wire("name_hint", "")
    description: Prose = ""
    include_memory: bool = False


# -- requests whose backend method takes plain arguments -------------------


class NoArguments(Request):
    """Validate, ListVMs."""

    def args(self) -> tuple[Any, ...]:
        return ()


class VMRef(Request):
    """Describe, Delete: one VM."""

    id: Required

    def args(self) -> tuple[Any, ...]:
        return (self.id,)


_POWER_WORDS = {
    "POWER_OP_ON": "on",
    "POWER_OP_OFF": "off",
    "POWER_OP_REBOOT": "reboot",
    "POWER_OP_SHUTDOWN_GRACEFUL": "shutdown_graceful",
}
DEFAULT_GRACEFUL_TIMEOUT = 60


class PowerOp(str, Enum):
    ON = "on"
    OFF = "off"
    REBOOT = "reboot"
    SHUTDOWN_GRACEFUL = "shutdown_graceful"


def _power_op(value: Any) -> Any:
    if isinstance(value, PowerOp):
        return value
    if isinstance(value, str) and value in _POWER_WORDS:
        return _POWER_WORDS[value]
    raise ValueError(f"must be {', '.join(_POWER_WORDS)}")


class PowerRequest(Request):
    id: Required
    op: Annotated[PowerOp, BeforeValidator(_power_op)]
    graceful_timeout_seconds: Annotated[int, Field(ge=0)] = 0

    def args(self) -> tuple[Any, ...]:
        return (self.id, self.op, float(self.graceful_timeout_seconds or DEFAULT_GRACEFUL_TIMEOUT))


class ReconfigureRequest(Request):
    id: Required
    desired: Annotated[DesiredVM, json_text(DesiredVM, required=True)] = _wire("desired_json", ...)

    def args(self) -> tuple[Any, ...]:
        return (self.id, self.desired)


class SnapshotRef(Request):
    """SnapshotRevert, SnapshotDelete."""

    vm_id: Required
    snapshot_id: Required

    def args(self) -> tuple[Any, ...]:
        return (self.vm_id, self.snapshot_id)


class DiskRef(Request):
    """GetDiskInfo."""

    vm_id: Required
    disk_id: Plain = ""
    snapshot_id: Plain = ""

    def args(self) -> tuple[Any, ...]:
        return (self.vm_id, self.disk_id, self.snapshot_id)


class UpgradeRequest(Request):
    id: Required
    target_version: Annotated[int, Field(ge=0)] = 0

    def args(self) -> tuple[Any, ...]:
        return (self.id, self.target_version)


class TaskQuery(Request):
    """TaskStatus: the id of a task ("" means none: finished)."""

    task: Annotated[Plain, BeforeValidator(lambda v: v.get("id", "") if isinstance(v, dict) else v)] = ""

    def args(self) -> tuple[Any, ...]:
        return (self.task,)


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


class PreparedImage(_Model):
    """ImagePrepare's answer, known when the call returns (before any
    background work ends): how later requests name the image."""

    id: str
    """What a Create may give as image_json TemplateName."""
    path: str = ""
    """Where it lies on the hypervisor, when it is a file (image_json Path)."""


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
    "DEFAULT_GRACEFUL_TIMEOUT",
    "CloneSpec",
    "CreateSpec",
    "DesiredVM",
    "Disk",
    "DiskDetails",
    "DiskRef",
    "ExportResult",
    "ExportSpec",
    "ImagePrepareSpec",
    "ImportResult",
    "ImportSpec",
    "Nic",
    "NoArguments",
    "PowerOp",
    "PowerRequest",
    "PreparedImage",
    "ReconfigureRequest",
    "Request",
    "PowerState",
    "SnapshotRef",
    "SnapshotSpec",
    "TaskQuery",
    "TaskState",
    "UpgradeRequest",
    "ValidationReport",
    "VMInfo",
    "VMRef",
    "VMStatus",
]
