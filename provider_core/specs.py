"""Pydantic models of the JSON carried in the ``*_json`` request fields.

Every key is accepted in PascalCase (Go clients), camelCase and snake_case;
unknown keys, wrong types and impossible values are rejected. ``parse()``
turns any problem into :class:`~provider_core.errors.InvalidArgument` whose
message and violations name the JSON path as the client spelled it.
"""

from __future__ import annotations

import ipaddress
import re
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUseDefault

from . import urls
from .errors import InvalidArgument

INT32_MAX = 2**31 - 1
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
PositiveInt32 = Annotated[int, Field(ge=1, le=INT32_MAX)]
NonNegInt32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
DISK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _camel(pascal: str) -> str:
    """``MemoryMiB`` -> ``memoryMiB``; ``CPU`` -> ``cpu``; ``DNS`` -> ``dns``;
    ``VLAN`` -> ``vlan``; ``IPPolicy`` -> ``ipPolicy``."""
    m = re.match(r"^([A-Z]+)(?=[A-Z][a-z]|$)", pascal)
    if m:
        head = m.group(1)
        return head.lower() + pascal[len(head) :]
    return pascal[:1].lower() + pascal[1:]


def _aliases(pascal: str, snake: str) -> AliasChoices:
    camel = _camel(pascal)
    choices = dict.fromkeys([pascal, camel, snake, pascal.lower(), camel.replace("MiB", "Mib").replace("GiB", "Gib")])
    return AliasChoices(*choices)


def _snake(pascal: str) -> str:
    """``MemoryMiB`` -> ``memory_mib``; ``CPUHotAddEnabled`` -> ``cpu_hot_add_enabled``."""
    text = pascal.replace("MiB", "Mib").replace("GiB", "Gib")
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+", text)
    return "_".join(w.lower() for w in words)


def spec(pascal: str, default: Any = None, **kw: Any) -> Any:
    """A spec field known as ``pascal`` on the wire, accepted in PascalCase,
    camelCase and snake_case."""
    return Field(default, validation_alias=_aliases(pascal, _snake(pascal)), **kw)


#: Limits on what a request may carry (docs/protocol.md, "Limits", says why these).
MAX_NAME = 253
"""A name or id: a VM's name, an id, a snapshot or image name, a hint (bytes of UTF-8)."""
MAX_TEXT = 4096
"""Any other single-line string: a URL, a path, a value inside a *_json document."""
MAX_PROSE = 262_144
"""Multi-line text: cloud-init user data and metadata, a description."""
MAX_JSON = 262_144
"""One *_json field's text."""
MAX_TAGS = 16
MAX_TAG = 63
MAX_ITEMS = 64
"""Entries of a list or map inside a *_json document, credentials of a request."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_EXCEPT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _plain(value: str, limit: int = MAX_NAME) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains control characters")
    if len(value.encode()) > limit:
        raise ValueError(f"is longer than {limit} bytes")
    return value


def _required(value: str) -> str:
    if not value.strip():
        raise ValueError("is required")
    return _plain(value)


def _prose(value: str) -> str:
    if _CONTROL_EXCEPT_LINES.search(value):
        raise ValueError("contains control characters other than tab and newline")
    if len(value.encode()) > MAX_PROSE:
        raise ValueError(f"is longer than {MAX_PROSE} bytes")
    return value


#: Fields of *_json documents whose text may span lines.
_MULTILINE = frozenset({"user_data", "cloud_init_data", "meta_data_yaml", "inline"})


def _checked(value: Any, multiline: bool) -> Any:
    """``value`` when every string in it (list items, map keys and values
    too) is within the limits; ValueError naming the first that is not."""
    if isinstance(value, str):
        return _prose(value) if multiline else _plain(value, MAX_TEXT)
    if isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"has more than {MAX_ITEMS} entries")
        for i, item in enumerate(value):
            try:
                _checked(item, multiline)
            except ValueError as exc:
                raise ValueError(f"entry {i} {exc}") from None
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"has more than {MAX_ITEMS} entries")
        for key, item in value.items():
            try:
                _checked(key, multiline=False)
                _checked(item, multiline)
            except ValueError as exc:
                raise ValueError(f"entry {str(key)[:40]!r} {exc}") from None
    return value


def _line(value: str) -> str:
    if not value.strip():
        raise ValueError("is required")
    return _plain(value, MAX_TEXT)


def _tag(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return _plain(value, MAX_TAG)


Required = Annotated[str, AfterValidator(_required)]
"""A request string that must be given: not blank, no control characters."""
Plain = Annotated[str, AfterValidator(_plain)]
"""An optional request string (an id, a name, a hint): no control characters."""
Prose = Annotated[str, AfterValidator(_prose)]
"""Free text (a description): lines and tabs allowed, other control characters not."""
Line = Annotated[str, AfterValidator(_line)]
"""A required single-line string longer than a name may be (a URL)."""
Tags = Annotated[list[Annotated[str, AfterValidator(_tag)]], Field(max_length=MAX_TAGS)]
"""A VM's tags: at most MAX_TAGS, each 1..MAX_TAG bytes."""


class SpecModel(BaseModel):
    """Base of every payload model: strict types, unknown keys refused, no
    control characters in any string (tab and newline only in multi-line
    text), every string and list within the limits above."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _within_limits(cls, value: Any, info: ValidationInfo) -> Any:
        return _checked(value, multiline=info.field_name in _MULTILINE)


def _not_supported(v: Any) -> Any:
    if v:
        raise ValueError("is not supported by this provider")
    return v


Unsupported = Annotated[Any, AfterValidator(_not_supported)]
"""A key of a Windows/vSphere-only customization: refused unless empty."""


def _null_is_empty(value: Any) -> Any:
    """Go clients send ``null`` for a list they have nothing in."""
    return [] if value is None else value


def nested(model: type[SpecModel], data: Any) -> SpecModel:
    """``data`` as ``model`` inside a validator: a failure becomes one
    ValueError naming the path within ``data``."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = _path(tuple(err["loc"]))
        problem = "is not a key of this object" if err["type"] == "extra_forbidden" else _problem(err)
        raise ValueError(f"{where}: {problem}" if where else problem) from None


def _upper_words(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _lower_words(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class Firmware(str, Enum):
    BIOS = "BIOS"
    UEFI = "UEFI"

    @classmethod
    def _missing_(cls, value: object) -> Firmware | None:
        return cls.UEFI if isinstance(value, str) and value.upper() == "EFI" else None


def _blank_is_none(value: Any) -> Any:
    """Go clients send a zero value for what is not given: ``""`` means absent."""
    return None if isinstance(value, str) and not value.strip() else value


class DiskDefaults(SpecModel):
    type: str = spec("Type", "")
    size_gib: PositiveInt32 | None = spec("SizeGiB")
    size: str | None = spec("Size", description="Kubernetes quantity (the VMClass resource's form), e.g. 40Gi")
    iops: NonNegInt32 | None = spec("IOPS", description="accepted, not applied")
    storage_class: str = spec("StorageClass", "", description="a Kubernetes storage class: accepted, not applied")

    @model_validator(mode="after")
    def _size(self) -> DiskDefaults:
        if self.size is not None:
            if self.size_gib is not None:
                raise ValueError("give SizeGiB or size, not both")
            gib = quantity_to_gib_up(self.size)
            if not 1 <= gib <= INT32_MAX:
                raise ValueError(f"size {self.size!r} is outside 1Gi..{INT32_MAX}Gi")
            object.__setattr__(self, "size_gib", gib)
            object.__setattr__(self, "size", None)
        return self


class PerformanceProfile(SpecModel):
    latency_sensitivity: str = spec("LatencySensitivity", "")
    cpu_hot_add_enabled: bool = spec("CPUHotAddEnabled", False)
    memory_hot_add_enabled: bool = spec("MemoryHotAddEnabled", False)
    virtualization_based_security: bool = spec("VirtualizationBasedSecurity", False)
    nested_virtualization: bool = spec("NestedVirtualization", False)
    hyper_threading_policy: str = spec("HyperThreadingPolicy", "")


class EncryptionPolicy(SpecModel):
    """The VMClass resource's form of the encryption fields."""

    enabled: bool = spec("Enabled", False)
    key_provider: str = spec("KeyProvider", "")
    require_encryption: bool = spec("RequireEncryption", False)


class SecurityProfile(SpecModel):
    secure_boot: bool = spec("SecureBoot", False)
    tpm_enabled: bool = spec("TPMEnabled", False)
    tpm_version: str = spec("TPMVersion", "")
    vtd_enabled: bool = spec("VTDEnabled", False)
    encryption_enabled: bool = spec("EncryptionEnabled", False)
    key_provider: str = spec("KeyProvider", "")
    require_encryption: bool = spec("RequireEncryption", False)
    encryption_policy: EncryptionPolicy | None = spec("EncryptionPolicy")

    @model_validator(mode="after")
    def _policy(self) -> SecurityProfile:
        policy = self.encryption_policy
        if policy is not None:
            object.__setattr__(self, "encryption_enabled", self.encryption_enabled or policy.enabled)
            object.__setattr__(self, "require_encryption", self.require_encryption or policy.require_encryption)
            object.__setattr__(self, "key_provider", self.key_provider or policy.key_provider)
            object.__setattr__(self, "encryption_policy", None)
        return self


class ResourceLimits(SpecModel):
    cpu_limit: NonNegInt32 | None = spec("CPULimit")
    cpu_reservation: NonNegInt32 | None = spec("CPUReservation")
    memory_limit_mib: NonNegInt32 | None = spec("MemoryLimitMiB")
    memory_reservation_mib: NonNegInt32 | None = spec("MemoryReservationMiB")
    cpu_shares: NonNegInt32 | None = spec("CPUShares")
    memory_limit: str | None = spec("MemoryLimit", description="Kubernetes quantity (the VMClass resource's form)")
    memory_reservation: str | None = spec("MemoryReservation", description="Kubernetes quantity")

    @model_validator(mode="after")
    def _quantities(self) -> ResourceLimits:
        for quantity, field in (("memory_limit", "memory_limit_mib"), ("memory_reservation", "memory_reservation_mib")):
            value = getattr(self, quantity)
            if value is None:
                continue
            if getattr(self, field) is not None:
                raise ValueError(f"give {quantity} or its MiB form, not both")
            object.__setattr__(self, field, min(quantity_to_mib(value), INT32_MAX))
            object.__setattr__(self, quantity, None)
        return self


_QUANTITY_RE = re.compile(r"^\s*([0-9]+)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$")  # ASCII digits only
_QUANTITY_FACTOR = {
    None: 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def quantity_to_bytes(value: str | int) -> int:
    """A Kubernetes quantity (``4Gi``, ``40G``, ``512Mi``, bytes) in bytes."""
    if isinstance(value, int):
        return value
    m = _QUANTITY_RE.match(value)
    if not m:
        raise ValueError(f"not a memory quantity: {value!r} (use e.g. 512Mi or 4Gi)")
    return int(m.group(1)) * _QUANTITY_FACTOR[m.group(2)]


def quantity_to_mib(value: str | int) -> int:
    """A Kubernetes memory quantity in MiB, rounded down."""
    return quantity_to_bytes(value) // 2**20


def quantity_to_gib_up(value: str | int) -> int:
    """A Kubernetes disk quantity in GiB, rounded up: a disk is at least
    what was asked (``40G`` is 38 GiB, ``1536Mi`` is 2)."""
    return -(-quantity_to_bytes(value) // 2**30)


class VMClass(SpecModel):
    """class_json: CPU, memory and firmware of a VM."""

    cpu: PositiveInt32 | None = spec("CPU")
    memory_mib: PositiveInt32 | None = spec("MemoryMiB")
    memory: str | None = spec("Memory", description="Kubernetes quantity, e.g. 4Gi")
    firmware: Annotated[Firmware | None, BeforeValidator(lambda v: _upper_words(_blank_is_none(v)))] = spec("Firmware")
    disk_defaults: DiskDefaults | None = spec("DiskDefaults")
    guest_tools_policy: Annotated[str, BeforeValidator(_lower_words)] = spec("GuestToolsPolicy", "")
    extra_config: dict[str, str] | None = spec("ExtraConfig")
    performance_profile: PerformanceProfile | None = spec("PerformanceProfile")
    security_profile: SecurityProfile | None = spec("SecurityProfile")
    resource_limits: ResourceLimits | None = spec("ResourceLimits")

    @field_validator("guest_tools_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v not in ("", "install", "skip", "upgrade", "uninstall"):
            raise ValueError("must be one of install, skip, upgrade, uninstall")
        return v

    @field_validator("memory")
    @classmethod
    def _quantity(cls, v: str | None) -> str | None:
        if v is not None and not 1 <= quantity_to_mib(v) <= INT32_MAX:
            raise ValueError(f"{v!r} is outside 1Mi..{INT32_MAX}Mi")
        return v

    @model_validator(mode="after")
    def _memory(self) -> VMClass:
        if self.memory is not None:
            if self.memory_mib is not None:
                raise ValueError("give MemoryMiB or memory, not both")
            object.__setattr__(self, "memory_mib", quantity_to_mib(self.memory))
            object.__setattr__(self, "memory", None)
        return self


class ChecksumType(str, Enum):
    SHA256 = "sha256"
    SHA512 = "sha512"
    MD5 = "md5"


_DIGEST_LEN = {ChecksumType.SHA256: 64, ChecksumType.SHA512: 128, ChecksumType.MD5: 32}


def check_url(url: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """Accept only the given schemes, a host, and an address the URL policy
    allows (:mod:`provider_core.urls`); never echo credentials."""
    return urls.check_url(url, schemes)


class VMImage(SpecModel):
    """image_json: where the VM's root disk comes from."""

    template_name: str = spec("TemplateName", "")
    path: str = spec("Path", "")
    url: str = spec("URL", "")
    format: Annotated[str, BeforeValidator(_lower_words)] = spec("Format", "")
    checksum: Annotated[str, BeforeValidator(_lower_words)] = spec("Checksum", "")
    checksum_type: Annotated[ChecksumType, BeforeValidator(lambda v: _lower_words(v) or ChecksumType.SHA256)] = spec(
        "ChecksumType", ChecksumType.SHA256
    )
    storage: str = spec("Storage", "", description="where to put the image (the VMImage resource's storagePool)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_url(v) if v else v

    @model_validator(mode="before")
    @classmethod
    def _resource_form(cls, data: Any) -> Any:
        """The VMImage resource's spec (``{"source": {...}, "prepare": {...}}``,
        what VirtRigaud sends to ImagePrepare) in the terms above."""
        if isinstance(data, dict) and "source" in data:
            return image_from_resource(data)
        return data

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v == "template":  # Go clients' word for "a template, whatever its format"
            return ""
        if v not in ("", "qcow2", "raw", "vmdk", "iso"):
            raise ValueError("must be one of qcow2, raw, vmdk, iso")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> VMImage:
        given = [k for k, v in (("TemplateName", self.template_name), ("Path", self.path), ("URL", self.url)) if v]
        if len(given) > 1:
            raise ValueError(f"give at most one of TemplateName, Path, URL (got {', '.join(given)})")
        if self.checksum:
            want = _DIGEST_LEN[self.checksum_type]
            if len(self.checksum) != want or not re.fullmatch(r"[0-9a-f]+", self.checksum):
                raise ValueError(f"Checksum must be {want} hex digits for {self.checksum_type.value}")
        return self

    @property
    def source(self) -> str:
        """``template``, ``path``, ``url`` or ``blank``."""
        if self.template_name:
            return "template"
        if self.path:
            return "path"
        return "url" if self.url else "blank"


class LibvirtImageSource(SpecModel):
    path: str = spec("Path", "")
    url: str = spec("URL", "")
    format: str = spec("Format", "")
    checksum: str = spec("Checksum", "")
    checksum_type: str = spec("ChecksumType", "")
    storage_pool: str = spec("StoragePool", "")


class HTTPImageSource(SpecModel):
    url: str = spec("URL", "")
    checksum: str = spec("Checksum", "")
    checksum_type: str = spec("ChecksumType", "")
    headers: Unsupported = spec("Headers", None)
    authentication: Unsupported = spec("Authentication", None)
    timeout: str | None = spec("Timeout", description="accepted, not applied")


class ProxmoxImageSource(SpecModel):
    template_id: NonNegInt32 | None = spec("TemplateID")
    template_name: str = spec("TemplateName", "")
    storage: str = spec("Storage", "")
    node: str = spec("Node", "", description="accepted, not applied: the backend finds the template's node")
    format: str = spec("Format", "")
    full_clone: bool | None = spec("FullClone", description="accepted, not applied")


class VSphereImageSource(SpecModel):
    template_name: str = spec("TemplateName", "")
    checksum: str = spec("Checksum", "")
    checksum_type: str = spec("ChecksumType", "")
    content_library: Unsupported = spec("ContentLibrary", None)
    ova_url: Unsupported = Field(None, validation_alias=AliasChoices("ovaURL", "OVAURL", "ova_url", "ovaUrl"))
    provider_ref: dict[str, str] | None = spec("ProviderRef")


class ImageSource(SpecModel):
    vsphere: VSphereImageSource | None = Field(None, validation_alias=AliasChoices("vsphere", "vSphere", "VSphere"))
    libvirt: LibvirtImageSource | None = spec("Libvirt")
    http: HTTPImageSource | None = Field(None, validation_alias=AliasChoices("http", "HTTP"))
    proxmox: ProxmoxImageSource | None = spec("Proxmox")
    registry: Unsupported = spec("Registry", None)
    data_volume: Unsupported = spec("DataVolume", None)


class LibvirtStorageOptions(SpecModel):
    storage_pool: str = spec("StoragePool", "")
    allocation_policy: str = spec("AllocationPolicy", "")
    preallocation: str = spec("Preallocation", "")


class StoragePrepareOptions(SpecModel):
    vsphere: dict[str, Any] | None = Field(None, validation_alias=AliasChoices("vsphere", "vSphere", "VSphere"))
    libvirt: LibvirtStorageOptions | None = spec("Libvirt")
    preferred_format: str = spec("PreferredFormat", "")
    compression: bool = spec("Compression", False)


class PrepareOptions(SpecModel):
    on_missing: str = spec("OnMissing", "")
    validate_checksum: bool = spec("ValidateChecksum", False)
    timeout: str | None = spec("Timeout")
    retries: NonNegInt32 | None = spec("Retries")
    force: bool = spec("Force", False)
    storage: StoragePrepareOptions | None = spec("Storage")
    optimization: dict[str, Any] | None = spec("Optimization")


class ImageResource(SpecModel):
    """The VMImage resource's spec, as VirtRigaud sends it to ImagePrepare.
    Only its source and storage pool matter here; the rest (preparation
    policy, metadata, distribution) is the controller's and accepted as is."""

    source: ImageSource = spec("Source", ...)
    prepare: PrepareOptions | None = spec("Prepare")
    metadata: dict[str, Any] | None = spec("Metadata")
    distribution: dict[str, Any] | None = spec("Distribution")


def image_from_resource(data: Any) -> dict[str, Any]:
    """A VMImage resource spec as the image_json of a Create (PascalCase keys)."""
    res = nested(ImageResource, data)
    assert isinstance(res, ImageResource)
    src = res.source
    given = [name for name in ("vsphere", "libvirt", "http", "proxmox") if getattr(src, name) is not None]
    if len(given) != 1:
        raise ValueError(f"source: give exactly one of vsphere, libvirt, http, proxmox (got {', '.join(given) or 'none'})")
    image: dict[str, Any]
    if src.libvirt is not None:
        lv = src.libvirt
        image = {"Path": lv.path, "URL": lv.url, "Format": lv.format, "Checksum": lv.checksum}
        image |= {"ChecksumType": lv.checksum_type, "Storage": lv.storage_pool}
    elif src.http is not None:
        image = {"URL": src.http.url, "Checksum": src.http.checksum, "ChecksumType": src.http.checksum_type}
    elif src.proxmox is not None:
        px = src.proxmox
        template = str(px.template_id) if px.template_id is not None else px.template_name
        image = {"TemplateName": template, "Format": px.format, "Storage": px.storage}
    else:
        assert src.vsphere is not None
        vs = src.vsphere
        image = {"TemplateName": vs.template_name, "Checksum": vs.checksum, "ChecksumType": vs.checksum_type}
    storage = res.prepare.storage if res.prepare else None
    if not image.get("Storage") and storage is not None and storage.libvirt is not None:
        image["Storage"] = storage.libvirt.storage_pool
    return image


class IPPolicy(str, Enum):
    DHCP = "dhcp"
    STATIC = "static"


class NetworkAttachment(SpecModel):
    """One entry of networks_json."""

    name: str = spec("Name", "")
    portgroup: str = spec("Portgroup", "")
    network_name: str = spec("NetworkName", "")
    bridge: str = spec("Bridge", "")
    vlan: Annotated[int, Field(ge=0, le=4094)] = spec("VLAN", 0)
    model: Annotated[str, BeforeValidator(_lower_words)] = spec("Model", "")
    mac_address: Annotated[str, BeforeValidator(_lower_words)] = spec("MacAddress", "")
    ip_policy: Annotated[IPPolicy | None, BeforeValidator(lambda v: _lower_words(v) or None)] = spec("IPPolicy")
    static_ip: str = spec("StaticIP", "")
    prefix: Annotated[int, Field(ge=0, le=128)] = spec("Prefix", 0)
    gateway: str = spec("Gateway", "")
    dns: str = spec("DNS", "")
    pci_slot_number: NonNegInt32 | None = spec("PCISlotNumber", description="vSphere's PCI slot: accepted, not applied")

    @field_validator("mac_address")
    @classmethod
    def _mac(cls, v: str) -> str:
        if v and not MAC_RE.match(v):
            raise ValueError("must look like aa:bb:cc:dd:ee:ff")
        if v and int(v[:2], 16) & 1:
            raise ValueError("is a multicast address; a NIC needs a unicast MAC")
        return v

    @field_validator("static_ip", "gateway")
    @classmethod
    def _ip(cls, v: str) -> str:
        if v:
            ipaddress.ip_address(v)
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: str) -> str:
        for server in self_split(v):
            ipaddress.ip_address(server)
        return v

    @model_validator(mode="after")
    def _static(self) -> NetworkAttachment:
        if self.ip_policy is IPPolicy.STATIC and not self.static_ip:
            raise ValueError("IPPolicy static needs StaticIP")
        if self.static_ip:
            limit = 32 if ipaddress.ip_address(self.static_ip).version == 4 else 128
            if not 1 <= self.prefix <= limit:
                raise ValueError(f"Prefix must be 1..{limit} for StaticIP {self.static_ip}")
        return self

    @property
    def dns_servers(self) -> list[str]:
        return self_split(self.dns)


def self_split(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


class DiskSpec(SpecModel):
    """One entry of disks_json."""

    size_gib: PositiveInt32 = spec("SizeGiB", ...)
    type: Annotated[str, BeforeValidator(_lower_words)] = spec("Type", "")
    name: str = spec("Name", "")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v and not DISK_NAME_RE.match(v):
            raise ValueError("must be 1-63 characters of letters, digits, '.', '_' or '-'")
        return v


def _unique_disk_names(disks: list[DiskSpec]) -> list[DiskSpec]:
    names = [d.name for d in disks if d.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"disk names must be unique within the VM (repeated: {', '.join(dup)})")
    return disks


DiskList = Annotated[list[DiskSpec], Field(max_length=64), AfterValidator(_unique_disk_names)]
NetworkList = Annotated[list[NetworkAttachment], Field(max_length=32)]


class Placement(SpecModel):
    """placement_json."""

    datastore: str = spec("Datastore", "")
    storage_pod: str = spec("StoragePod", "")
    cluster: str = spec("Cluster", "")
    folder: str = spec("Folder", "")
    host: str = spec("Host", "")
    name: str = spec("Name", "", description="a VMPlacementPolicy reference (Clone, from VirtRigaud): accepted, not resolved")


class CustomNetwork(SpecModel):
    name: str = spec("Name", "")
    ip_address: str = spec("IPAddress", "")
    subnet_mask: str = spec("SubnetMask", "")
    gateway: str = spec("Gateway", "")
    dns: list[str] = spec("DNS", [])
    dhcp: bool = spec("DHCP", False)
    mac_address: Annotated[str, BeforeValidator(_lower_words)] = spec("MACAddress", "")

    @field_validator("mac_address")
    @classmethod
    def _mac(cls, v: str) -> str:
        if v:
            raise ValueError("is not supported: a clone's NICs get new MAC addresses")
        return v

    @model_validator(mode="after")
    def _dhcp(self) -> CustomNetwork:
        if self.dhcp and self.ip_address:
            raise ValueError("give dhcp or ipAddress, not both")
        return self

    @field_validator("ip_address", "gateway")
    @classmethod
    def _ip(cls, v: str) -> str:
        if v:
            ipaddress.ip_address(v)
        return v

    @field_validator("subnet_mask")
    @classmethod
    def _mask(cls, v: str) -> str:
        if v:
            ipaddress.IPv4Network(f"0.0.0.0/{v}")
        return v

    @property
    def prefix(self) -> int:
        if not self.subnet_mask:
            return 24
        return ipaddress.IPv4Network(f"0.0.0.0/{self.subnet_mask}").prefixlen


class InlineCloudInit(SpecModel):
    inline: str = spec("Inline", "")
    secret_ref: dict[str, str] | None = spec("SecretRef")

    @field_validator("secret_ref")
    @classmethod
    def _secret(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v:
            raise ValueError("names a Kubernetes Secret the provider cannot read: give the text inline")
        return v


class UserDataResource(SpecModel):
    """The VirtualMachine resource's userData: ``{"cloudInit": {"inline": ...}}``."""

    cloud_init: InlineCloudInit | None = spec("CloudInit")
    ignition: dict[str, Any] | None = spec("Ignition")

    @field_validator("ignition")
    @classmethod
    def _ignition(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v:
            raise ValueError("is not supported: give cloud-init")
        return v


def _user_data_text(value: Any) -> Any:
    """customize_json's userData: text, or the resource form ``{"cloudInit": {"inline": text}}``."""
    if isinstance(value, dict):
        form = nested(UserDataResource, value)
        assert isinstance(form, UserDataResource)
        return form.cloud_init.inline if form.cloud_init else ""
    return "" if value is None else value


class Customization(SpecModel):
    """customize_json (Clone)."""

    hostname: str = spec("Hostname", "")
    domain: str = spec("Domain", "")
    time_zone: str = spec("TimeZone", "")
    networks: Annotated[list[CustomNetwork], BeforeValidator(_null_is_empty)] = spec("Networks", [])
    user_data: Annotated[str, BeforeValidator(_user_data_text)] = spec("UserData", "")
    tags: Annotated[Tags, BeforeValidator(_null_is_empty)] = spec("Tags", [])
    sysprep: Unsupported = spec("Sysprep", None)
    guest_commands: Unsupported = spec("GuestCommands", None)
    certificates: Unsupported = spec("Certificates", None)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", v):
            raise ValueError("must be a DNS label (letters, digits, '-', at most 63)")
        return v


class UserDataSpec(SpecModel):
    cloud_init_data: str = spec("CloudInitData", "")
    type: str = spec("Type", "")


class MetaDataSpec(SpecModel):
    meta_data_yaml: str = spec("MetaDataYAML", "")


class DesiredVM(SpecModel):
    """desired_json (Reconfigure): the whole create-time description."""

    name: str = spec("Name", "")
    vm_class: VMClass | None = Field(None, validation_alias=AliasChoices("Class", "class", "vm_class", "vmClass"))
    image: VMImage | None = spec("Image")
    networks: NetworkList | None = spec("Networks")
    disks: DiskList | None = spec("Disks")
    user_data: UserDataSpec | None = spec("UserData")
    meta_data: MetaDataSpec | None = spec("MetaData")
    placement: Placement | None = spec("Placement")
    tags: Tags | None = spec("Tags")


T = TypeVar("T")


def json_text(model: Any, *, required: bool = False) -> BeforeValidator:
    """Parse a ``*_json`` request field into ``model`` (a SpecModel class or
    a type such as ``list[DiskSpec]``), strictly, before the field is
    validated. An empty text or ``null`` means "not given": the field's
    default, or "is required" when ``required``."""
    adapter: TypeAdapter[Any] = TypeAdapter(model)

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value  # built by name in Python: already the model
        if len(value) > MAX_JSON:
            raise ValueError(f"is longer than {MAX_JSON} bytes")
        if _absent(value):
            if required:
                raise ValueError("is required")
            raise PydanticUseDefault
        return adapter.validate_json(value, strict=True)

    return BeforeValidator(parse)


def _absent(text: str) -> bool:
    return not text.strip() or text.strip() == "null"


def parse(field: str, text: str, model: Any, default: Any = None) -> Any:
    """The JSON ``text`` of field ``field`` as ``model``, like a ``*_json``
    request field (:func:`json_text`): ``default`` when absent, else
    InvalidArgument naming ``field`` and the path inside it."""
    if _absent(text):
        return default
    try:
        return TypeAdapter(model).validate_json(text, strict=True)
    except ValidationError as exc:
        raise invalid(exc, field) from None


def lower_or(default: str) -> BeforeValidator:
    """A word given in any case, ``default`` when empty."""
    return BeforeValidator(lambda v: (v.strip().lower() or default) if isinstance(v, str) else v)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


#: Problems worded for JSON, whatever Python type the model names.
_JSON_WORDS = {"model_type": "should be an object", "dict_type": "should be an object", "list_type": "should be a valid array"}


def _problem(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] in _JSON_WORDS:
        return "Input " + _JSON_WORDS[err["type"]]
    if err["type"] == "json_invalid":
        return "malformed JSON: " + str(err.get("ctx", {}).get("error", msg))
    return msg.removeprefix("Value error, ")


def invalid(exc: ValidationError, within: str = "") -> InvalidArgument:
    """The InvalidArgument of a failed validation: its message names the
    first field (with the JSON path inside a ``*_json`` field, as the client
    spelled it), its violations name them all. ``within`` names the field
    that held what was validated, if any."""
    prefix: tuple[int | str, ...] = (within,) if within else ()
    violations = [(_path(prefix + tuple(e["loc"])), _problem(e)) for e in exc.errors(include_url=False)]
    first_path, first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(f"{first_path}: {first}{more}" if first_path else f"{first}{more}", violations)
