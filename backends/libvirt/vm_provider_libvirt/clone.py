"""Clone: a new domain from a stopped VM's definition and disks.

The clone gets its own name, UUID, MACs and volumes, class_json's CPU and
memory when given, and a new cloud-init seed (a new ``instance-id``, so
cloud-init runs again) when the source had one or customize_json asks for
something: ``local-hostname`` from Hostname (and Domain), a network-config
from Networks (else the source's networks_json) matched to the new MACs,
user-data from UserData (or, when that is empty and TimeZone is given, a
``#cloud-config`` setting the time zone). Tags come from customize_json,
else the source's. Idempotent by target name.

The source must be stopped: its disks must not change while they are
copied or shared.

- Full clone: each disk volume is copied (``createXMLFrom``: flattened,
  independent of the source). Runs as a task.
- Linked clone: the source's current disk volumes are frozen as read-only
  bases; the source continues on new qcow2 overlays of them and the clone
  gets its own overlays (copy-on-write, milliseconds). Both VMs list the
  bases in their mark (the clone also those beneath them, from earlier
  linked clones of the source); a base is deleted with the last VM backed
  by it, through any number of layers. A
  source with snapshots cannot be frozen (its internal snapshots would stay
  behind in the base): delete them first, or clone in full. Every linked
  clone adds one layer to the source's backing chain.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from typing import Any

import libvirt

from provider_core import CloneSpec, FailedPrecondition, Outcome
from provider_core.specs import Customization, NetworkAttachment

from . import cidata, cloudinit, domxml, errors, marks, networks, power, storage
from .create import check_free, check_name, existing_id, now, placement_pool, resources, rollback, serial_log
from .disksource import DiskSource
from .marks import Mark, VolumeRef
from .session import Session

log = logging.getLogger(__name__)


@dataclass
class DiskCopy:
    """One disk of the source and how the clone gets it."""

    element: ET.Element
    """The clone's ``<disk>`` element (its source path is set once made)."""
    target: str
    source: libvirt.virStorageVol
    info: storage.VolumeInfo
    pool: libvirt.virStoragePool
    name: str
    ref: VolumeRef | None
    """The source's mark entry for this volume."""


@dataclass
class ClonePlan:
    """Everything checked before a clone is made."""

    src: libvirt.virDomain
    src_xml: str
    src_mark: Mark
    root: ET.Element
    """The clone's definition, edited as it is made."""
    uuid: str
    disks: list[DiskCopy]
    macs: list[str]
    seed: bool
    seed_pool: libvirt.virStoragePool
    attachments: list[NetworkAttachment]

    @property
    def src_name(self) -> str:
        return str(self.src.name())


def clone(session: Session, spec: CloneSpec) -> Outcome[str]:
    check_name(spec.target_name, "target_name")
    found = existing_id(session, spec.target_name)
    if found is not None:
        return Outcome.done(found)
    plan = _plan(session, spec)
    if spec.linked:
        _make(session, spec, plan)
        return Outcome.done(plan.uuid)
    return Outcome.later(plan.uuid, lambda: _make(session, spec, plan))


def _plan(session: Session, spec: CloneSpec) -> ClonePlan:
    src = session.lookup(spec.source_vm_id)
    src_name = src.name()
    with session.translated(f"cloning VM {src_name!r} to {spec.target_name!r}"):
        if src.state()[0] not in power.STOPPED:
            raise FailedPrecondition(
                f"VM {src_name!r} is running: shut it down to clone it (its disks must not change meanwhile)"
            )
        src_xml = src.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        src_root = domxml.parse(src_xml)
        src_mark = marks.read(src_root) or Mark()
        if spec.linked and src.snapshotNum(0):
            raise FailedPrecondition(
                f"VM {src_name!r} has snapshots: a linked clone would freeze its disks under them; delete them or clone in full"
            )
        root = copy.deepcopy(src_root)
        disks = _plan_disks(session, spec, root, src_mark)
        seed = bool(src_mark.volume_for(cidata.TARGET)) or _customizes(spec.customize)
        seed_pool = placement_pool(session, spec.placement.datastore) if spec.placement.datastore else session.pool()
        if seed:
            seed_pool = cidata.pool_for(session, seed_pool)
        _check_free(disks, seed_pool, seed, spec.target_name)
        plan = ClonePlan(
            src=src,
            src_xml=src_xml,
            src_mark=src_mark,
            root=root,
            uuid=str(uuid.uuid4()),
            disks=disks,
            macs=_new_macs(session, root),
            seed=seed,
            seed_pool=seed_pool,
            attachments=_attachments(spec.customize, src_mark),
        )
        _retarget(session, root, spec, plan.uuid)
    return plan


def _make(session: Session, spec: CloneSpec, plan: ClonePlan) -> None:
    made: list[libvirt.virStorageVol] = []
    redefined = False
    try:
        with session.translated(f"cloning VM {plan.src_name!r} to {spec.target_name!r}"):
            volumes: list[VolumeRef] = []
            src_volumes = list(plan.src_mark.volumes)
            overlays: dict[str, str] = {}
            for disk in plan.disks:
                if spec.linked:
                    overlays[disk.target] = _freeze(disk, plan.src_name, made, src_volumes)
                    vol = storage.create_overlay(disk.pool, disk.name, disk.info)
                    volumes.append(VolumeRef(disk.info.pool, disk.info.name, "base"))
                else:
                    vol = storage.copy(disk.pool, disk.name, disk.source, "qcow2")
                made.append(vol)
                # The copy's own format and kind: a raw disk copied into a file
                # pool becomes qcow2, and QEMU must read it as such.
                _set_source(disk.element, storage.attach(vol), storage.describe(vol).format)
                role, spec_of = (disk.ref.role, disk.ref.spec) if disk.ref and disk.ref.role != "base" else ("data", "")
                volumes.append(VolumeRef(disk.pool.name(), disk.name, role, disk.target, spec_of))
            if spec.linked:
                # The bases beneath the ones frozen now (the source was a linked
                # clone's source before): whichever of these VMs goes last
                # deletes them.
                volumes.extend(v for v in plan.src_mark.volumes if v.role == "base" and v not in volumes)
            _drop_seed(plan.root)
            if plan.seed:
                vol, ref, cdrom = _seed(session, plan.seed_pool, spec, plan.attachments, plan.macs)
                made.append(vol)
                volumes.append(ref)
                _add_cdrom(plan.root, cdrom)
            src_uuid = plan.src.UUIDString()
            mark = Mark(
                created=now(),
                spec_hash=plan.src_mark.spec_hash,
                source_kind="clone",
                source_ref=src_uuid,
                tags=tuple(spec.customize.tags) or plan.src_mark.tags,
                volumes=tuple(volumes),
                networks_json=plan.src_mark.networks_json,
                clone_of=src_uuid,
            )
            marks.write(plan.root, mark)
            if spec.linked:
                _redefine_source(session, plan.src_xml, overlays, plan.src_mark, src_volumes)
                redefined = True
            session.conn().defineXML(ET.tostring(plan.root, encoding="unicode"))
    except BaseException:
        if redefined:
            _restore_source(session, plan.src_xml)
        rollback(made)
        raise
    log.info("cloned VM %s to %s (%s, %s)", plan.src_name, spec.target_name, plan.uuid, "linked" if spec.linked else "full")


# -- planning -----------------------------------------------------------------------------


def _plan_disks(session: Session, spec: CloneSpec, root: ET.Element, mark: Mark) -> list[DiskCopy]:
    out: list[DiskCopy] = []
    datastore = placement_pool(session, spec.placement.datastore) if spec.placement.datastore else None
    for el in root.findall("devices/disk"):
        if el.get("device", "disk") == "cdrom":
            continue
        target_el = el.find("target")
        target = target_el.get("dev", "") if target_el is not None else ""
        path = domxml.source_path(el)  # a file, a device, or a network volume's name (rbd/image)
        if not path:
            raise FailedPrecondition(f"disk {target} of the source has no file or device to clone")
        vol = session.volume_at(path)
        if vol is None:
            raise FailedPrecondition(f"disk {target} ({path}) is not a volume in a libvirt storage pool; it cannot be cloned")
        info = storage.describe(vol)
        src_pool = vol.storagePoolLookupByVolume()
        pool = datastore or src_pool
        facts = storage.pool_info(pool)
        if spec.linked:
            # The clone's overlay goes into ``pool``, the source's new one
            # into its disk's own pool: both must hold qcow2 files.
            for holder, held in ((pool, facts), (src_pool, storage.pool_info(src_pool))):
                if not held.kind.files:
                    raise FailedPrecondition(
                        f"disk {target}: pool {holder.name()!r} cannot hold qcow2 overlays "
                        f"(a libvirt {held.type} pool): clone in full"
                    )
        facts.need(f"cloning disk {target}", "create" if spec.linked else "copy", "names")
        ext = "qcow2" if facts.kind.files else "img"
        ref = next((v for v in mark.volumes if v.target == target), None)
        out.append(DiskCopy(el, target, vol, info, pool, f"{spec.target_name}-{target}.{ext}", ref))
    return out


def _check_free(disks: list[DiskCopy], seed_pool: libvirt.virStoragePool, seed: bool, name: str) -> None:
    for disk in disks:
        check_free(disk.pool, [disk.name])
    if seed:
        check_free(seed_pool, [cidata.volume_name(name)])


def _new_macs(session: Session, root: ET.Element) -> list[str]:
    """Give every NIC of the clone a new MAC no domain of the host uses."""
    interfaces = root.findall("devices/interface")
    macs = networks.new_macs(session, len(interfaces))
    for el, mac in zip(interfaces, macs, strict=True):
        mac_el = el.find("mac")
        if mac_el is None:
            mac_el = ET.SubElement(el, "mac")
        mac_el.set("address", mac)
        target = el.find("target")
        if target is not None:
            el.remove(target)
    return macs


def _retarget(session: Session, root: ET.Element, spec: CloneSpec, new_uuid: str) -> None:
    """Name, UUID, console log and class_json overrides of the clone."""
    root.find("name").text = spec.target_name  # type: ignore[union-attr]
    uuid_el = root.find("uuid")
    if uuid_el is None:
        uuid_el = ET.SubElement(root, "uuid")
    uuid_el.text = new_uuid
    root.attrib.pop("id", None)
    path = serial_log(session, spec.target_name)
    for serial in root.findall("devices/serial"):
        for log_el in serial.findall("log"):
            if path:
                log_el.set("file", path)
            else:
                serial.remove(log_el)  # never share the source's log file
    os_el = root.find("os")
    if os_el is not None:
        # Never share the source's UEFI variable store (a definition may name
        # its file): libvirt makes the clone its own from the firmware's
        # template.
        for nvram in os_el.findall("nvram"):
            os_el.remove(nvram)
    vm_class = spec.vm_class
    if vm_class.cpu or vm_class.memory_mib:
        res = resources(session.settings, vm_class)
        cpu_max = domxml.vcpus(root)[1]
        if vm_class.cpu:
            vcpu = root.find("vcpu")
            assert vcpu is not None
            vcpu.text = str(max(cpu_max, res.max_cpu) if vm_class.cpu > cpu_max else cpu_max)
            vcpu.set("current", str(vm_class.cpu))
        if vm_class.memory_mib:
            cur_max = domxml.memory_mib(root, "memory")
            _set_mib(root, "memory", max(cur_max, res.max_memory_mib))
            _set_mib(root, "currentMemory", vm_class.memory_mib)


def _set_mib(root: ET.Element, tag: str, mib: int) -> None:
    el = root.find(tag)
    if el is None:
        el = ET.SubElement(root, tag)
    el.text = str(mib)
    el.set("unit", "MiB")


def _set_source(disk: ET.Element, source: DiskSource, fmt: str) -> None:
    """Point a domain disk at ``source``, a volume holding ``fmt``."""
    source.write(disk)
    backing = disk.find("backingStore")
    if backing is not None:
        disk.remove(backing)
    driver = disk.find("driver")
    if driver is None:
        driver = ET.SubElement(disk, "driver", {"name": "qemu"})
    driver.set("type", fmt)


def _drop_seed(root: ET.Element) -> None:
    devices = root.find("devices")
    assert devices is not None
    for el in devices.findall("disk"):
        target = el.find("target")
        if el.get("device") == "cdrom" and target is not None and target.get("dev") == cidata.TARGET:
            devices.remove(el)


def _add_cdrom(root: ET.Element, cdrom: domxml.DomainDisk) -> None:
    devices = root.find("devices")
    assert devices is not None
    el = ET.Element("disk", device="cdrom")
    ET.SubElement(el, "driver", name="qemu", type="raw")
    DiskSource(cdrom.source_type, cdrom.path, cdrom.network).write(el)
    ET.SubElement(el, "target", dev=cdrom.target, bus=cdrom.bus)
    ET.SubElement(el, "readonly")
    last_disk = max((i for i, child in enumerate(devices) if child.tag == "disk"), default=-1)
    devices.insert(last_disk + 1, el)


# -- customization -------------------------------------------------------------------------


def _customizes(c: Customization) -> bool:
    return bool(c.hostname or c.networks or c.user_data or c.time_zone or c.domain)


def _attachments(c: Customization, src_mark: Mark) -> list[NetworkAttachment]:
    if c.networks:
        return [
            NetworkAttachment.model_validate(
                {
                    "ip_policy": "static" if n.ip_address else "dhcp",
                    "static_ip": n.ip_address,
                    "prefix": n.prefix if n.ip_address else 0,
                    "gateway": n.gateway,
                    "dns": ",".join(n.dns),
                },
                strict=False,
            )
            for n in c.networks
        ]
    if not src_mark.networks_json:
        return []
    items: list[dict[str, Any]] = json.loads(src_mark.networks_json)
    return [NetworkAttachment.model_validate({**item, "mac_address": ""}, strict=False) for item in items]


def _seed(
    session: Session, pool: libvirt.virStoragePool, spec: CloneSpec, attachments: list[NetworkAttachment], macs: list[str]
) -> tuple[libvirt.virStorageVol, VolumeRef, domxml.DomainDisk]:
    c = spec.customize
    user_data = c.user_data.encode()
    if not user_data and c.time_zone:
        user_data = f"#cloud-config\ntimezone: {json.dumps(c.time_zone)}\n".encode()
    hostname = c.hostname or spec.target_name
    if c.domain:
        hostname = f"{hostname}.{c.domain}"
    config = cloudinit.network_config_v2(attachments, macs) if attachments else None
    return cidata.make(
        session,
        pool,
        spec.target_name,
        user_data=user_data,
        meta_data=b"",
        network_config=config,
        instance_id=f"iid-{uuid.uuid4().hex}",
        hostname=hostname,
    )


# -- linked clones: freezing the source's disks ----------------------------------------------


def _freeze(disk: DiskCopy, src_name: str, made: list[libvirt.virStorageVol], src_volumes: list[VolumeRef]) -> str:
    """Give the source a new overlay on its current volume (which becomes a
    read-only base); record the swap in ``src_volumes``; return the
    overlay's path."""
    src_pool = disk.source.storagePoolLookupByVolume()
    name = f"{src_name}-{disk.target}-{uuid.uuid4().hex[:6]}.qcow2"
    overlay = storage.create_overlay(src_pool, name, disk.info)
    made.append(overlay)
    old = disk.ref or VolumeRef(disk.info.pool, disk.info.name, "data", disk.target)
    new = replace(old, pool=src_pool.name(), name=name)
    base = VolumeRef(disk.info.pool, disk.info.name, "base")
    src_volumes[:] = [v for v in src_volumes if not (v.pool == old.pool and v.name == old.name)] + [new, base]
    return str(overlay.path())


def _redefine_source(session: Session, src_xml: str, overlays: dict[str, str], src_mark: Mark, volumes: list[VolumeRef]) -> None:
    """Point the source's disks at their new overlays."""
    root = domxml.parse(src_xml)
    for el in root.findall("devices/disk"):
        target = el.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if dev in overlays:
            _set_source(el, DiskSource("file", overlays[dev]), "qcow2")
    if marks.read(root) is not None:
        marks.write(root, src_mark.with_volumes(tuple(volumes)))
    session.conn().defineXML(ET.tostring(root, encoding="unicode"))


def _restore_source(session: Session, src_xml: str) -> None:
    with errors.best_effort("restore the definition of the clone source"):
        session.conn().defineXML(src_xml)
