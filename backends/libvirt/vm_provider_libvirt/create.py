"""Create: plan a VM from a CreateSpec, then make its volumes and define it.

Everything is checked before anything is made (name, pool, networks, image,
volume names), and a failure while making it removes what was made. Create
is idempotent by name for domains carrying our mark.

Disks:

- the root disk comes from ``image_json``: ``TemplateName`` (a volume in the
  pool, or ``pool/volume``) becomes a qcow2 overlay on it
  (``settings.template_clone = "linked"``) or a full copy; ``Path`` (a
  volume as ``pool/volume`` or its path) is copied; ``URL`` is downloaded
  (checksum-verified) by the disk data path (:class:`FetchImage`, given by
  the backend): with a checksum into a
  shared cached base ``vmp-image-<sha>`` and overlaid, else straight into
  the VM's own volume, which keeps the image's format (a raw image or an
  ISO stays raw; a pool holding raw only gets it converted to raw).
  ``DiskDefaults.SizeGiB`` makes the volume that large: up front where the
  data allows (copies, raw images), by growing it after otherwise (a qcow2
  image, in a file pool). Every disk is attached in the format its volume
  really has, the way the volume is stored (:func:`storage.attach`).
- ``disks_json`` adds blank volumes (thin/qcow2, thick, raw). Without an
  image the first of them is the boot disk; with neither, one blank disk of
  ``DiskDefaults.SizeGiB`` (or ``settings.default_disk_gib``).

Copies and downloads run as a task; overlays and blank volumes take
milliseconds and finish within the call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import libvirt

from provider_core import (
    AlreadyExists,
    CreateSpec,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Outcome,
    Unimplemented,
)
from provider_core.specs import Firmware, NetworkAttachment, VMClass, VMImage
from provider_core.urls import redact

from . import cidata, cloudinit, domxml, errors, marks, networks, storage
from .domxml import DomainDisk, DomainPlan
from .host import uefi, uefi_selection, version_text
from .marks import Mark, VolumeRef
from .session import Session
from .settings import LibvirtSettings

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
EXTRA_KEYS = ("kernel", "initrd", "cmdline", "machine", "cpu_mode")
CPU_MODES = ("host-model", "host-passthrough", "maximum")
GIB = storage.GIB


class FetchImage(Protocol):
    """Downloads an image URL into a new volume of a pool, verified, and
    returns the volume (the disk data path's
    :meth:`~vm_provider_libvirt.datapath.DiskTransfers.fetch_image`)."""

    def __call__(self, image: VMImage, pool: libvirt.virStoragePool, name: str, capacity: int = 0) -> libvirt.virStorageVol: ...


# -- pieces of a plan -------------------------------------------------------------


@dataclass(frozen=True)
class Extra:
    """The ``libvirt.*`` keys of class_json ExtraConfig."""

    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    machine: str = ""
    cpu_mode: str = ""


def extra_config(vm_class: VMClass, field: str = "class_json.ExtraConfig") -> Extra:
    values: dict[str, str] = {}
    for key, value in (vm_class.extra_config or {}).items():
        if not key.startswith("libvirt."):
            continue  # another backend's setting
        name = key.removeprefix("libvirt.")
        if name not in EXTRA_KEYS:
            known = ", ".join(f"libvirt.{k}" for k in EXTRA_KEYS)
            raise InvalidArgument.field(f"{field}.{key}", f"unknown libvirt setting (known: {known})")
        values[name] = value
    extra = Extra(**values)
    if (extra.initrd or extra.cmdline) and not extra.kernel:
        raise InvalidArgument.field(f"{field}.libvirt.kernel", "is required with libvirt.initrd or libvirt.cmdline")
    for key in ("kernel", "initrd"):
        path = getattr(extra, key)
        if path and not path.startswith("/"):
            raise InvalidArgument.field(f"{field}.libvirt.{key}", "must be an absolute path on the libvirt host")
    if extra.cpu_mode and extra.cpu_mode not in CPU_MODES:
        raise InvalidArgument.field(f"{field}.libvirt.cpu_mode", f"must be one of {', '.join(CPU_MODES)}")
    return extra


@dataclass(frozen=True)
class Resources:
    cpu: int
    max_cpu: int
    memory_mib: int
    max_memory_mib: int


def resources(s: LibvirtSettings, vm_class: VMClass) -> Resources:
    cpu = vm_class.cpu or s.default_cpu
    memory = vm_class.memory_mib or s.default_memory_mib
    max_cpu = max(s.max_vcpus or max(2 * cpu, 4), cpu)
    return Resources(cpu, max_cpu, memory, max(int(memory * s.max_memory_factor), memory))


def machine_type(session: Session, extra: Extra) -> str:
    """The machine of a new VM as a versioned name (pc-q35-7.2), so that
    HardwareUpgrade has something to move from."""
    host = session.host()
    wanted = extra.machine or session.settings.machine
    if not wanted and host.is_qemu and host.arch in ("x86_64", "i686"):
        wanted = "q35"
    if not wanted:
        return ""
    known = set(host.machines) | set(host.aliases)
    if host.machines and wanted not in known:
        field = "class_json.ExtraConfig.libvirt.machine" if extra.machine else "machine"
        raise InvalidArgument.field(field, f"machine type {wanted!r} is not offered by this host")
    return host.canonical_machine(wanted)


@dataclass(frozen=True)
class FirmwarePlan:
    """The firmware part of a new domain (see :func:`firmware`)."""

    kind: str
    """bios or efi."""
    secure_boot: bool
    tpm: bool
    features: bool
    """State secure-boot and enrolled-keys for auto-selection (libvirt >= 7.2)."""
    loader_secure: bool
    """Also ``<loader secure='yes'/>`` (Secure Boot on libvirt 7.2-8.5)."""


def firmware(session: Session, vm_class: VMClass, machine: str) -> FirmwarePlan:
    """BIOS or UEFI, Secure Boot and TPM of a new VM, decided from the
    daemon's version and its domain capabilities for ``machine``.

    UEFI is asked for by ``<os firmware='efi'>``, libvirt picking the
    firmware files. A plain UEFI VM states secure-boot and enrolled-keys
    off, so auto-selection never picks Secure Boot firmware (which would
    refuse unsigned guests); a Secure Boot VM states both on, and on
    libvirt 7.2-8.5 also ``<loader secure='yes'/>`` (libvirt's kbase
    secureboot.rst). libvirt before 7.2 has no firmware features: UEFI
    takes what auto-selection picks and Secure Boot is refused."""
    security = vm_class.security_profile
    secure = bool(security and security.secure_boot)
    tpm = bool(security and security.tpm_enabled)
    efi = vm_class.firmware is Firmware.UEFI or secure
    if not efi:
        return FirmwarePlan("bios", secure_boot=False, tpm=tpm, features=False, loader_secure=False)
    host = session.host()
    offer = uefi(session.conn(), host, session.domain_type(), machine)
    if offer is not None and not offer.efi:
        raise Unimplemented(
            f"class_json.Firmware: this host offers no UEFI firmware for machine type {machine or 'default'!r} "
            "(domain capabilities list no efi firmware; install OVMF, or use a q35 machine)"
        )
    features, loader_secure = uefi_selection(host.libvirt_version, secure)
    if secure:
        field = "class_json.SecurityProfile.SecureBoot"
        if not features:
            raise Unimplemented(
                f"{field}: Secure Boot needs libvirt 7.2 or newer to select its firmware "
                f"(this host runs libvirt {version_text(host.libvirt_version)})"
            )
        if offer is not None and not offer.secure_boot:
            raise Unimplemented(
                f"{field}: this host offers no Secure Boot UEFI firmware for machine type {machine or 'default'!r} "
                "(domain capabilities list no secure loader; install OVMF with Secure Boot, or use a q35 machine)"
            )
    return FirmwarePlan("efi", secure_boot=secure, tpm=tpm, features=features, loader_secure=loader_secure)


def disk_target(index: int) -> str:
    """vda, vdb, ..., vdz, vdaa, ..."""
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return f"vd{letters}"


def disk_format(kind: str, pool_holds_files: bool, field: str) -> tuple[str, bool]:
    """(format, preallocate) of a disks_json Type."""
    if kind not in ("", "thin", "thick", "qcow2", "raw"):
        raise InvalidArgument.field(field, "must be one of thin, thick, qcow2, raw")
    fmt = "raw" if kind == "raw" or not pool_holds_files else "qcow2"
    return fmt, kind == "thick"


@dataclass
class DiskJob:
    """A volume to make for a disk of the new VM."""

    target: str
    ref: VolumeRef
    fmt: str
    """Format the volume is made in ("" for a download: the image's own)."""
    make: Callable[[], libvirt.virStorageVol]
    boot: bool = False
    slow: bool = False


def spec_hash(spec: CreateSpec) -> str:
    digest = hashlib.sha256(spec.model_dump_json(exclude={"user_data", "meta_data"}).encode())
    digest.update(b"\0" + spec.user_data + b"\0" + spec.meta_data)
    return digest.hexdigest()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_name(name: str, field: str = "name") -> None:
    if not NAME_RE.match(name):
        raise InvalidArgument.field(field, "must be 1-63 letters, digits, '.', '_', '+' or '-', starting with a letter or digit")


def existing_id(session: Session, name: str) -> str | None:
    """The id of our VM of that name; AlreadyExists for a foreign one."""
    dom = session.find_domain(name)
    if dom is None:
        return None
    with session.translated(f"VM {name!r}"):
        root = domxml.parse(dom.XMLDesc(0))
        if marks.read(root) is None:
            raise AlreadyExists(f"a VM named {name!r} exists and was not created by vm-provider")
        return str(dom.UUIDString())


def placement_pool(session: Session, datastore: str, field: str = "placement_json.Datastore") -> libvirt.virStoragePool:
    try:
        return session.pool(datastore)
    except NotFound as exc:
        if datastore:
            raise InvalidArgument.field(field, str(exc)) from exc
        raise FailedPrecondition(f"{exc} (setting 'pool'); create it or name one in placement_json Datastore") from exc


def check_free(pool: libvirt.virStoragePool, names: list[str]) -> None:
    for name in names:
        if storage.lookup(pool, name) is not None:
            raise AlreadyExists(f"volume {name!r} already exists in pool {pool.name()!r}; remove it or choose another VM name")


# -- disks from the spec -------------------------------------------------------------


def root_disk(
    session: Session, spec: CreateSpec, pool: libvirt.virStoragePool, fetch: FetchImage
) -> tuple[DiskJob | None, str, str]:
    """The job making the root disk from image_json, and the source's kind
    and reference for our mark."""
    image = spec.image
    kind = image.source
    if kind == "blank":
        return None, "", ""
    pool_facts = storage.pool_info(pool)
    files = pool_facts.kind.files
    size = (spec.vm_class.disk_defaults.size_gib or 0) * GIB if spec.vm_class.disk_defaults else 0
    if kind == "url":
        suffix = "qcow2" if files and (image.checksum or image.format in ("qcow2", "vmdk")) else "img"
        ref = VolumeRef(pool=pool.name(), name=f"{spec.name}-vda.{suffix}", role="root", target="vda", spec="root")
        return _url_root(session, image, pool, ref, size, fetch=fetch), "url", redact(image.url)
    name = f"{spec.name}-vda.{'qcow2' if files else 'img'}"
    ref = VolumeRef(pool=pool.name(), name=name, role="root", target="vda", spec="root")
    field = "image_json.TemplateName" if kind == "template" else "image_json.Path"
    wanted = image.template_name or image.path
    base = storage.find(session.conn(), wanted, pool)
    if base is None:
        raise FailedPrecondition(f"{field}: no volume {wanted!r} in pool {pool.name()!r} (prepare the image first)")
    info = storage.describe(base)
    if size and size < info.capacity:
        raise InvalidArgument.field(
            "class_json.DiskDefaults.SizeGiB", f"{size // GIB} GiB is smaller than the image ({info.capacity / GIB:.1f} GiB)"
        )
    source_ref = f"{info.pool}/{info.name}"
    if kind == "template" and files and session.settings.template_clone == "linked":
        return DiskJob("vda", ref, "qcow2", lambda: storage.create_overlay(pool, name, info, size), boot=True), kind, source_ref
    pool_facts.need(f"{field}: copying {wanted!r}", "copy")
    fmt = pool_facts.volume_format("qcow2")
    return DiskJob("vda", ref, fmt, lambda: storage.copy(pool, name, base, fmt, size), boot=True, slow=True), kind, source_ref


def _url_root(
    session: Session, image: VMImage, pool: libvirt.virStoragePool, ref: VolumeRef, size: int, *, fetch: FetchImage
) -> DiskJob:
    """The root disk from an image URL: with a checksum (on a file pool) a
    qcow2 overlay on the shared cached image; else the downloaded image
    itself, in its own format on a file pool (qcow2 or raw: an ISO is raw,
    a vmdk is stored as qcow2), named ``.qcow2`` only when the image says it
    is one; a pool holding raw only gets it converted to raw. It is made at
    ``size`` up front. The disk's format is read from the volume once it is
    made."""
    storage.pool_info(pool).need("image_json.URL: storing the downloaded image", "upload")
    host = session.host()
    if not host.streams_disks:
        raise Unimplemented(
            f"image_json.URL: downloading images needs volume streams, "
            f"which libvirt's {host.driver.lower()} driver does not offer"
        )

    def make() -> libvirt.virStorageVol:
        if not image.checksum or not storage.holds_files(pool):
            return fetch(image, pool, ref.name, size)
        base = fetch(image, pool, f"vmp-image-{image.checksum[:16]}")
        return storage.create_overlay(pool, ref.name, storage.describe(base), size)

    return DiskJob("vda", ref, "", make, boot=True, slow=True)


def data_disks(spec: CreateSpec, pool: libvirt.virStoragePool, first: int) -> list[DiskJob]:
    files = storage.holds_files(pool)  # else raw: thin, thick and qcow2 all become raw volumes
    jobs: list[DiskJob] = []
    for i, disk in enumerate(spec.disks):
        field = f"disks_json[{i}].Type"
        fmt, thick = disk_format(disk.type, files, field)
        target = disk_target(first + i)
        name = f"{spec.name}-{disk.name or target}.{'qcow2' if fmt == 'qcow2' else 'img'}"
        ref = VolumeRef(pool=pool.name(), name=name, role="data", target=target, spec=str(i))
        size = disk.size_gib * GIB

        def make(name: str = name, size: int = size, fmt: str = fmt, thick: bool = thick) -> libvirt.virStorageVol:
            return storage.create_blank(pool, name, size, fmt, thick)

        jobs.append(DiskJob(target, ref, fmt, make, boot=first + i == 0))
    return jobs


def blank_root(session: Session, spec: CreateSpec, pool: libvirt.virStoragePool) -> DiskJob:
    files = storage.holds_files(pool)
    defaults = spec.vm_class.disk_defaults
    fmt, thick = disk_format(defaults.type if defaults else "", files, "class_json.DiskDefaults.Type")
    size = ((defaults.size_gib if defaults else None) or session.settings.default_disk_gib) * GIB
    name = f"{spec.name}-vda.{'qcow2' if fmt == 'qcow2' else 'img'}"
    ref = VolumeRef(pool=pool.name(), name=name, role="root", target="vda", spec="root")
    return DiskJob("vda", ref, fmt, lambda: storage.create_blank(pool, name, size, fmt, thick), boot=True)


# -- making it -------------------------------------------------------------------------


def make_disks(jobs: list[DiskJob], made: list[libvirt.virStorageVol]) -> list[DomainDisk]:
    """Run the volume jobs; every volume made goes into ``made`` at once
    (for the caller's rollback)."""
    disks = []
    for job in jobs:
        vol = job.make()
        made.append(vol)
        info = storage.describe(vol)
        source = storage.attach(vol)
        disks.append(
            DomainDisk(
                target=job.target,
                path=source.path,
                format=info.format,  # what the volume really holds (a downloaded image may be raw)
                boot=job.boot,
                bus="virtio",
                source_type=source.type,
                network=source.network,
            )
        )
    return disks


def rollback(made: list[libvirt.virStorageVol]) -> None:
    """Remove the volumes made before a failure (best effort)."""
    for vol in reversed(made):
        with errors.best_effort(f"remove volume {vol.name()} after a failure"):
            storage.delete(vol)


def wants_seed(user_data: bytes, meta_data: bytes, attachments: list[NetworkAttachment]) -> bool:
    return bool(user_data or meta_data or any(na.static_ip for na in attachments))


def create(session: Session, spec: CreateSpec, fetch: FetchImage) -> Outcome[str]:
    check_name(spec.name)
    found = existing_id(session, spec.name)
    if found is not None:
        return Outcome.done(found)
    with session.translated(f"creating VM {spec.name!r}"):
        host = session.host()
        domain_type = session.domain_type()
        pool = placement_pool(session, spec.placement.datastore)
        storage.pool_info(pool).need(f"creating the disks of VM {spec.name!r}", "create", "names")
        res = resources(session.settings, spec.vm_class)
        extra = extra_config(spec.vm_class)
        machine = machine_type(session, extra)
        fw = firmware(session, spec.vm_class, machine)
        nics = networks.plan(session, spec.networks)
        root, source_kind, source_ref = root_disk(session, spec, pool, fetch)
        if root is None and not spec.disks:
            root = blank_root(session, spec, pool)
        jobs = ([root] if root else []) + data_disks(spec, pool, 1 if root else 0)
        seed_pool = cidata.pool_for(session, pool) if wants_seed(spec.user_data, spec.meta_data, spec.networks) else None
        check_free(pool, [j.ref.name for j in jobs])
        if seed_pool is not None:
            check_free(seed_pool, [cidata.volume_name(spec.name)])
    vm_uuid = str(uuid.uuid4())
    mark = Mark(
        created=now(),
        spec_hash=spec_hash(spec),
        source_kind=source_kind,
        source_ref=source_ref,
        tags=tuple(spec.tags),
        volumes=tuple(j.ref for j in jobs),
        networks_json=_networks_json(spec.networks),
    )

    def build() -> None:
        made: list[libvirt.virStorageVol] = []
        try:
            with session.translated(f"creating VM {spec.name!r}"):
                disks = make_disks(jobs, made)
                volumes = mark.volumes
                if seed_pool is not None:
                    config = cloudinit.network_config_v2(spec.networks, [n.mac for n in nics])
                    vol, ref, cdrom = cidata.make(
                        session, seed_pool, spec.name, user_data=spec.user_data, meta_data=spec.meta_data, network_config=config
                    )
                    made.append(vol)
                    disks.append(cdrom)
                    volumes = (*volumes, ref)
                plan = DomainPlan(
                    name=spec.name,
                    uuid=vm_uuid,
                    domain_type=domain_type,
                    arch=host.arch,
                    memory_mib=res.memory_mib,
                    max_memory_mib=res.max_memory_mib,
                    vcpus=res.cpu,
                    max_vcpus=res.max_cpu,
                    mark=mark.with_volumes(volumes),
                    machine=machine,
                    firmware=fw.kind,
                    secure_boot=fw.secure_boot,
                    firmware_features=fw.features,
                    loader_secure=fw.loader_secure,
                    tpm=fw.tpm,
                    kernel=extra.kernel,
                    initrd=extra.initrd,
                    cmdline=extra.cmdline,
                    cpu_mode=extra.cpu_mode or ("host-model" if domain_type == "kvm" else ""),
                    disks=tuple(disks),
                    nics=tuple(nics),
                    graphics=session.settings.graphics,
                    graphics_listen=session.settings.graphics_listen,
                    serial_log=serial_log(session, spec.name),
                )
                session.conn().defineXML(domxml.build(plan))
        except BaseException:
            rollback(made)
            raise
        log.info("created VM %s (%s)", spec.name, vm_uuid)

    if any(j.slow for j in jobs):
        return Outcome.later(vm_uuid, build)
    build()
    return Outcome.done(vm_uuid)


def serial_log(session: Session, name: str) -> str:
    directory = session.settings.serial_log_dir
    return str(directory / f"{name}.log") if directory else ""


def _networks_json(attachments: list[NetworkAttachment]) -> str:
    return json.dumps([na.model_dump(mode="json", exclude_defaults=True) for na in attachments]) if attachments else ""
