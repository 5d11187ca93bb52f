"""Settings of the sim backend: ``[backends.sim]`` in plugins.toml."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from provider_core import BackendSettings


class SimSettings(BackendSettings):
    task_seconds: float = Field(0.2, ge=0, le=600, description="how long each background operation (create, clone, ...) takes")
    shutdown_seconds: float = Field(0.5, ge=0, le=600, description="how long a guest takes to shut down after an ACPI request")
    state_file: Path | None = Field(
        None, description="JSON file keeping the simulated hypervisor across restarts (default: memory only)"
    )
    download_images: bool = Field(
        True, description="fetch URL images to verify their checksum and learn their size (off: record the URL only)"
    )
    images: list[str] = Field(["debian-12", "alpine-3.20"], description="images present at start, usable as TemplateName or Path")
    networks: list[str] = Field(["default"], description="networks a NIC may name in NetworkName")
    datastores: list[str] = Field(["default"], description="datastores placement may name")
    foreign_vms: list[str] = Field([], description="names of VMs present on the 'host' that this provider did not make")
    host_cpus: int = Field(64, ge=1, description="most vCPUs one VM may have")
    host_memory_mib: int = Field(262144, ge=16, description="most memory one VM may have")
    hotplug_cpus: int = Field(8, ge=1, description="vCPUs a running VM may grow to (at least what it was created with)")
    hotplug_memory_mib: int = Field(
        16384, ge=16, description="memory a running VM may grow to (at least what it was created with)"
    )
    storage_gib: int = Field(100_000, ge=1, description="capacity of the simulated storage")
    hardware_versions: list[int] = Field(
        [19, 20, 21], min_length=1, description="machine versions the 'host' offers; new VMs get the first"
    )
    default_disk_gib: int = Field(10, ge=1, description="root disk size when neither class nor disks say")
