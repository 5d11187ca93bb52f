"""The JSON VirtRigaud's manager puts in the ``*_json`` fields, byte for byte.

The manager marshals Go structs with ``encoding/json``: the contract types
(internal/providers/contracts) have no JSON tags, so every field appears, in
declaration order, PascalCase, with Go's zero values (``""``, ``0``, ``null``
for nil pointers, maps and slices). ImagePrepare and Clone carry resource
specs instead (api/infra.virtrigaud.io/v1beta1), camelCase with ``omitempty``.
These builders reproduce both, so the replay suite sends what the manager
sends rather than what a hand-written client would.
"""

from __future__ import annotations

import json
from typing import Any

from provider_core.pb import provider_pb2 as pb


def go(value: Any) -> str:
    """``json.Marshal``: compact, keys in the order given."""
    return json.dumps(value, separators=(",", ":"))


def vm_class(
    cpu: int,
    memory_mib: int,
    *,
    firmware: str = "",
    extra_config: dict[str, str] | None = None,
    disk_size_gib: int | None = None,
) -> dict[str, Any]:
    """contracts.VMClass as buildCreateRequest fills it from a VMClass."""
    return {
        "CPU": cpu,
        "MemoryMiB": memory_mib,
        "Firmware": firmware,
        "DiskDefaults": None if disk_size_gib is None else {"Type": "", "SizeGiB": disk_size_gib},
        "GuestToolsPolicy": "",
        "ExtraConfig": extra_config,
        "PerformanceProfile": None,
        "SecurityProfile": None,
        "ResourceLimits": None,
    }


def vm_image(*, template: str = "", path: str = "", url: str = "", fmt: str = "template") -> dict[str, Any]:
    """contracts.VMImage: ``Format`` defaults to "template" and
    ``ChecksumType`` to "sha256" in the manager, whatever the source."""
    return {"TemplateName": template, "Path": path, "URL": url, "Format": fmt, "Checksum": "", "ChecksumType": "sha256"}


def network(network_name: str = "", bridge: str = "", name: str = "nic0") -> dict[str, Any]:
    """contracts.NetworkAttachment."""
    return {
        "Name": name,
        "Portgroup": "",
        "NetworkName": network_name,
        "Bridge": bridge,
        "VLAN": 0,
        "Model": "",
        "MacAddress": "",
        "IPPolicy": "",
        "StaticIP": "",
        "Prefix": 0,
        "Gateway": "",
        "DNS": "",
        "PCISlotNumber": None,
    }


def disk(size_gib: int, name: str = "", kind: str = "") -> dict[str, Any]:
    return {"SizeGiB": size_gib, "Type": kind, "Name": name}


def create_request(
    name: str,
    cls: dict[str, Any],
    image: dict[str, Any],
    networks: list[dict[str, Any]] | None = None,
    disks: list[dict[str, Any]] | None = None,
    tags: list[str] | None = None,
    user_data: str | None = None,
) -> pb.CreateRequest:
    """convertCreateRequest: class, image, networks and disks always
    marshalled (a nil slice is ``null``); placement only when set."""
    req = pb.CreateRequest(
        name=name,
        class_json=go(cls),
        image_json=go(image),
        networks_json=go(networks),
        disks_json=go(disks),
        tags=tags or [],
    )
    if user_data is not None:
        req.user_data = user_data.encode()
    return req


def desired_json(
    name: str,
    cls: dict[str, Any],
    image: dict[str, Any],
    networks: list[dict[str, Any]] | None = None,
    disks: list[dict[str, Any]] | None = None,
) -> str:
    """Reconfigure's desired_json: the whole contracts.CreateRequest."""
    return go(
        {
            "Name": name,
            "Class": cls,
            "Image": image,
            "Networks": networks,
            "Disks": disks,
            "UserData": None,
            "MetaData": None,
            "Placement": None,
            "Tags": None,
        }
    )


def image_resource(source: dict[str, Any], storage_pool: str = "") -> str:
    """ImagePrepare's image_json: the VMImage resource's spec (omitempty)."""
    spec: dict[str, Any] = {"source": source, "prepare": {"onMissing": "Import", "timeout": "30m0s"}}
    if storage_pool:
        spec["prepare"]["storage"] = {"libvirt": {"storagePool": storage_pool}}
    return go(spec)


def class_resource(cpu: int, memory: str, firmware: str = "") -> str:
    """Clone's class_json: the VMClass resource's spec (omitempty)."""
    spec: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if firmware:
        spec["firmware"] = firmware
    return go(spec)
