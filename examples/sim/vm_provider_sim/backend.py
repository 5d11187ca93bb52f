"""The sim backend: provider.v1 on a simulated in-memory hypervisor.

Every operation that would take time on a real host (create, power, clone,
snapshots, ...) returns at once with a task and finishes ``task_seconds``
later; checks that can fail are made before the task starts, so a client
gets its error from the call itself.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, ClassVar, TypeVar, cast

from provider_core import (
    AlreadyExists,
    Backend,
    BackendSettings,
    Capability,
    CloneSpec,
    CreateSpec,
    DesiredVM,
    Disk,
    DiskDetails,
    ExportResult,
    ExportSpec,
    FailedPrecondition,
    ImagePrepareSpec,
    ImportResult,
    ImportSpec,
    InvalidArgument,
    Nic,
    NotFound,
    Outcome,
    PowerOp,
    PowerState,
    PreparedImage,
    ProviderError,
    ResourceExhausted,
    SnapshotSpec,
    Unavailable,
    ValidationReport,
    VMImage,
    VMInfo,
    VMStatus,
    transfer,
)
from provider_core.capabilities import STAGING_BACKENDS

from . import hypervisor as hv
from .convert import ROOT_DISK, build_clone, build_machine, plan_reconfigure
from .disks import HeadSink, image_bytes, size_of
from .download import fetch
from .machines import CREATING, LIVE, PAUSED, RUNNING, SHUTOFF, SHUTTING_DOWN, Image, Machine
from .settings import SimSettings

T = TypeVar("T")

#: Native state -> protocol power state.
POWER_STATES: dict[str, PowerState] = {
    CREATING: PowerState.OFF,
    SHUTOFF: PowerState.OFF,
    RUNNING: PowerState.ON,
    SHUTTING_DOWN: PowerState.ON,
    PAUSED: PowerState.SUSPENDED,
}

#: The simulated hypervisor's errors -> the provider's, most specific first.
ERRORS: tuple[tuple[type[hv.SimError], Callable[[str], ProviderError]], ...] = (
    (hv.NoMachineError, NotFound),
    (hv.NoSnapshotError, NotFound),
    (hv.NoDiskError, NotFound),
    (hv.NoImageError, NotFound),
    (hv.NameInUseError, AlreadyExists),
    (hv.DependentsError, FailedPrecondition),
    (hv.StateError, FailedPrecondition),
    (hv.UnsupportedError, InvalidArgument),
    (hv.OutOfSpaceError, ResourceExhausted),
    (hv.StateFileError, Unavailable),
)


@contextmanager
def native_errors() -> Iterator[None]:
    """Translate the hypervisor's errors through :data:`ERRORS`."""
    try:
        yield
    except hv.SimError as exc:
        for native, ours in ERRORS:
            if isinstance(exc, native):
                raise ours(str(exc)) from exc
        raise


class SimBackend(Backend):
    """A simulated hypervisor with realistic behaviour; see the README."""

    Settings = SimSettings
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.RECONFIGURE,
            Capability.RECONFIGURE_ONLINE,
            Capability.DISK_EXPANSION_ONLINE,
            Capability.SNAPSHOTS,
            Capability.MEMORY_SNAPSHOTS,
            Capability.CLONE,
            Capability.LINKED_CLONES,
            Capability.IMAGE_PREPARE,
            Capability.DISK_INFO,
            Capability.DISK_EXPORT,
            Capability.DISK_IMPORT,
            Capability.HARDWARE_UPGRADE,
        }
    )
    disk_types = ("thin", "thick", "qcow2", "raw")
    network_types = ("network", "bridge")
    export_formats = ("qcow2", "raw")
    import_formats = ("qcow2", "raw")
    # the transfer package gets the request, storage options and all: nfs works too
    export_backends = STAGING_BACKENDS
    import_backends = STAGING_BACKENDS

    def __init__(self, settings: BackendSettings) -> None:
        assert isinstance(settings, SimSettings)
        super().__init__(settings)
        self.config = settings
        self.hv: hv.Hypervisor | None = None
        self._problem = ""

    # -- life cycle -----------------------------------------------------------------

    def connect(self) -> None:
        if self.hv is not None:
            return
        s = self.config
        self._problem = ""
        try:
            self.hv = self._open(s)
        except ProviderError as exc:
            self._problem = str(exc)
            raise

    def _open(self, s: SimSettings) -> hv.Hypervisor:
        with native_errors():
            host = hv.Hypervisor(
                s.state_file,
                storage_gib=s.storage_gib,
                shutdown_seconds=s.shutdown_seconds,
                hardware_versions=s.hardware_versions,
            )
            for name in s.images:
                host.add_image(Image(name, f"/var/lib/sim/images/{name}.qcow2", size_gib=2))
            for name in s.foreign_vms:
                if host.find(name) is None:
                    spec = CreateSpec(name=name)
                    machine = build_machine(spec, s, host)
                    machine.owned, machine.state = False, SHUTOFF
                    host.define(machine)
        return host

    @property
    def host(self) -> hv.Hypervisor:
        if self.hv is None:
            raise Unavailable("the sim backend is not connected")
        return self.hv

    def _later(self, value: T, work: Callable[[], object]) -> Outcome[T]:
        """Finish ``work`` in the background after ``task_seconds``."""

        def run() -> None:
            time.sleep(self.config.task_seconds)
            with native_errors():
                work()

        return Outcome.later(value, run)

    def _get(self, vm_id: str) -> Machine:
        with native_errors():
            return self.host.get(vm_id)

    # -- mandatory operations ------------------------------------------------------------

    def validate(self) -> ValidationReport:
        if self.hv is None:
            return ValidationReport(ok=False, message=f"not connected: {self._problem or 'connect() was not called'}")
        where = f"state in {self.config.state_file}" if self.config.state_file else "state in memory only"
        used, total = self.hv.used_gib(), self.config.storage_gib
        return ValidationReport(ok=True, message=f"sim host: {len(self.hv.machines())} VMs, storage {used}/{total} GiB, {where}")

    def create(self, spec: CreateSpec) -> Outcome[str]:
        host = self.host
        existing = host.find(spec.name)
        if existing is not None:
            if not existing.owned:
                raise AlreadyExists(f"name {spec.name!r} is taken by a VM this provider did not make")
            return Outcome.done(existing.id)
        with native_errors():
            machine = build_machine(spec, self.config, host)
            host.define(machine)

        def work() -> None:
            if spec.image.source == "url":
                try:
                    self._fetch(spec.image)
                except (hv.SimError, ProviderError):
                    host.undefine(machine.id)  # a failed create leaves nothing behind
                    raise
            host.finish_creating(machine.id)

        return self._later(machine.id, work)

    def describe(self, vm_id: str) -> VMStatus:
        m = self._get(vm_id)
        running = m.state in LIVE
        return VMStatus(
            power_state=POWER_STATES[m.state],
            ips=[nic.address(m.id) for nic in m.nics] if running else [],
            console_url=f"vnc://127.0.0.1:{m.console_port}" if running else "",
            raw={
                "state": m.state,
                "name": m.name,
                "cpu": m.cpu,
                "memory_mib": m.memory_mib,
                "max_cpu": m.max_cpu,
                "max_memory_mib": m.max_memory_mib,
                "hardware_version": m.hardware_version,
                "firmware": m.firmware,
                "image": m.image,
                "linked_from": m.linked_from,
                "snapshots": [s.name for s in m.snapshots],
                "extra_config": m.extra_config,
                "customization": m.customization,
                "tags": m.tags,
                "owned": m.owned,
                "managed": m.owned,
            },
        )

    def list_vms(self) -> list[VMInfo]:
        return [
            VMInfo(
                id=m.id,
                name=m.name,
                power_state=POWER_STATES[m.state],
                ips=[nic.address(m.id) for nic in m.nics] if m.state in LIVE else [],
                cpu=m.cpu,
                memory_mib=m.memory_mib,
                disks=[Disk(id=d.name, path=d.path, size_gib=d.size_gib, format=d.format) for d in m.disks],
                networks=[Nic(name=n.network or n.bridge, mac=n.mac, ip_address=n.static_ip) for n in m.nics],
                raw={
                    "state": m.state,
                    "hardware_version": str(m.hardware_version),
                    "owned": str(m.owned).lower(),
                    "managed": str(m.owned).lower(),
                },
            )
            for m in self.host.machines()
        ]

    def owns(self, vm_id: str) -> bool:
        """Machines named in ``foreign_vms`` are not this provider's."""
        return self._get(vm_id).owned

    def power(self, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
        host = self.host
        m = self._get(vm_id)
        if m.state == CREATING:
            raise FailedPrecondition(f"VM {m.name!r} is still being created; wait for its task")
        if op is PowerOp.ON:
            return Outcome.done(None) if m.state == RUNNING else self._later(None, lambda: host.start(vm_id))
        if op is PowerOp.OFF:
            return Outcome.done(None) if m.state == SHUTOFF else self._later(None, lambda: host.destroy(vm_id))
        if op is PowerOp.REBOOT:
            if m.state != RUNNING:
                raise FailedPrecondition(f"VM {m.name!r} is not running; power it on instead")
            return self._later(None, lambda: host.reboot(vm_id))
        if m.state == SHUTOFF:
            return Outcome.done(None)

        def shutdown() -> None:
            host.acpi_shutdown(vm_id)
            give_up = time.monotonic() + graceful_timeout
            while time.monotonic() < give_up:
                if host.get(vm_id).state == SHUTOFF:
                    return
                time.sleep(0.02)
            host.destroy(vm_id)  # the guest did not comply in time

        def run() -> None:
            with native_errors():
                shutdown()

        return Outcome.later(None, run)

    def delete(self, vm_id: str) -> Outcome[None]:
        host = self.host
        with native_errors():
            host.get(vm_id)
            host.check_no_dependents(vm_id)
        return self._later(None, lambda: host.undefine(vm_id))

    # -- optional operations -------------------------------------------------------------------

    def reconfigure(self, vm_id: str, desired: DesiredVM) -> Outcome[None]:
        host = self.host
        m = self._get(vm_id)
        plan = plan_reconfigure(m, desired, self.config, host)

        def apply(dry_run: bool) -> None:
            host.reconfigure(
                vm_id,
                cpu=plan.cpu,
                memory_mib=plan.memory_mib,
                disk_sizes=plan.disk_sizes,
                max_cpu=self.config.hotplug_cpus,
                max_memory_mib=self.config.hotplug_memory_mib,
                online_cpu_memory=Capability.RECONFIGURE_ONLINE in self.capabilities,
                online_disks=Capability.DISK_EXPANSION_ONLINE in self.capabilities,
                dry_run=dry_run,
            )
            if not dry_run and plan.tags is not None:
                host.set_tags(vm_id, plan.tags)

        with native_errors():
            apply(dry_run=True)
        return self._later(None, lambda: apply(dry_run=False))

    def snapshot_create(self, spec: SnapshotSpec) -> Outcome[str]:
        host = self.host
        was_running = self._get(spec.vm_id).state == RUNNING
        with native_errors():
            snap = host.snapshot_create(spec.vm_id, spec.name, spec.description, spec.include_memory)
        # Saving takes time; a guest whose memory is being saved is paused (Suspended) meanwhile.
        return self._later(snap.id, lambda: host.resume(spec.vm_id) if snap.memory and was_running else None)

    def snapshot_revert(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        host = self.host
        with native_errors():
            host.snapshot_get(vm_id, snapshot_id)
        return self._later(None, lambda: host.snapshot_revert(vm_id, snapshot_id))

    def snapshot_delete(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        host = self.host
        with native_errors():
            host.snapshot_get(vm_id, snapshot_id)
        return self._later(None, lambda: host.snapshot_delete(vm_id, snapshot_id))

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        host = self.host
        source = self._get(spec.source_vm_id)
        existing = host.find(spec.target_name)
        if existing is not None:
            if not existing.owned:
                raise AlreadyExists(f"name {spec.target_name!r} is taken by a VM this provider did not make")
            return Outcome.done(existing.id)
        if source.state == CREATING:
            raise FailedPrecondition(f"VM {source.name!r} is still being created; wait for its task")
        target = build_clone(source, spec, self.config)
        with native_errors():
            host.define(target)
        return self._later(target.id, lambda: host.finish_creating(target.id))

    def image_prepare(self, spec: ImagePrepareSpec) -> Outcome[PreparedImage]:
        host = self.host
        image = spec.image
        fmt = image.format or "qcow2"
        if image.source == "url":
            source, size = image.url, 0
        else:
            with native_errors():
                base = host.image(image.template_name or image.path)
            source, size = base.path, base.size_gib
        path = f"/var/lib/sim/{spec.storage_hint or 'images'}/{spec.target_name}.{fmt}"
        prepared = Image(spec.target_name, path, size, fmt, source, image.checksum)
        have = next((i for i in host.images() if i.name == spec.target_name), None)
        if have is not None:
            if (have.source, have.checksum) == (prepared.source, prepared.checksum):
                return Outcome.done(PreparedImage(id=have.name, path=have.path))
            raise AlreadyExists(f"an image named {spec.target_name!r} exists with another source ({have.source or 'built in'})")

        def work() -> None:
            if image.source == "url":
                prepared.size_gib = self._fetch(image) or 2
            host.add_image(prepared)

        return self._later(PreparedImage(id=prepared.name, path=prepared.path), work)

    def _fetch(self, image: VMImage) -> int:
        """Fetch a URL image when ``download_images`` is on; its size in GiB (0: not fetched)."""
        if not self.config.download_images:
            return 0
        return fetch(image.url, image.checksum, image.checksum_type.value)

    def disk_info(self, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
        m = self._get(vm_id)
        name = disk_id or ROOT_DISK
        disk = m.disk(name)
        if disk is None:
            raise NotFound(f"VM {m.name!r} has no disk {name!r} (disks: {', '.join(d.name for d in m.disks)})")
        size_gib = disk.size_gib
        if snapshot_id:
            with native_errors():
                snap = self.host.snapshot_get(vm_id, snapshot_id)
            size_gib = snap.disk_sizes.get(name, size_gib)
        return DiskDetails(
            disk_id=disk.name,
            format=disk.format,
            virtual_size_bytes=size_gib * 2**30,
            actual_size_bytes=disk.allocated_bytes,
            path=disk.path,
            is_bootable=disk.bootable,
            snapshots=[s.id for s in m.snapshots],
            backing_file=disk.backing,
            metadata={"provisioning": "thick" if disk.thick else "thin", "machine": m.name},
        )

    def export_disk(self, spec: ExportSpec) -> Outcome[ExportResult]:
        m = self._get(spec.vm_id)
        name = spec.disk_id or ROOT_DISK
        disk = m.disk(name)
        if disk is None:
            raise NotFound(f"VM {m.name!r} has no disk {name!r} (disks: {', '.join(d.name for d in m.disks)})")
        size_gib = disk.size_gib
        if spec.snapshot_id:
            with native_errors():
                size_gib = self.host.snapshot_get(spec.vm_id, spec.snapshot_id).disk_sizes.get(name, size_gib)
        data = image_bytes(m.name, name, size_gib, spec.format, spec.snapshot_id)
        export_id = f"export-{uuid.uuid4().hex[:16]}"

        def work() -> ExportResult:
            time.sleep(self.config.task_seconds)
            sent = transfer.upload(io.BytesIO(data), spec)  # the request: its staging backend and options apply
            return ExportResult(export_id=export_id, estimated_size_bytes=sent.size, checksum=sent.sha256)

        return Outcome.later(ExportResult(export_id=export_id, estimated_size_bytes=len(data)), work)

    def import_disk(self, spec: ImportSpec) -> Outcome[ImportResult]:
        host = self.host
        path = f"/var/lib/sim/{spec.storage_hint or 'images'}/{spec.target_name}.{spec.format}"
        expected = spec.expected_checksum if spec.verify_checksum else ""
        have = next((i for i in host.images() if i.name == spec.target_name), None)
        if have is not None:
            if expected and have.checksum == expected:
                return Outcome.done(ImportResult(disk_id=have.name, path=have.path, checksum=have.checksum))
            raise AlreadyExists(
                f"an image named {spec.target_name!r} exists (to accept it when it matches, set expected_checksum)"
            )

        def work() -> ImportResult:
            time.sleep(self.config.task_seconds)
            head = HeadSink()
            got = transfer.download(spec, cast(BinaryIO, head), expected=expected)
            image = Image(spec.target_name, path, size_of(bytes(head.head), head.size), spec.format, spec.source_url, got.sha256)
            with native_errors():
                host.add_image(image)
            return ImportResult(disk_id=image.name, path=path, actual_size_bytes=got.size, checksum=got.sha256)

        return Outcome.later(ImportResult(disk_id=spec.target_name, path=path), work)

    def hardware_upgrade(self, vm_id: str, target_version: int) -> Outcome[None]:
        host = self.host
        with native_errors():
            host.upgrade_hardware(vm_id, target_version, dry_run=True)
        return self._later(None, lambda: host.upgrade_hardware(vm_id, target_version))
