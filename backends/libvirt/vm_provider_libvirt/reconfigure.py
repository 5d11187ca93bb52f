"""Reconfigure: bring CPU, memory, disk sizes and tags to desired_json.

Online (running VM): vCPUs up to the maximum set at create time
(``setVcpusFlags`` LIVE|CONFIG: hot-plug), memory up to the domain's
``<memory>`` ceiling (``setMemoryFlags`` LIVE|CONFIG: the balloon), disks
grow with ``blockResize`` (QEMU grows the file or network image itself; a
block device is first grown with ``vol.resize``, then QEMU is told to take
its new size with ``VIR_DOMAIN_BLOCK_RESIZE_CAPACITY``, which the library
and the daemon need, libvirt >= 10.0). Stopped VM: anything, including
raising the maximums (they keep the create-time headroom) and growing
volumes with ``vol.resize``. A volume in a pool whose libvirt backend
cannot resize volumes (logical, disk, zfs, ...) does not grow: that is
FAILED_PRECONDITION naming the pool type.

All or nothing: every change is checked before the first is made; what a
running VM cannot take raises FAILED_PRECONDITION naming what it needs
(power-off), impossible requests raise INVALID_ARGUMENT (shrinking a disk,
adding or removing disks or NICs, changing firmware or the name), and disk
growth on a host that cannot resize volumes at all (libvirt's test driver)
UNIMPLEMENTED naming what it lacks: no power state would help there. CPU and
memory changes are undone when a later change fails (a disk that grew
stays grown: disks only grow). Image, placement, cloud-init data and
ExtraConfig are create-time only and ignored here.

Disks of desired_json map to the VM's disks as at Create:
``Class.DiskDefaults.SizeGiB`` is the root disk made from the image, and
``Disks[i]`` the disk made from disks_json entry i.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from provider_core import DesiredVM, FailedPrecondition, InvalidArgument, Outcome, Unimplemented
from provider_core.specs import Firmware, VMClass

from . import domxml, errors, marks, power, storage
from .create import resources
from .host import version_text
from .marks import Mark, VolumeRef
from .session import Session

log = logging.getLogger(__name__)

GIB = storage.GIB
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE


def each_side(running: bool, call: Callable[[int], object]) -> Callable[[], None]:
    """Apply to the live domain and its config: one call per side, since
    some drivers refuse LIVE|CONFIG together (the test driver's memory and
    metadata calls)."""
    sides = (libvirt.VIR_DOMAIN_AFFECT_LIVE, CONFIG) if running else (CONFIG,)

    def apply() -> None:
        for flags in sides:
            call(flags)

    return apply


@dataclass
class Change:
    what: str
    apply: Callable[[], None]
    undo: Callable[[], None] | None = None


class Plan:
    """Changes to make, and the reasons some cannot be made."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.disk_changes: list[Change] = []
        self.invalid: list[tuple[str, str]] = []
        self.unsupported: list[str] = []
        self.needs: list[str] = []

    def check(self) -> None:
        if self.invalid:
            path, problem = self.invalid[0]
            more = f" (and {len(self.invalid) - 1} more)" if len(self.invalid) > 1 else ""
            raise InvalidArgument(f"{path}: {problem}{more}", self.invalid)
        if self.unsupported:
            raise Unimplemented("; ".join(self.unsupported))
        if self.needs:
            raise FailedPrecondition("; ".join(self.needs))

    def run(self) -> None:
        done: list[Change] = []
        try:
            for change in [*self.changes, *self.disk_changes]:
                change.apply()
                done.append(change)
        except BaseException:
            for change in reversed(done):
                if change.undo is not None:
                    with errors.best_effort(f"undo {change.what}"):
                        change.undo()
            raise


def reconfigure(session: Session, vm_id: str, desired: DesiredVM) -> Outcome[None]:
    dom = session.lookup(vm_id)
    with session.translated(f"reconfiguring VM {dom.name()!r}"):
        root = domxml.parse(dom.XMLDesc(0))
        running = dom.state()[0] not in power.STOPPED
        mark = marks.read(root) or Mark()
        plan = Plan()
        if desired.name and desired.name != dom.name():
            plan.invalid.append(("desired_json.Name", f"renaming {dom.name()!r} is not supported"))
        if desired.vm_class is not None:
            _cpu_memory(session, dom, root, desired.vm_class, running=running, plan=plan)
        if desired.networks is not None and len(desired.networks) != len(domxml.nics(root)):
            plan.invalid.append(("desired_json.Networks", "adding or removing NICs is not supported by Reconfigure"))
        _disks(session, dom, mark, desired, running=running, plan=plan)
        if marks.read(root) is not None:
            tags = tuple(desired.tags) if desired.tags is not None else mark.tags
            cpu_plugged = running and any(c.what.startswith("vCPUs") for c in plan.changes)
            change = _mark(dom, mark, tags, cpu_plugged, running)
            if change is not None:
                plan.changes.append(change)
        plan.check()
        plan.run()
    return Outcome.done(None)


def _cpu_memory(
    session: Session, dom: libvirt.virDomain, root: ET.Element, vm_class: VMClass, *, running: bool, plan: Plan
) -> None:
    cur_cpu, max_cpu = domxml.vcpus(root)
    cur_mem = domxml.memory_mib(root, "currentMemory")
    max_mem = domxml.memory_mib(root, "memory")
    if vm_class.firmware is not None:
        want = "efi" if vm_class.firmware is Firmware.UEFI else "bios"
        if want != domxml.firmware(root):
            plan.invalid.append(("desired_json.Class.Firmware", "switching between BIOS and UEFI is not supported"))
    cpu = vm_class.cpu
    if cpu and cpu != cur_cpu:
        if cpu <= max_cpu:
            plan.changes.append(
                Change(
                    f"vCPUs {cur_cpu} -> {cpu}",
                    each_side(running, lambda flags: dom.setVcpusFlags(cpu, flags)),
                    each_side(running, lambda flags: dom.setVcpusFlags(cur_cpu, flags)),
                )
            )
        elif running:
            plan.needs.append(f"{cpu} vCPUs is above this VM's maximum of {max_cpu} set at create time: power it off to raise it")
        else:
            new_max = resources(session.settings, VMClass(cpu=cpu)).max_cpu

            def raise_cpu() -> None:
                dom.setVcpusFlags(new_max, CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
                dom.setVcpusFlags(cpu, CONFIG)

            def lower_cpu() -> None:
                dom.setVcpusFlags(cur_cpu, CONFIG)
                dom.setVcpusFlags(max_cpu, CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)

            plan.changes.append(Change(f"vCPUs {cur_cpu} -> {cpu} (maximum {new_max})", raise_cpu, lower_cpu))
    memory = vm_class.memory_mib
    if memory and memory != cur_mem:
        kib, cur_kib = memory * 1024, cur_mem * 1024
        if memory <= max_mem:
            plan.changes.append(
                Change(
                    f"memory {cur_mem} -> {memory} MiB",
                    each_side(running, lambda flags: dom.setMemoryFlags(kib, flags)),
                    each_side(running, lambda flags: dom.setMemoryFlags(cur_kib, flags)),
                )
            )
        elif running:
            plan.needs.append(f"{memory} MiB of memory is above this VM's maximum of {max_mem} MiB: power it off to raise it")
        else:
            new_max_kib = resources(session.settings, VMClass(memory_mib=memory)).max_memory_mib * 1024

            def raise_memory() -> None:
                dom.setMemoryFlags(new_max_kib, CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
                dom.setMemoryFlags(kib, CONFIG)

            def lower_memory() -> None:
                dom.setMemoryFlags(cur_kib, CONFIG)
                dom.setMemoryFlags(max_mem * 1024, CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM)

            plan.changes.append(Change(f"memory {cur_mem} -> {memory} MiB", raise_memory, lower_memory))


def _disks(session: Session, dom: libvirt.virDomain, mark: Mark, desired: DesiredVM, *, running: bool, plan: Plan) -> None:
    wanted: list[tuple[str, VolumeRef | None, int]] = []
    defaults = desired.vm_class.disk_defaults if desired.vm_class else None
    root_ref = next((v for v in mark.volumes if v.spec == "root"), None)
    if defaults is not None and defaults.size_gib:
        wanted.append(("desired_json.Class.DiskDefaults.SizeGiB", root_ref, defaults.size_gib))
    if desired.disks is not None:
        data = [v for v in mark.volumes if v.role == "data"]
        if len(desired.disks) < len(data):
            plan.invalid.append(("desired_json.Disks", f"removing disks is not supported (the VM has {len(data)})"))
        for i, disk in enumerate(desired.disks):
            ref = next((v for v in data if v.spec == str(i)), None)
            if ref is None:
                plan.invalid.append((f"desired_json.Disks[{i}]", "adding disks is not supported by Reconfigure"))
                continue
            wanted.append((f"desired_json.Disks[{i}].SizeGiB", ref, disk.size_gib))
    host = session.host()
    for field, ref, size_gib in wanted:
        if ref is None:
            continue  # no root disk made at Create (DiskDefaults was unused then too)
        pool = session.pool(ref.pool)
        vol = storage.lookup(pool, ref.name)
        if vol is None:
            plan.invalid.append((field, f"volume {ref.pool}/{ref.name} of disk {ref.target} is gone"))
            continue
        info = storage.describe(vol)
        current = info.capacity
        size = size_gib * GIB
        if size < current:
            plan.invalid.append(
                (field, f"{size_gib} GiB is smaller than disk {ref.target} ({current / GIB:g} GiB): disks only grow")
            )
        elif size > current:
            # What the pool cannot do is said first: no other host would help there.
            change = _grow(session, dom, vol, info, target=ref.target, size=size, running=running, field=field, plan=plan)
            if change is not None and not host.resizes_disks:
                plan.unsupported.append(
                    f"{field}: growing disk {ref.target} needs volume resizing, "
                    f"which libvirt's {host.driver.lower()} driver does not implement"
                )
            elif change is not None:
                plan.disk_changes.append(change)


def _grow(
    session: Session,
    dom: libvirt.virDomain,
    vol: libvirt.virStorageVol,
    info: storage.VolumeInfo,
    *,
    target: str,
    size: int,
    running: bool,
    field: str,
    plan: Plan,
) -> Change | None:
    """How disk ``target`` grows to ``size`` (see the module doc); None,
    with the reason in ``plan``, when it cannot."""
    what = f"disk {target} -> {size // GIB} GiB"
    pool = storage.pool_info(vol.storagePoolLookupByVolume())
    block = info.kind == libvirt.VIR_STORAGE_VOL_BLOCK
    if (block or not running) and not pool.kind.resize:
        plan.needs.append(
            f"{field}: growing disk {target} needs its volume resized, "
            f"which libvirt cannot do in pool {pool.name!r} (a {pool.type} pool)"
        )
        return None
    if running and not block:
        return Change(what, lambda: dom.blockResize(target, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES))
    if not running:
        return Change(what, lambda: vol.resize(size, 0))
    capacity_flag = getattr(libvirt, "VIR_DOMAIN_BLOCK_RESIZE_CAPACITY", None)
    daemon = session.host().libvirt_version
    if capacity_flag is None or daemon < BLOCK_RESIZE_CAPACITY_SINCE:
        missing = "libvirt-python" if capacity_flag is None else f"the libvirt daemon ({version_text(daemon)})"
        plan.needs.append(
            f"{field}: growing block disk {target} of a running VM needs VIR_DOMAIN_BLOCK_RESIZE_CAPACITY "
            f"(libvirt >= 10.0), which {missing} lacks: power the VM off to grow it"
        )
        return None

    def apply() -> None:
        vol.resize(size, 0)
        dom.blockResize(target, 0, capacity_flag)

    return Change(what, apply)


#: libvirt version (major * 1e6 + minor * 1e3) that added VIR_DOMAIN_BLOCK_RESIZE_CAPACITY.
BLOCK_RESIZE_CAPACITY_SINCE = 10_000_000


def _mark(dom: libvirt.virDomain, mark: Mark, tags: tuple[str, ...], cpu_plugged: bool, running: bool) -> Change | None:
    """New tags go to the live and persistent mark; a vCPU hot-plug is noted
    in the live mark only (see :data:`marks.VCPU_HOTPLUG`)."""
    live = mark.with_tags(tags)
    if cpu_plugged:
        live = live.with_extra(marks.VCPU_HOTPLUG, "yes")
    if live == mark:
        return None
    config = live.with_extra(marks.VCPU_HOTPLUG, None)

    def put(new_live: Mark, new_config: Mark) -> Callable[[], None]:
        def apply() -> None:
            if running:
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, new_live.to_metadata(), marks.PREFIX, marks.NS, LIVE)
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, new_config.to_metadata(), marks.PREFIX, marks.NS, CONFIG)

        return apply

    return Change("tags", put(live, config), put(mark, mark.with_extra(marks.VCPU_HOTPLUG, None)))
