"""Typed values that pass between the core and a backend.

Backends take and return these, never protobuf messages. Requests
(``CreateSpec``, ``PowerRequest`` ...) are :class:`Request` models: the core
builds them from a request's fields, and their validators are the only
checks of a request (names, ids, URLs, formats, sizes, the JSON inside
``*_json`` fields): what fails is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
from .capabilities import STAGING_BACKENDS, TRANSFER_MODES
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
    SpecModel,
    Tags,
    VMClass,
    VMImage,
    check_url,
    json_text,
    lower_or,
    spec,
)


class PowerState(str, Enum):
    """A VM's power state as a backend reports it: the protocol's four words.

    Clients do not all accept the four: what goes on the wire is
    :meth:`word`, chosen by the server's ``power_states`` setting."""

    ON = "On"
    OFF = "Off"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"

    def word(self, detailed: bool) -> str:
        """The word a client gets: this state's own with ``detailed``,
        else ``On`` for On and ``Off`` for every other state (deployed
        VirtRigaud managers store the word in a field that accepts only
        On, Off and OffGraceful; the native state is in the raw JSON)."""
        if detailed or self is PowerState.ON:
            return self.value
        return PowerState.OFF.value


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
    scheme = value.partition(":")[0].lower()
    if scheme in urls.STAGING_SCHEMES:
        return urls.check_staging_url(value)
    if scheme not in urls.SCHEMES:
        raise ValueError(f"URL scheme must be one of {', '.join(urls.TRANSFER_SCHEMES)}")
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


# -- staging backends and transfer modes (ExportDisk, ImportDisk) ----------------

_MODE_WORDS = ("auto", *TRANSFER_MODES)
"""Transfer modes a request may name: ``auto`` is the best the endpoint offers."""
_UNSAFE = re.compile(r"[\x00-\x20\x7f?#&]")
_UID_MAX = 2**32 - 1
_lower = BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v)


def _clean_path(name: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if _UNSAFE.search(value):
            raise ValueError(f"{name} may not contain whitespace, control characters, '?', '#' or '&'")
        if ".." in value.split("/"):
            raise ValueError(f"{name} may not contain '..' segments")
        return value

    return check


class StorageOptions(SpecModel):
    """``storage_options_json``: the staging backend's options, as
    VirtRigaud's manager sends them (``internal/storage/migration/options.go``;
    keys in camelCase, PascalCase or snake_case). No secrets: those travel in
    ``credentials``."""

    backend: Annotated[str, _lower] = spec("Backend", "")
    bucket: str = spec("Bucket", "")
    endpoint: str = spec("Endpoint", "")
    region: str = spec("Region", "")
    prefix: Annotated[str, AfterValidator(_clean_path("prefix"))] = spec("Prefix", "")
    use_path_style: bool = spec("UsePathStyle", False)
    server: str = spec("Server", "")
    export: Annotated[str, AfterValidator(_clean_path("export"))] = spec("Export", "")
    path: Annotated[str, AfterValidator(_clean_path("path"))] = spec("Path", "")
    uid: Annotated[int | None, Field(ge=0, le=_UID_MAX)] = spec("UID", None)
    gid: Annotated[int | None, Field(ge=0, le=_UID_MAX)] = spec("GID", None)

    @field_validator("backend")
    @classmethod
    def _known(cls, v: str) -> str:
        if v and v not in STAGING_BACKENDS:
            raise ValueError(f"must be one of {', '.join(STAGING_BACKENDS)}")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_url(v, ("http", "https")) if v else v

    @field_validator("export")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError("must be an absolute path (/export/migrations)")
        return v.rstrip("/") or v

    @field_validator("server")
    @classmethod
    def _host(cls, v: str) -> str:
        if _UNSAFE.search(v) or "/" in v:
            raise ValueError("must be a host name or address")
        return v


def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        if value and value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (or empty)")
        return value

    return AfterValidator(check)


BackendType = Annotated[Plain, _lower, _one_of(STAGING_BACKENDS)]
TransferMode = Annotated[Plain, _lower, _one_of(_MODE_WORDS)]


def _request_url(info: ValidationInfo) -> tuple[str, str]:
    """(field name, URL) of a transfer request, or ("", "") when the URL was invalid."""
    for name in ("destination_url", "source_url"):
        if name in info.data:
            return name, info.data[name]
    return "", ""


def _backend_fits_the_url(value: str, info: ValidationInfo) -> str:
    """An empty backend_type is the URL's scheme when that names a staging
    backend (``pvc://`` is upstream's legacy path), else empty (http, https);
    a given one must agree with the scheme."""
    name, url = _request_url(info)
    if not url:
        return value
    scheme = urlsplit(url).scheme
    inferred = scheme if scheme in STAGING_BACKENDS else ""
    if value and value != inferred:
        raise ValueError(f"{value!r} contradicts the {scheme}:// URL of {name}")
    return inferred


def _options_always(data: Any) -> Any:
    """No options are options too: they are checked against the backend
    (nfs needs its export), under the field's protocol name."""
    if not isinstance(data, dict) or "storage_options" in data:
        return data
    given = data.get("storage_options_json", "")
    if isinstance(given, str) and given.strip() in ("", "null"):
        return {**data, "storage_options_json": StorageOptions()}
    return data


def _options_fit(options: StorageOptions, info: ValidationInfo) -> StorageOptions:
    """The options agree with the backend and the URL: what the manager sends
    for nfs (server, export) and s3 (bucket) names the URL's parts too."""
    _, url = _request_url(info)
    backend = info.data.get("backend_type")
    if not url or backend is None:
        return options
    parts = urlsplit(url)
    if options.backend and options.backend != backend:
        raise ValueError(f"backend {options.backend!r} contradicts backend_type {backend or '(none: an http URL)'!r}")
    if not backend:
        if options != StorageOptions():
            raise ValueError("storage options apply to pvc, nfs and s3 URLs only")
        return options
    if backend == "s3" and options.bucket and options.bucket != parts.hostname:
        raise ValueError(f"bucket {options.bucket!r} is not the bucket of the URL ({parts.hostname!r})")
    prefix = options.prefix.strip("/")
    if backend == "s3" and prefix and not parts.path.startswith(f"/{prefix}/"):
        raise ValueError(f"prefix {options.prefix!r} is not where the URL's key starts")
    if backend == "nfs":
        if not options.export:
            raise ValueError("export is required for nfs (the exported path the URL starts with)")
        if options.server and options.server.lower() != (parts.hostname or ""):
            raise ValueError(f"server {options.server!r} is not the server of the URL ({parts.hostname!r})")
        if not parts.path.startswith(options.export.rstrip("/") + "/"):
            raise ValueError(f"export {options.export!r} is not where the URL's path starts")
        below = options.path.strip("/")
        if below and not parts.path.startswith(f"{options.export.rstrip('/')}/{below}/"):
            raise ValueError(f"path {options.path!r} is not where the URL's path continues after the export")
    return options


class ExportSpec(Request):
    vm_id: Required
    disk_id: Plain = ""
    snapshot_id: Plain = ""
    destination_url: TransferURL
    format: DiskFormat = "qcow2"
    compress: bool = False
    credentials: Credentials = Field(default_factory=dict, repr=False)
    backend_type: BackendType = Field("", validate_default=True)
    """pvc, nfs, s3, or "" (an http or https URL); inferred from the URL when not given."""
    transfer_mode: TransferMode = ""
    """relay or direct once admitted (the core resolves "" and auto)."""
    storage_options: Annotated[StorageOptions, json_text(StorageOptions)] = _wire("storage_options_json", StorageOptions())

    _credentials = field_validator("credentials")(_keys_fit_the_url)
    _backend = field_validator("backend_type")(_backend_fits_the_url)
    _options = field_validator("storage_options")(_options_fit)
    _options_given = model_validator(mode="before")(_options_always)


class ImportSpec(Request):
    source_url: TransferURL
    storage_hint: Plain = ""
    format: DiskFormat = "qcow2"
    target_name: Required
    verify_checksum: bool = False
    expected_checksum: Annotated[str, AfterValidator(_sha256)] = Field("", validate_default=True)
    credentials: Credentials = Field(default_factory=dict, repr=False)
    backend_type: BackendType = Field("", validate_default=True)
    """pvc, nfs, s3, or "" (an http or https URL); inferred from the URL when not given."""
    transfer_mode: TransferMode = ""
    """relay or direct once admitted (the core resolves "" and auto)."""
    storage_options: Annotated[StorageOptions, json_text(StorageOptions)] = _wire("storage_options_json", StorageOptions())

    _credentials = field_validator("credentials")(_keys_fit_the_url)
    _backend = field_validator("backend_type")(_backend_fits_the_url)
    _options = field_validator("storage_options")(_options_fit)
    _options_given = model_validator(mode="before")(_options_always)

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
    "StorageOptions",
    "TaskQuery",
    "TaskState",
    "UpgradeRequest",
    "ValidationReport",
    "VMInfo",
    "VMRef",
    "VMStatus",
]
