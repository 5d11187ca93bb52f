"""From the protocol's typed specs to the simulated hypervisor's records.

Every problem with a request is an InvalidArgument naming the field as the
client spelled it (``networks_json[1].NetworkName``).
"""

from __future__ import annotations

import copy
import secrets
import uuid
from dataclasses import dataclass

from provider_core import CloneSpec, CreateSpec, DesiredVM, InvalidArgument, NotFound, VMClass, VMImage

from .hypervisor import Hypervisor, NoImageError
from .machines import CREATING, Disk, Machine, Nic
from .settings import SimSettings

ROOT_DISK = "root"
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3")
DISK_TYPES = ("thin", "thick", "qcow2", "raw")
#: ExtraConfig keys the simulation understands; other ``sim.`` keys are refused.
EXTRA_KEYS = {"sim.ignore_acpi": "the guest ignores ACPI shutdown requests (graceful shutdown then needs the force-off)"}
DEFAULT_MEMORY_MIB = 512


def new_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def disk_path(vm_name: str, disk: str) -> str:
    return f"/var/lib/sim/machines/{vm_name}/{disk}.qcow2"


def _resources(vm_class: VMClass, settings: SimSettings, field: str, cpu: int, memory_mib: int) -> tuple[int, int]:
    cpu = vm_class.cpu or cpu
    memory_mib = vm_class.memory_mib or memory_mib
    if cpu > settings.host_cpus:
        raise InvalidArgument.field(f"{field}.CPU", f"{cpu} vCPUs is more than this host's {settings.host_cpus}")
    if memory_mib > settings.host_memory_mib:
        raise InvalidArgument.field(f"{field}.MemoryMiB", f"{memory_mib} MiB is more than this host's {settings.host_memory_mib}")
    if memory_mib < 16:
        raise InvalidArgument.field(f"{field}.MemoryMiB", "a guest needs at least 16 MiB")
    return cpu, memory_mib


def _extra_config(vm_class: VMClass, field: str) -> dict[str, str]:
    extra = dict(vm_class.extra_config or {})
    for key in extra:
        if key.startswith("sim.") and key not in EXTRA_KEYS:
            raise InvalidArgument.field(f"{field}.ExtraConfig.{key}", f"unknown sim setting; known: {', '.join(EXTRA_KEYS)}")
    return extra


def _image(hv: Hypervisor, image: VMImage) -> tuple[str, str, int]:
    """(image, backing path, size GiB) of the root disk's source."""
    if image.source == "url":
        return image.url, "", 0  # "downloaded" as a standalone disk
    if image.source == "blank":
        return "", "", 0
    ref = image.template_name or image.path
    try:
        found = hv.image(ref)
    except NoImageError:
        field = "image_json.TemplateName" if image.template_name else "image_json.Path"
        known = ", ".join(i.name for i in hv.images()) or "none"
        raise NotFound(f"{field}: no image {ref!r} on the sim host (images: {known}); add one with ImagePrepare") from None
    return found.path, found.path, found.size_gib


def _disk_type(value: str, field: str) -> tuple[str, bool]:
    if value and value not in DISK_TYPES:
        raise InvalidArgument.field(field, f"must be one of {', '.join(DISK_TYPES)}")
    return ("raw" if value == "raw" else "qcow2"), value == "thick"


def build_machine(spec: CreateSpec, settings: SimSettings, hv: Hypervisor) -> Machine:
    """The machine a Create request asks for, in state CREATING."""
    cpu, memory_mib = _resources(spec.vm_class, settings, "class_json", 1, DEFAULT_MEMORY_MIB)
    extra = _extra_config(spec.vm_class, "class_json")
    image, backing, image_gib = _image(hv, spec.image)
    defaults = spec.vm_class.disk_defaults
    root_gib = (defaults.size_gib if defaults else None) or max(image_gib, settings.default_disk_gib)
    if root_gib < image_gib:
        raise InvalidArgument.field(
            "class_json.DiskDefaults.SizeGiB", f"{root_gib} GiB is smaller than the image ({image_gib} GiB)"
        )
    fmt, thick = _disk_type(defaults.type if defaults else "", "class_json.DiskDefaults.Type")
    disks = [Disk(ROOT_DISK, root_gib, fmt, disk_path(spec.name, ROOT_DISK), backing, bootable=True, thick=thick)]
    for i, d in enumerate(spec.disks):
        name = d.name or f"disk{i + 1}"
        if any(x.name == name for x in disks):
            raise InvalidArgument.field(f"disks_json[{i}].Name", f"{name!r} is taken (the boot disk is {ROOT_DISK!r})")
        fmt, thick = _disk_type(d.type, f"disks_json[{i}].Type")
        disks.append(Disk(name, d.size_gib, fmt, disk_path(spec.name, name), thick=thick))
    nics: list[Nic] = []
    for i, n in enumerate(spec.networks):
        if n.network_name and n.network_name not in settings.networks:
            raise InvalidArgument.field(
                f"networks_json[{i}].NetworkName", f"no network {n.network_name!r} (networks: {', '.join(settings.networks)})"
            )
        if n.model and n.model not in NIC_MODELS:
            raise InvalidArgument.field(f"networks_json[{i}].Model", f"must be one of {', '.join(NIC_MODELS)}")
        network = n.network_name or ("" if n.bridge else settings.networks[0])
        nics.append(
            Nic(
                n.name or f"nic{i}",
                n.mac_address or new_mac(),
                network,
                n.bridge,
                n.model or "virtio",
                n.vlan,
                n.static_ip,
                n.prefix,
            )
        )
    if not spec.networks:
        nics.append(Nic("nic0", new_mac(), settings.networks[0]))
    if spec.placement.datastore and spec.placement.datastore not in settings.datastores:
        raise InvalidArgument.field(
            "placement_json.Datastore",
            f"no datastore {spec.placement.datastore!r} (datastores: {', '.join(settings.datastores)})",
        )
    return Machine(
        id="vm-" + uuid.uuid4().hex[:16],
        name=spec.name,
        owned=True,
        state=CREATING,
        cpu=cpu,
        memory_mib=memory_mib,
        max_cpu=max(cpu, settings.hotplug_cpus),
        max_memory_mib=max(memory_mib, settings.hotplug_memory_mib),
        hardware_version=min(settings.hardware_versions),
        firmware=spec.vm_class.firmware.value if spec.vm_class.firmware else "BIOS",
        disks=disks,
        nics=nics,
        extra_config=extra,
        tags=list(spec.tags),
        image=image,
        placement={k: v for k, v in spec.placement.model_dump().items() if v},
        user_data_bytes=len(spec.user_data),
    )


def build_clone(source: Machine, spec: CloneSpec, settings: SimSettings) -> Machine:
    """A copy of ``source`` named ``spec.target_name``: new id and MACs,
    disks copied (full) or as overlays on the source's (linked)."""
    target = copy.deepcopy(source)
    target.id = "vm-" + uuid.uuid4().hex[:16]
    target.name = spec.target_name
    target.owned = True
    target.state = CREATING
    target.shutdown_at = None
    target.snapshots = []
    target.cpu, target.memory_mib = _resources(spec.vm_class, settings, "class_json", source.cpu, source.memory_mib)
    target.max_cpu, target.max_memory_mib = (
        max(target.cpu, settings.hotplug_cpus),
        max(target.memory_mib, settings.hotplug_memory_mib),
    )
    target.extra_config.update(_extra_config(spec.vm_class, "class_json"))
    target.linked_from = source.id if spec.linked else ""
    for disk in target.disks:
        origin = disk.path
        disk.path = disk_path(target.name, disk.name)
        disk.backing = origin if spec.linked else ""
    for nic in target.nics:
        nic.mac = new_mac()
    custom = spec.customize
    for i, net in enumerate(custom.networks):
        if i >= len(target.nics):
            raise InvalidArgument.field(f"customize_json.networks[{i}]", f"the source VM has only {len(target.nics)} NIC(s)")
        if net.ip_address:
            target.nics[i].static_ip = net.ip_address
            target.nics[i].prefix = net.prefix
    if spec.placement.datastore and spec.placement.datastore not in settings.datastores:
        raise InvalidArgument.field(
            "placement_json.Datastore",
            f"no datastore {spec.placement.datastore!r} (datastores: {', '.join(settings.datastores)})",
        )
    target.placement.update({k: v for k, v in spec.placement.model_dump().items() if v})
    target.customization = {k: v for k, v in custom.model_dump(exclude={"networks", "user_data"}).items() if v} | (
        {"user_data_bytes": len(custom.user_data.encode())} if custom.user_data else {}
    )
    target.tags = source.tags + [t for t in custom.tags if t not in source.tags]
    return target


@dataclass(frozen=True)
class Plan:
    """What a Reconfigure changes."""

    cpu: int
    memory_mib: int
    disk_sizes: dict[str, int]
    tags: list[str] | None


def _image_ref(hv: Hypervisor, image: VMImage) -> str:
    if image.source == "template":
        try:
            return hv.image(image.template_name).path
        except NoImageError:
            return image.template_name
    return image.path or image.url


def plan_reconfigure(machine: Machine, desired: DesiredVM, settings: SimSettings, hv: Hypervisor) -> Plan:
    """Compare the desired VM with the machine; refuse what cannot change."""
    if desired.name and desired.name != machine.name:
        raise InvalidArgument.field("desired_json.Name", f"renaming is not supported (the VM is {machine.name!r})")
    cpu, memory_mib = machine.cpu, machine.memory_mib
    sizes: dict[str, int] = {}
    if desired.vm_class is not None:
        cpu, memory_mib = _resources(desired.vm_class, settings, "desired_json.Class", cpu, memory_mib)
        if desired.vm_class.firmware and desired.vm_class.firmware.value != machine.firmware:
            raise InvalidArgument.field("desired_json.Class.Firmware", f"firmware cannot change (the VM has {machine.firmware})")
        defaults = desired.vm_class.disk_defaults
        if defaults and defaults.size_gib:
            sizes[ROOT_DISK] = defaults.size_gib
        root = machine.disk(ROOT_DISK)
        if root is not None and sizes.get(ROOT_DISK, root.size_gib) < root.size_gib:
            raise InvalidArgument.field(
                "desired_json.Class.DiskDefaults.SizeGiB", f"disks only grow: {ROOT_DISK!r} has {root.size_gib} GiB"
            )
    for i, d in enumerate(desired.disks or []):
        name = d.name or f"disk{i + 1}"
        disk = machine.disk(name)
        if disk is None:
            raise InvalidArgument.field(
                f"desired_json.Disks[{i}]", f"the VM has no disk {name!r}; Reconfigure does not add disks"
            )
        if d.size_gib < disk.size_gib:
            raise InvalidArgument.field(f"desired_json.Disks[{i}].SizeGiB", f"disks only grow: {name!r} has {disk.size_gib} GiB")
        sizes[name] = d.size_gib
    if desired.image is not None and _image_ref(hv, desired.image) != machine.image:
        raise InvalidArgument.field("desired_json.Image", "the image of an existing VM cannot change")
    if desired.networks is not None:
        wanted = [(n.network_name or ("" if n.bridge else settings.networks[0]), n.bridge) for n in desired.networks]
        if wanted != [(n.network, n.bridge) for n in machine.nics] and desired.networks:
            raise InvalidArgument.field("desired_json.Networks", "changing networks is not supported; clone or re-create the VM")
    if (
        desired.placement is not None
        and desired.placement.datastore
        and desired.placement.datastore != machine.placement.get("datastore", "")
    ):
        raise InvalidArgument.field("desired_json.Placement.Datastore", "moving a VM to another datastore is not supported")
    return Plan(cpu, memory_mib, sizes, desired.tags)
