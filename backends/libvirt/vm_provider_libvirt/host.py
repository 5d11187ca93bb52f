"""What the libvirt host offers: driver, guest architecture, machine types,
firmware, and which domain type new VMs get (KVM or QEMU emulation).

Facts come from ``getCapabilities()`` (one call per connection) and, lazily,
``getDomainCapabilities()``. The domain type follows ``settings.domain_type``;
``auto`` picks KVM when the host offers it *and* it works, else QEMU.

Why a probe: a host can offer KVM (``/dev/kvm`` exists, libvirt lists
``<domain type='kvm'/>``) on which KVM guests hang or crawl, e.g. under some
nested virtualisation. So ``auto`` boots a transient, diskless 16 MiB
probe guest twice, first emulated, then under KVM: the guest's firmware
(SeaBIOS) finds nothing to boot and, with ``rebootTimeout=0`` and
``on_reboot=destroy``, ends the domain at once. KVM counts as working when
its probe ends within 1.5 times the emulated one's time (at least 1 s): real
KVM is several times faster than emulation. The probe runs once per
backend (about 1-2 s) the first time a VM is created, and only on x86 hosts;
elsewhere KVM is trusted when offered. Set ``domain_type`` to skip it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cached_property

import libvirt

from . import errors
from .domxml import parse as parse_xml

log = logging.getLogger(__name__)

PROBE_MEMORY_MIB = 16
PROBE_LIMIT_SECONDS = 10.0

#: libvirt version (of the daemon) from which volume streams keep holes
#: (``VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM``, 4.4.0), which the disk data
#: path uses.
SPARSE_STREAMS_SINCE = 4_004_000


@dataclass(frozen=True)
class HostInfo:
    """Facts about one libvirt host, from its capabilities XML."""

    driver: str
    """``QEMU``, ``TEST``, ..."""
    hostname: str
    libvirt_version: int
    hypervisor_version: int
    arch: str
    """Guest architecture of new VMs (the host's own when it can run it)."""
    domain_types: tuple[str, ...]
    """Domain types offered for ``arch`` (``qemu``, ``kvm``, ``test``)."""
    machines: tuple[str, ...] = ()
    """Versioned machine types for ``arch`` (``pc-q35-7.2``, ...)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Machine aliases -> versioned names (``q35`` -> ``pc-q35-7.2``)."""

    @property
    def is_test(self) -> bool:
        """libvirt's built-in test driver (no real guests)."""
        return self.driver.upper() == "TEST"

    @property
    def is_qemu(self) -> bool:
        return self.driver.upper() == "QEMU"

    @property
    def reboot_events(self) -> bool:
        """Whether a guest reboot is reported by a domain event (the test
        driver reboots at once and reports nothing)."""
        return not self.is_test

    @property
    def keeps_disk_data(self) -> bool:
        """Whether volumes hold bytes that streams carry in and out
        (``vol.upload``, ``vol.download``). The test driver keeps only each
        volume's name, format and sizes, and has no volume streams."""
        return not self.is_test

    @property
    def streams_disks(self) -> bool:
        """Whether the disk data path can move volume bytes here: the
        volumes keep data, and the daemon streams it keeping holes
        (libvirt >= 4.4)."""
        return self.keeps_disk_data and self.libvirt_version >= SPARSE_STREAMS_SINCE

    @property
    def resizes_disks(self) -> bool:
        """Whether volumes and a running domain's disks can grow
        (``vol.resize``, ``blockResize``): not on the test driver, which
        implements neither."""
        return not self.is_test

    @classmethod
    def read(cls, conn: libvirt.virConnect) -> HostInfo:
        caps = parse_xml(conn.getCapabilities())
        host_arch = caps.findtext("host/cpu/arch") or ""
        guests: dict[str, ET.Element] = {}
        for guest in caps.findall("guest"):
            arch = guest.find("arch")
            if guest.findtext("os_type") == "hvm" and arch is not None:
                guests.setdefault(arch.get("name", ""), arch)
        if not guests:
            for guest in caps.findall("guest"):
                arch = guest.find("arch")
                if arch is not None:
                    guests.setdefault(arch.get("name", ""), arch)
        chosen = host_arch if host_arch in guests else ("x86_64" if "x86_64" in guests else next(iter(guests), ""))
        arch_el = guests.get(chosen)
        types: list[str] = []
        machines: list[str] = []
        aliases: dict[str, str] = {}
        if arch_el is not None:
            for dom in arch_el.findall("domain"):
                if dom.get("type") and dom.get("type") not in types:
                    types.append(dom.get("type", ""))
            for el in arch_el.iter("machine"):
                name = (el.text or "").strip()
                canonical = el.get("canonical")
                if canonical:
                    aliases[name] = canonical
                elif name and name not in machines:
                    machines.append(name)
        return cls(
            driver=conn.getType(),
            hostname=_hostname(conn),
            libvirt_version=conn.getLibVersion(),
            hypervisor_version=conn.getVersion(),
            arch=chosen,
            domain_types=tuple(types),
            machines=tuple(machines),
            aliases=aliases,
        )

    # -- machine types ----------------------------------------------------------

    def canonical_machine(self, name: str) -> str:
        return self.aliases.get(name, name)

    @cached_property
    def machine_families(self) -> dict[str, list[tuple[tuple[int, ...], str]]]:
        """``pc-q35`` -> [((7, 2), 'pc-q35-7.2'), ...] sorted by version
        (families as :func:`machine_version` names them)."""
        families: dict[str, list[tuple[tuple[int, ...], str]]] = {}
        for name in self.machines:
            parsed = machine_version(name)
            if parsed is not None:
                families.setdefault(parsed[0], []).append((parsed[1], name))
        for entries in families.values():
            entries.sort()
        return families


#: Ubuntu's QEMU names machine types after its releases (``pc-q35-noble``):
#: the release each codename stands for, so they order like versions.
UBUNTU_RELEASES = {
    "bionic": (18, 4),
    "cosmic": (18, 10),
    "disco": (19, 4),
    "eoan": (19, 10),
    "focal": (20, 4),
    "groovy": (20, 10),
    "hirsute": (21, 4),
    "impish": (21, 10),
    "jammy": (22, 4),
    "kinetic": (22, 10),
    "lunar": (23, 4),
    "mantic": (23, 10),
    "noble": (24, 4),
    "oracular": (24, 10),
    "plucky": (25, 4),
    "questing": (25, 10),
}
_UPSTREAM = re.compile(r"(.+?)-(\d+(?:\.\d+)*)")
_RHEL = re.compile(r"(.+?)-rhel(\d+(?:\.\d+)*)")
_UBUNTU = re.compile(r"(.+?)-([a-z]+)(-hpb)?")


def machine_version(name: str) -> tuple[str, tuple[int, ...]] | None:
    """A versioned machine type's family and version, None for an
    unversioned one (``q35``, ``ubuntu``).

    - QEMU's own: ``pc-q35-7.2`` is family ``pc-q35``, version (7, 2);
    - RHEL's: ``pc-q35-rhel9.2.0`` is family ``pc-q35-rhel``, version
      (9, 2, 0) — RHEL numbers its machine types after its own releases;
    - Ubuntu's: ``pc-q35-noble`` is family ``pc-q35-ubuntu``, version
      (24, 4); ``pc-q35-jammy-hpb`` (host physical address bits) is family
      ``pc-q35-ubuntu-hpb``.
    """
    if m := _UPSTREAM.fullmatch(name):
        return m.group(1), tuple(int(p) for p in m.group(2).split("."))
    if m := _RHEL.fullmatch(name):
        return f"{m.group(1)}-rhel", tuple(int(p) for p in m.group(2).split("."))
    if (m := _UBUNTU.fullmatch(name)) and m.group(2) in UBUNTU_RELEASES:
        return f"{m.group(1)}-ubuntu{m.group(3) or ''}", UBUNTU_RELEASES[m.group(2)]
    return None


def _hostname(conn: libvirt.virConnect) -> str:
    with errors.ignoring(errors.any_error):  # only shown by Validate
        return str(conn.getHostname())
    return ""


def version_text(number: int) -> str:
    """libvirt's version number (9000000) as text (9.0.0)."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


#: libvirt version from which ``<os firmware='efi'>`` takes ``<firmware><feature
#: .../>`` (secure-boot, enrolled-keys) to steer firmware auto-selection (7.2.0).
FIRMWARE_FEATURES_SINCE = 7_002_000
#: libvirt version from which the features alone select Secure Boot firmware;
#: before it (7.2-8.5) the loader must also say ``secure='yes'`` (8.6.0).
SECURE_BY_FEATURES_SINCE = 8_006_000


@dataclass(frozen=True)
class Uefi:
    """What a host's domain capabilities say of UEFI for one machine type."""

    efi: bool
    """UEFI firmware can be auto-selected (``firmware`` enum lists ``efi``)."""
    secure_boot: bool
    """A Secure Boot loader is among them (loader ``secure`` enum lists ``yes``)."""


def uefi_selection(libvirt_version: int, secure_boot: bool) -> tuple[bool, bool]:
    """How a UEFI domain asks a daemon of this version for its firmware:
    (state the secure-boot and enrolled-keys features, add ``<loader
    secure='yes'/>``). Features from 7.2; the secure loader too for Secure
    Boot before 8.6 (libvirt's kbase secureboot.rst)."""
    features = libvirt_version >= FIRMWARE_FEATURES_SINCE
    return features, features and secure_boot and libvirt_version < SECURE_BY_FEATURES_SINCE


def uefi(conn: libvirt.virConnect, host: HostInfo, domain_type: str, machine: str = "") -> Uefi | None:
    """UEFI on this host for ``machine`` (None: the host cannot say, as the
    test driver, which has no domain capabilities). Secure Boot needs SMM,
    which some machine types lack (``pc`` has it only with newer QEMU), so
    the machine type matters."""
    text = ""
    with errors.ignoring(errors.any_error):
        text = conn.getDomainCapabilities(None, host.arch, machine or None, domain_type, 0)
    if not text:
        return None
    caps = parse_xml(text)
    firmware = {v.text for v in caps.findall("os/enum[@name='firmware']/value")}
    secure = {v.text for v in caps.findall("os/loader/enum[@name='secure']/value")}
    return Uefi(efi="efi" in firmware, secure_boot="yes" in secure)


# -- domain type --------------------------------------------------------------


def choose_domain_type(conn: libvirt.virConnect, host: HostInfo, setting: str) -> str:
    """The ``<domain type=...>`` of new VMs, per the setting (see module doc)."""
    if host.is_test:
        return "test"
    if setting != "auto":
        return setting
    if "kvm" not in host.domain_types:
        return "qemu"
    if host.arch not in ("x86_64", "i686"):
        return "kvm"
    return "kvm" if kvm_works(conn, host) else "qemu"


def kvm_works(conn: libvirt.virConnect, host: HostInfo) -> bool:
    """Whether a probe guest runs faster under KVM than emulated."""
    emulated: float | None = None
    kvm: float | None = None
    probed = False
    with errors.best_effort("probe KVM with a guest; trusting the host's offer of KVM"):
        emulated = _probe(conn, host, "qemu", PROBE_LIMIT_SECONDS)
        if emulated is not None:
            kvm = _probe(conn, host, "kvm", max(1.0, 1.5 * emulated))
        probed = True
    if not probed:
        return True
    if emulated is None:
        log.warning("KVM probe: the emulated probe guest did not finish; trusting KVM")
        return True
    budget = max(1.0, 1.5 * emulated)
    if kvm is None:
        log.warning(
            "KVM is offered but a probe guest did not finish within %.1fs under KVM (%.2fs emulated): using QEMU emulation",
            budget,
            emulated,
        )
        return False
    log.info("KVM works (probe %.2fs, emulated %.2fs)", kvm, emulated)
    return True


def _probe(conn: libvirt.virConnect, host: HostInfo, domain_type: str, limit: float) -> float | None:
    """Seconds a transient diskless guest of this type takes to end by
    itself (its firmware finds nothing to boot), or None past ``limit``."""
    name = f"vmp-kvm-probe-{uuid.uuid4().hex[:8]}"
    xml = f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{PROBE_MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os><type arch='{host.arch}'>hvm</type><bios rebootTimeout='0'/></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices><memballoon model='none'/></devices>
</domain>"""
    start = time.monotonic()
    dom = conn.createXML(xml, 0)
    try:
        while time.monotonic() - start < limit:
            active = False  # a transient domain that ended is gone
            with errors.ignoring(errors.is_missing_domain):
                active = dom.isActive()
            if not active:
                return time.monotonic() - start
            time.sleep(0.05)
        return None
    finally:
        with errors.ignoring(errors.any_error):  # it ended by itself, and is gone
            dom.destroy()
