"""What a backend gives the kit to work with: ``[conformance.NAME]`` in the config.

The table sits beside ``[backends.NAME]`` in the same TOML file (a backend's
own settings refuse unknown keys, so the kit's cannot live inside it)::

    [backends.mine]
    url = "https://hypervisor.example:8443"

    [conformance.mine]
    image_json = '{"TemplateName": "debian-12"}'
    skip = { "hardware_upgrade.upgrade" = "the test host offers one machine version" }

Every key is optional; docs/conformance.md describes each one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import specs
from ..errors import ConfigError, InvalidArgument


class Fixtures(BaseModel):
    """The validated ``[conformance.NAME]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_json: str = Field("", description="image_json of every VM the kit creates ('' = blank disks)")
    class_json: str = Field('{"CPU": 1, "MemoryMiB": 256}', description="class_json of every VM the kit creates")
    bigger_class_json: str = Field('{"CPU": 2, "MemoryMiB": 512}', description="the class Reconfigure and Clone grow VMs to")
    networks_json: str = Field("", description="networks_json of every VM the kit creates")
    disks_json: str = Field('[{"Name": "data", "SizeGiB": 2}]', description="disks_json of every VM; disk checks grow these")
    placement_json: str = Field("", description="placement_json of Create and Clone")
    prepare_image_json: str = Field("", description="image_json for ImagePrepare ('' = a raw image the kit serves on 127.0.0.1)")
    import_file: str = Field("", description="disk image file ImportDisk fetches ('' = a raw image the kit makes)")
    import_format: str = Field("", description="format of import_file ('' = raw)")
    linked_clone_source: str = Field(
        "", description="id of an existing VM the backend can linked-clone ('' = a VM the kit makes); never changed"
    )
    hardware_version: int = Field(0, ge=0, description="target_version of HardwareUpgrade (0 = the newest the host offers)")
    graceful_timeout: int = Field(10, ge=1, description="graceful_timeout_seconds of reboots and graceful shutdowns")
    task_timeout: float = Field(300.0, gt=0, description="seconds the kit polls one task before failing the check")
    name_prefix: str = Field(
        "conformance-", pattern=r"^[a-z][a-z0-9-]{0,19}$", description="prefix of every name the kit creates"
    )
    skip: dict[str, str] = Field({}, description="check (or capability) name -> why it is skipped")

    def json_object(self, field: str) -> dict[str, Any]:
        """A JSON-object fixture, decoded."""
        value = json.loads(getattr(self, field) or "{}")
        assert isinstance(value, dict)
        return value

    def json_list(self, field: str) -> list[dict[str, Any]]:
        value = json.loads(getattr(self, field) or "[]")
        assert isinstance(value, list)
        return value


_PAYLOADS: dict[str, Any] = {
    "image_json": specs.VMImage,
    "class_json": specs.VMClass,
    "bigger_class_json": specs.VMClass,
    "networks_json": specs.NetworkList,
    "disks_json": specs.DiskList,
    "placement_json": specs.Placement,
    "prepare_image_json": specs.VMImage,
}


def load(backend: str, table: Mapping[str, Any], check_names: set[str]) -> Fixtures:
    """Validate ``[conformance.<backend>]``; a ConfigError names what is wrong."""
    where = f"[conformance.{backend}]"
    try:
        fixtures = Fixtures.model_validate(dict(table))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ConfigError(f"{where}: {problems}") from None
    for field, model in _PAYLOADS.items():
        try:
            specs.parse(field, getattr(fixtures, field), model)
        except InvalidArgument as exc:
            raise ConfigError(f"{where} {field}: {exc}") from None
    for field in ("class_json", "bigger_class_json"):
        given = specs.parse(field, getattr(fixtures, field), specs.VMClass)
        if given.cpu is None or given.memory_mib is None:
            raise ConfigError(f"{where} {field}: give both CPU and MemoryMiB (the kit compares them with ListVMs)")
    small = specs.parse("class_json", fixtures.class_json, specs.VMClass)
    big = specs.parse("bigger_class_json", fixtures.bigger_class_json, specs.VMClass)
    if big.cpu <= small.cpu or big.memory_mib <= small.memory_mib:
        raise ConfigError(f"{where}: bigger_class_json must have more CPU and more memory than class_json")
    unknown = sorted(name for name in fixtures.skip if name not in check_names)
    if unknown:
        raise ConfigError(f"{where} skip: no check or capability named {', '.join(map(repr, unknown))}")
    empty = sorted(name for name, reason in fixtures.skip.items() if not reason.strip())
    if empty:
        raise ConfigError(f"{where} skip: say why {', '.join(map(repr, empty))} is skipped")
    return fixtures
