"""Domain XML: build it from a :class:`DomainPlan`, read disks, NICs and
consoles back from a domain's XML. Pure functions over xml.etree; nothing
here talks to libvirt.

A new domain gets: memory ``max_memory_mib`` with ``currentMemory`` at the
requested size (the balloon lets memory grow online up to the maximum),
``vcpu current=N`` with a higher maximum (vCPUs hot-plug up to it), BIOS or
UEFI (``<os firmware='efi'>``, libvirt picks the firmware files, told
whether Secure Boot is wanted), optional
direct kernel boot, disks on virtio, the cloud-init ISO as a SATA CD-ROM,
NICs on a libvirt network or host bridge, VNC/SPICE with an automatic port,
a serial console, the QEMU guest agent channel, a virtio RNG, and our mark
(:mod:`vm_provider_libvirt.marks`).
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from . import marks
from .disksource import DiskSource, Network

GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class DomainDisk:
    """A disk of a domain as its XML says."""

    target: str
    """Device name in the guest's bus namespace: vda, sda."""
    path: str
    format: str
    """qcow2, raw, ..."""
    device: str = "disk"
    """disk or cdrom."""
    boot: bool = False
    """The primary disk (the first non-CD-ROM one)."""
    bus: str = ""
    source_type: str = "file"
    """file, block, volume, network."""
    readonly: bool = False
    network: Network | None = None
    """Protocol, hosts and credentials of a network disk (when writing one)."""


@dataclass(frozen=True)
class DomainNic:
    mac: str
    kind: str
    """network, bridge, direct, ..."""
    source: str
    """Network or bridge name."""
    model: str = ""
    vlan: int = 0
    target: str = ""
    """Host-side device (vnet0) of a running domain."""


@dataclass(frozen=True)
class NicPlan:
    kind: str
    """network or bridge."""
    source: str
    mac: str
    model: str = "virtio"
    vlan: int = 0
    openvswitch: bool = False


@dataclass(frozen=True)
class DomainPlan:
    """Everything a new domain's XML is made from."""

    name: str
    uuid: str
    domain_type: str
    arch: str
    memory_mib: int
    max_memory_mib: int
    vcpus: int
    max_vcpus: int
    mark: marks.Mark
    machine: str = ""
    firmware: str = "bios"
    """bios or efi."""
    secure_boot: bool = False
    firmware_features: bool = True
    """UEFI: state the secure-boot and enrolled-keys features (on or off as
    ``secure_boot``) so libvirt's auto-selection picks matching firmware
    (libvirt >= 7.2)."""
    loader_secure: bool = False
    """UEFI: ``<loader secure='yes'/>`` too (Secure Boot on libvirt 7.2-8.5)."""
    tpm: bool = False
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    cpu_mode: str = ""
    """host-model, host-passthrough, or empty for the hypervisor's default."""
    disks: tuple[DomainDisk, ...] = ()
    nics: tuple[NicPlan, ...] = ()
    graphics: str = "vnc"
    graphics_listen: str = ""
    serial_log: str = ""
    guest_agent: bool = True
    description: str = ""
    extra_devices: tuple[ET.Element, ...] = field(default_factory=tuple)


def random_mac() -> str:
    """A MAC in QEMU's locally administered range 52:54:00:xx:xx:xx."""
    tail = random.getrandbits(24)
    return "52:54:00:" + ":".join(f"{(tail >> s) & 0xFF:02x}" for s in (16, 8, 0))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def build(plan: DomainPlan) -> str:
    """The domain XML of a plan."""
    dom = ET.Element("domain", type=plan.domain_type)
    _sub(dom, "name", plan.name)
    _sub(dom, "uuid", plan.uuid)
    if plan.description:
        _sub(dom, "description", plan.description)
    metadata = _sub(dom, "metadata")
    metadata.append(plan.mark.to_element())
    _sub(dom, "memory", str(plan.max_memory_mib), unit="MiB")
    _sub(dom, "currentMemory", str(plan.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(plan.max_vcpus), placement="static", current=str(plan.vcpus))
    _os(dom, plan)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if plan.secure_boot:
        _sub(features, "smm", state="on")
    if plan.cpu_mode:
        _sub(dom, "cpu", mode=plan.cpu_mode)
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    _devices(_sub(dom, "devices"), plan)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def _os(dom: ET.Element, plan: DomainPlan) -> None:
    os_el = _sub(dom, "os")
    if plan.firmware == "efi":
        os_el.set("firmware", "efi")
        if plan.loader_secure:
            _sub(os_el, "loader", secure="yes")
        if plan.firmware_features:
            fw = _sub(os_el, "firmware")
            enabled = "yes" if plan.secure_boot else "no"
            _sub(fw, "feature", enabled=enabled, name="secure-boot")
            _sub(fw, "feature", enabled=enabled, name="enrolled-keys")
    type_attrs = {"arch": plan.arch}
    if plan.machine:
        type_attrs["machine"] = plan.machine
    _sub(os_el, "type", "hvm", **type_attrs)
    if plan.kernel:
        _sub(os_el, "kernel", plan.kernel)
        if plan.initrd:
            _sub(os_el, "initrd", plan.initrd)
        if plan.cmdline:
            _sub(os_el, "cmdline", plan.cmdline)


def _devices(devices: ET.Element, plan: DomainPlan) -> None:
    for disk in plan.disks:
        _disk(devices, disk, boot_order=1 if disk.boot and not plan.kernel else 0)
    for nic in plan.nics:
        _nic(devices, nic)
    serial = _sub(devices, "serial", type="pty")
    if plan.serial_log:
        _sub(serial, "log", file=plan.serial_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if plan.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    if plan.graphics != "none":
        graphics = _sub(devices, "graphics", type=plan.graphics, autoport="yes")
        if plan.graphics_listen:
            _sub(graphics, "listen", type="address", address=plan.graphics_listen)
    if plan.tpm:
        tpm = _sub(devices, "tpm", model="tpm-crb")
        _sub(tpm, "backend", type="emulator", version="2.0")
    if plan.domain_type != "test":
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")
    for extra in plan.extra_devices:
        devices.append(extra)


def _disk(devices: ET.Element, disk: DomainDisk, boot_order: int) -> None:
    el = _sub(devices, "disk", type=disk.source_type, device=disk.device)
    _sub(el, "driver", name="qemu", type=disk.format or "raw")
    DiskSource(disk.source_type, disk.path, disk.network).write(el)
    _sub(el, "target", dev=disk.target, bus=disk.bus or ("sata" if disk.device == "cdrom" else "virtio"))
    if disk.readonly or disk.device == "cdrom":
        _sub(el, "readonly")
    if boot_order:
        _sub(el, "boot", order=str(boot_order))


def _nic(devices: ET.Element, nic: NicPlan) -> None:
    el = _sub(devices, "interface", type=nic.kind)
    _sub(el, "mac", address=nic.mac)
    _sub(el, "source", **{"network" if nic.kind == "network" else "bridge": nic.source})
    if nic.openvswitch:
        _sub(el, "virtualport", type="openvswitch")
    if nic.vlan:
        vlan = _sub(el, "vlan")
        _sub(vlan, "tag", id=str(nic.vlan))
    _sub(el, "model", type=nic.model)


# -- reading a domain's XML -------------------------------------------------------


def parse(xml: str) -> ET.Element:
    """Parse XML written by libvirt itself (never client input)."""
    return ET.fromstring(xml)  # noqa: S314 - XML from libvirt, not from clients


def source_path(disk: ET.Element) -> str:
    """Where a domain disk's data is: its file, device or network name, or
    ``pool/volume`` for a ``<source pool volume>``; "" for none (an empty
    CD-ROM)."""
    source = disk.find("source")
    if source is None:
        return ""
    path = source.get("file") or source.get("dev") or source.get("name") or ""
    if not path and source.get("volume"):
        path = f"{source.get('pool', '')}/{source.get('volume')}"
    return path


def disks(dom: ET.Element) -> list[DomainDisk]:
    """Disks and CD-ROMs in XML order; the first non-CD-ROM one is primary."""
    out: list[DomainDisk] = []
    primary_seen = False
    for el in dom.findall("devices/disk"):
        device = el.get("device", "disk")
        if device not in ("disk", "cdrom", "lun"):
            continue
        path = source_path(el)
        driver = el.find("driver")
        target = el.find("target")
        boot = device != "cdrom" and not primary_seen
        primary_seen = primary_seen or boot
        out.append(
            DomainDisk(
                target=target.get("dev", "") if target is not None else "",
                path=path,
                format=(driver.get("type", "") if driver is not None else "") or "raw",
                device="cdrom" if device == "cdrom" else "disk",
                boot=boot,
                bus=target.get("bus", "") if target is not None else "",
                source_type=el.get("type", "file"),
                readonly=el.find("readonly") is not None,
            )
        )
    return out


def nics(dom: ET.Element) -> list[DomainNic]:
    out: list[DomainNic] = []
    for el in dom.findall("devices/interface"):
        source = el.find("source")
        src = ""
        if source is not None:
            src = source.get("network") or source.get("bridge") or source.get("dev") or ""
        mac = el.find("mac")
        model = el.find("model")
        tag = el.find("vlan/tag")
        target = el.find("target")
        out.append(
            DomainNic(
                mac=(mac.get("address", "") if mac is not None else "").lower(),
                kind=el.get("type", ""),
                source=src,
                model=model.get("type", "") if model is not None else "",
                vlan=int(tag.get("id", "0")) if tag is not None else 0,
                target=target.get("dev", "") if target is not None else "",
            )
        )
    return out


def console_url(dom: ET.Element, host: str) -> str:
    """``vnc://host:port`` (or ``spice://``) of a running domain, else ""."""
    for el in dom.findall("devices/graphics"):
        kind = el.get("type", "")
        port = el.get("port", "-1")
        if kind in ("vnc", "spice") and port.lstrip("-").isdigit() and int(port) > 0:
            return f"{kind}://{host}:{port}"
    return ""


def machine(dom: ET.Element) -> str:
    el = dom.find("os/type")
    return el.get("machine", "") if el is not None else ""


def memory_mib(dom: ET.Element, tag: str = "currentMemory") -> int:
    el = dom.find(tag)
    if el is None or not (el.text or "").strip().isdigit():
        return 0
    factor = {"b": 1 / 2**20, "bytes": 1 / 2**20, "kib": 1 / 1024, "k": 1 / 1024, "mib": 1, "m": 1, "gib": 1024, "g": 1024}
    return int(int(el.text or "0") * factor.get(el.get("unit", "KiB").lower(), 1 / 1024))


def vcpus(dom: ET.Element) -> tuple[int, int]:
    """(current, maximum) vCPUs."""
    el = dom.find("vcpu")
    if el is None:
        return 0, 0
    maximum = int((el.text or "0").strip() or 0)
    return int(el.get("current", maximum)), maximum


def agent_connected(dom: ET.Element) -> bool:
    """Whether the live XML says the guest agent is connected."""
    for el in dom.findall("devices/channel/target"):
        if el.get("name") == GUEST_AGENT_CHANNEL and el.get("state") == "connected":
            return True
    return False


def has_agent_channel(dom: ET.Element) -> bool:
    return any(el.get("name") == GUEST_AGENT_CHANNEL for el in dom.findall("devices/channel/target"))


def firmware(dom: ET.Element) -> str:
    os_el = dom.find("os")
    if os_el is None:
        return "bios"
    if os_el.get("firmware") == "efi" or os_el.find("loader") is not None:
        return "efi"
    return "bios"


def pflash_firmware(dom: ET.Element) -> bool:
    """Whether the domain's firmware is in pflash (UEFI as OVMF; a running
    domain's XML names the loader auto-selection picked)."""
    return any(el.get("type") == "pflash" for el in dom.findall("os/loader"))


def mark(dom: ET.Element) -> marks.Mark | None:
    return marks.read(dom)
