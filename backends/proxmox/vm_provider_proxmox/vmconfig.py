"""Proxmox VM configuration values: building them from the request's
specs, and reading them back (drives, NICs, sizes).

Builders return the config keys plus, for each key, the request field it
came from, so that Proxmox's per-parameter 400 errors can be reported under
the client's own field names (``networks_json[1]`` rather than ``net1``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from provider_core import InvalidArgument
from provider_core.specs import DiskSpec, Firmware, IPPolicy, NetworkAttachment, VMClass

from . import hotplug
from .settings import ProxmoxSettings

GIB = 2**30
MIB = 2**20
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$", re.IGNORECASE)
_FACTOR = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
DISK_KEY_RE = re.compile(r"^(scsi|virtio|sata|ide)(\d+)$")
NET_KEY_RE = re.compile(r"^net(\d+)$")
BUS_ORDER = {"scsi": 0, "virtio": 1, "sata": 2, "ide": 3}
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3")
DISK_FORMATS = ("qcow2", "raw", "vmdk")
#: The config keys a client's class_json.ExtraConfig may not set (the
#: backend owns them, or they reach outside the VM).
RESERVED_KEYS = frozenset(
    {"tags", "name", "vmid", "node", "hookscript", "lock", "template", "digest", "cicustom", "delete", "revert"}
)


def encode_sshkeys(keys: str) -> str:
    """PVE stores ``sshkeys`` URL-encoded (spaces as %20, never +); raw keys
    (which always contain a space) are encoded, encoded ones kept."""
    text = keys.strip()
    return quote(text, safe="") if " " in text or "\n" in text else text


def parse_size(text: str) -> int:
    """Bytes of a PVE size (``8G``, ``528K``, ``4096``)."""
    m = SIZE_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a Proxmox size: {text!r}")
    return int(float(m.group(1)) * _FACTOR[m.group(2).upper()])


def parse_options(value: str) -> tuple[str, dict[str, str]]:
    """``first,key=value,...`` -> (first, {key: value}). A first part with
    ``=`` is an option too (then the first part is "")."""
    parts = [p for p in str(value).split(",") if p]
    head = ""
    opts: dict[str, str] = {}
    for i, part in enumerate(parts):
        if "=" in part:
            k, v = part.split("=", 1)
            opts[k.strip()] = v.strip()
        elif i == 0:
            head = part.strip()
        else:
            opts[part.strip()] = "1"
    return head, opts


@dataclass(frozen=True)
class Drive:
    key: str
    volume: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_cdrom(self) -> bool:
        return self.options.get("media") == "cdrom"

    @property
    def storage(self) -> str:
        return self.volume.split(":", 1)[0] if ":" in self.volume else ""

    @property
    def size_bytes(self) -> int:
        try:
            return parse_size(self.options.get("size", "0"))
        except ValueError:
            return 0

    @property
    def is_cloudinit(self) -> bool:
        """A cloud-init drive: a CD-ROM backed by a VM image volume (PVE names
        it ``vm-<id>-cloudinit``), not an ISO file."""
        name = self.volume.split(":", 1)[-1]
        return self.is_cdrom and ("cloudinit" in name or re.match(r"^(\d+/)?(vm|base)-\d+-disk-\d+", name) is not None)


def drives(config: Mapping[str, Any]) -> list[Drive]:
    """Every drive of a config, in bus then index order."""
    found = []
    for key, value in config.items():
        m = DISK_KEY_RE.match(key)
        if m:
            vol, opts = parse_options(str(value))
            found.append((BUS_ORDER[m.group(1)], int(m.group(2)), Drive(key, vol, opts)))
    return [d for _, _, d in sorted(found, key=lambda t: (t[0], t[1]))]


def data_disks(config: Mapping[str, Any]) -> list[Drive]:
    """Disks (not CD-ROMs), in the order disks_json entries map to them."""
    return [d for d in drives(config) if not d.is_cdrom and d.volume != "none"]


def boot_order(config: Mapping[str, Any]) -> list[str]:
    _, opts = parse_options(str(config.get("boot", "")))
    return [k for k in opts.get("order", "").split(";") if k]


def primary_disk(config: Mapping[str, Any]) -> Drive | None:
    disks = data_disks(config)
    by_key = {d.key: d for d in disks}
    for key in boot_order(config):
        if key in by_key:
            return by_key[key]
    return disks[0] if disks else None


def free_key(config: Mapping[str, Any], bus: str, start: int = 0) -> str:
    i = start
    while f"{bus}{i}" in config:
        i += 1
    return f"{bus}{i}"


# -- builders ------------------------------------------------------------------


@dataclass
class Built:
    """Config keys to send, and the request field each came from."""

    config: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, origin: str) -> None:
        self.config[key] = value
        self.origins[key] = origin

    def update(self, other: Built) -> None:
        self.config.update(other.config)
        self.origins.update(other.origins)

    def remap(self, err: InvalidArgument) -> InvalidArgument:
        """Rename Proxmox parameter names in ``err`` to request fields."""
        if not err.violations:
            return err
        violations = [(self.origins.get(k, k), v) for k, v in err.violations]
        text = "; ".join(f"{k}: {v}" for k, v in violations)
        return InvalidArgument(f"Proxmox refused the request: {text}", violations)


def disk_value(storage: str, spec: DiskSpec, field_name: str) -> str:
    """``storage:SIZE[,format=...]`` for a new disk."""
    kind = spec.type
    opts = ""
    if kind in DISK_FORMATS:
        opts = f",format={kind}"
    elif kind not in ("", "thin", "thick"):
        raise InvalidArgument.field(f"{field_name}.Type", f"must be thin, thick, {', '.join(DISK_FORMATS)} (got {kind!r})")
    if kind != "thick":
        opts += ",discard=on"
    return f"{storage}:{spec.size_gib}{opts}"


def class_config(
    vm_class: VMClass,
    settings: ProxmoxSettings,
    storage: str,
    *,
    new: bool,
    field_name: str = "class_json",
    current: Mapping[str, Any] | None = None,
) -> Built:
    """CPU, memory, firmware and pass-through settings from class_json.
    ``new``: defaults apply (a new VM), else only what the class names;
    ``current``: the config of the VM it changes (or copies), whose CPU
    layout (hotplug) the CPU keys keep."""
    b = Built()
    cores = vm_class.cpu or (settings.default_cores if new else None)
    if cores is not None and current is not None:
        b.update(cpu_change(settings, current, cores, f"{field_name}.CPU"))
    elif cores is not None:
        b.set("cores", cores, f"{field_name}.CPU")
        if new:
            b.set("sockets", 1, f"{field_name}.CPU")
    memory = vm_class.memory_mib or (settings.default_memory_mib if new else None)
    if memory is not None:
        b.set("memory", memory, f"{field_name}.MemoryMiB")
    if new and settings.cpu_type:
        b.set("cpu", settings.cpu_type, "settings.cpu_type")
    b.update(_firmware(vm_class, storage, field_name))
    perf = vm_class.performance_profile
    hot = hotplug.hot_config(vm_class, settings, cores or 0, memory or 0, field_name, new=new)
    if "numa" in hot and memory is not None and memory < hotplug.STATIC_MIB:
        raise InvalidArgument.field(
            f"{field_name}.MemoryMiB", f"memory hotplug needs at least {hotplug.STATIC_MIB} MiB (Proxmox's static memory)"
        )
    for key, (value, origin) in hot.items():
        b.set(key, value, origin)
    if perf and perf.nested_virtualization and not settings.cpu_type:
        b.set("cpu", "host", f"{field_name}.PerformanceProfile.NestedVirtualization")
    for key, value in (vm_class.extra_config or {}).items():
        origin = f"{field_name}.ExtraConfig.{key}"
        if key in RESERVED_KEYS:
            raise InvalidArgument.field(origin, "is managed by the provider and cannot be set through ExtraConfig")
        b.set(key, encode_sshkeys(value) if key == "sshkeys" else value, origin)
    return b


def _firmware(vm_class: VMClass, storage: str, field_name: str) -> Built:
    """bios (+ an EFI vars disk, with Microsoft keys for Secure Boot) and TPM."""
    b = Built()
    sec = vm_class.security_profile
    if vm_class.firmware is Firmware.UEFI:
        b.set("bios", "ovmf", f"{field_name}.Firmware")
        b.set("machine", "q35", f"{field_name}.Firmware")
        keys = 1 if sec and sec.secure_boot else 0
        b.set("efidisk0", f"{storage}:1,efitype=4m,pre-enrolled-keys={keys}", f"{field_name}.Firmware")
    elif vm_class.firmware is Firmware.BIOS:
        b.set("bios", "seabios", f"{field_name}.Firmware")
        if sec and sec.secure_boot:
            raise InvalidArgument.field(f"{field_name}.SecurityProfile.SecureBoot", "needs Firmware UEFI")
    if sec and sec.tpm_enabled:
        version = "v1.2" if sec.tpm_version.startswith("1") else "v2.0"
        b.set("tpmstate0", f"{storage}:1,version={version}", f"{field_name}.SecurityProfile.TPMEnabled")
    return b


def net_value(att: NetworkAttachment, settings: ProxmoxSettings, field_name: str) -> str:
    model = att.model or "virtio"
    if model not in NIC_MODELS:
        raise InvalidArgument.field(f"{field_name}.Model", f"must be one of {', '.join(NIC_MODELS)} (got {model!r})")
    bridge = att.bridge or att.network_name or settings.bridge
    if not re.match(r"^[A-Za-z][A-Za-z0-9._-]*$", bridge):
        raise InvalidArgument.field(f"{field_name}.Bridge", f"{bridge!r} is not a Proxmox bridge or vnet name")
    value = f"{model}={att.mac_address.upper()}" if att.mac_address else model
    value += f",bridge={bridge}"
    if att.vlan:
        value += f",tag={att.vlan}"
    return value


def ipconfig_value(att: NetworkAttachment) -> str:
    """cloud-init addressing of one NIC: static address/prefix and gateway,
    or DHCP (also when no policy and no address is given)."""
    if att.static_ip and att.ip_policy is not IPPolicy.DHCP:
        ip = ipaddress.ip_address(att.static_ip)
        if ip.version == 6:
            text = f"ip6={ip}/{att.prefix}"
            return text + (f",gw6={att.gateway}" if att.gateway else "")
        text = f"ip={ip}/{att.prefix}"
        return text + (f",gw={att.gateway}" if att.gateway else "")
    return "ip=dhcp"


def network_config(networks: list[NetworkAttachment], settings: ProxmoxSettings, field_name: str = "networks_json") -> Built:
    """``netN`` and ``ipconfigN`` for each attachment; ``nameserver`` from
    their DNS servers."""
    b = Built()
    servers: list[str] = []
    for i, att in enumerate(networks):
        origin = f"{field_name}[{i}]"
        b.set(f"net{i}", net_value(att, settings, origin), origin)
        b.set(f"ipconfig{i}", ipconfig_value(att), origin)
        servers.extend(s for s in att.dns_servers if s not in servers)
    if servers:
        b.set("nameserver", " ".join(servers), f"{field_name}.DNS")
    return b


def same_net(current: str, wanted: str) -> bool:
    """Whether two ``netN`` values describe the same NIC (MAC compared only
    when the wanted value names one)."""
    cur_head, cur = parse_options(current)
    want_head, want = parse_options(wanted)
    cur_model, want_model = (cur_head or "").split("=")[0], (want_head or "").split("=")[0]
    for model in NIC_MODELS:
        if model in cur:
            cur_model = model
            cur.setdefault("macaddr", cur.pop(model))
        if model in want:
            want_model = model
            want.setdefault("macaddr", want.pop(model))
    if cur_model != want_model:
        return False
    if "macaddr" in want and want["macaddr"].lower() != cur.get("macaddr", "").lower():
        return False
    return all(cur.get(k) == want.get(k) for k in ("bridge", "tag"))


def cpu_change(settings: ProxmoxSettings, config: Mapping[str, Any], cpu: int, origin: str) -> Built:
    """The keys that give an existing VM (``config``) ``cpu`` vCPUs:
    ``vcpus`` within its maximum when it has CPU hotplug (beyond it: a new
    maximum in ``cores``, which needs a restart); else ``cores`` of one
    socket."""
    b = Built()
    if hotplug.cpu_hotplug(config):
        if cpu > hotplug.max_vcpus(config):
            b.set("cores", hotplug.plan_cpu(settings, cpu), origin)
            if int(config.get("sockets", 1) or 1) != 1:
                b.set("sockets", 1, origin)
        if cpu != hotplug.vcpus(config) or "cores" in b.config:
            b.set("vcpus", cpu, origin)
        return b
    if hotplug.max_vcpus(config) != cpu:
        b.set("cores", cpu, origin)
        if int(config.get("sockets", 1) or 1) != 1:
            b.set("sockets", 1, origin)
    if config.get("vcpus") and int(config["vcpus"]) != cpu:
        b.set("vcpus", cpu, origin)
    return b
