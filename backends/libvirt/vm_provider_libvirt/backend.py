"""The libvirt backend: QEMU/KVM hosts (``qemu:///system``, ``qemu+ssh://``,
``qemu+tls://``) and libvirt's built-in test hypervisor (``test:///default``).

This class is wiring only. Beneath everything is the
:class:`~vm_provider_libvirt.session.Session` (the connection, lookups,
host facts, caches, and the one boundary where libvirt errors become the
core's); the operations live in modules named for them and take the
session; the disk data path (ImagePrepare, ExportDisk, ImportDisk, image
downloads) is a :class:`~vm_provider_libvirt.datapath.DiskTransfers` built
on the same session. What a connected host offers is decided in
:mod:`~vm_provider_libvirt.offers`.

VM ids are domain UUIDs (stable across renames); every call also accepts a
domain name. Domains made by vm-provider carry its mark
(:mod:`~vm_provider_libvirt.marks`): that is how :meth:`owns` tells them
from the host's other domains (which ListVMs lists too, for adoption), and
Create is idempotent only for them.
"""

from __future__ import annotations

from typing import ClassVar

from provider_core import (
    Backend,
    Capability,
    CloneSpec,
    CreateSpec,
    DesiredVM,
    DiskDetails,
    ExportResult,
    ExportSpec,
    ImagePrepareSpec,
    ImportResult,
    ImportSpec,
    Offer,
    Outcome,
    PowerOp,
    PreparedImage,
    SnapshotSpec,
    ValidationReport,
    VMInfo,
    VMStatus,
)

from . import clone, create, offers, power, queries, reconfigure, removal, snapshots, upgrade
from .datapath import DiskTransfers
from .session import Session
from .settings import LibvirtSettings


class LibvirtBackend(Backend):
    """vm-provider on libvirt. Settings: :class:`LibvirtSettings`."""

    Settings = LibvirtSettings
    capabilities: ClassVar[frozenset[Capability]] = offers.DECLARED.capabilities
    disk_types: ClassVar[tuple[str, ...]] = offers.DECLARED.disk_types
    network_types: ClassVar[tuple[str, ...]] = offers.DECLARED.network_types
    export_formats: ClassVar[tuple[str, ...]] = offers.DECLARED.export_formats
    import_formats: ClassVar[tuple[str, ...]] = offers.DECLARED.import_formats
    export_backends: ClassVar[tuple[str, ...]] = offers.DECLARED.export_backends
    import_backends: ClassVar[tuple[str, ...]] = offers.DECLARED.import_backends
    transfer_modes: ClassVar[tuple[str, ...]] = offers.DECLARED.transfer_modes

    settings: LibvirtSettings

    def __init__(self, settings: LibvirtSettings) -> None:
        super().__init__(settings)
        self.session = Session(settings)
        self.data = DiskTransfers(self.session)

    # -- life cycle ---------------------------------------------------------------

    def connect(self) -> None:
        self.session.connect()

    def ping(self) -> None:
        self.session.ping()

    def close(self) -> None:
        self.session.close()

    def offer(self) -> Offer:
        return offers.offer(self.declared(), self.session.host())

    def lock_key(self, vm_id: str) -> str:
        return self.session.lock_key(vm_id)

    # -- mandatory operations -----------------------------------------------------

    def validate(self) -> ValidationReport:
        return queries.validate(self.session)

    def create(self, spec: CreateSpec) -> Outcome[str]:
        return self.session.changing(lambda: create.create(self.session, spec, self.data.fetch_image))

    def describe(self, vm_id: str) -> VMStatus:
        return self.session.reading(lambda: queries.describe(self.session, vm_id))

    def list_vms(self) -> list[VMInfo]:
        return self.session.reading(lambda: queries.list_vms(self.session))

    def owns(self, vm_id: str) -> bool:
        return self.session.reading(lambda: queries.owns(self.session, vm_id))

    def power(self, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
        return self.session.changing(lambda: power.power(self.session, vm_id, op, graceful_timeout))

    def delete(self, vm_id: str) -> Outcome[None]:
        return self.session.changing(lambda: removal.delete(self.session, vm_id))

    # -- optional operations ------------------------------------------------------

    def reconfigure(self, vm_id: str, desired: DesiredVM) -> Outcome[None]:
        return self.session.changing(lambda: reconfigure.reconfigure(self.session, vm_id, desired))

    def snapshot_create(self, spec: SnapshotSpec) -> Outcome[str]:
        return self.session.changing(lambda: snapshots.create(self.session, spec))

    def snapshot_revert(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        return self.session.changing(lambda: snapshots.revert(self.session, vm_id, snapshot_id))

    def snapshot_delete(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        return self.session.changing(lambda: snapshots.delete(self.session, vm_id, snapshot_id))

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        return self.session.changing(lambda: clone.clone(self.session, spec))

    def image_prepare(self, spec: ImagePrepareSpec) -> Outcome[PreparedImage]:
        return self.session.transferring(lambda: self.data.image_prepare(spec))

    def disk_info(self, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
        return self.session.reading(lambda: queries.disk_info(self.session, vm_id, disk_id, snapshot_id))

    def export_disk(self, spec: ExportSpec) -> Outcome[ExportResult]:
        return self.session.transferring(lambda: self.data.export_disk(spec))

    def import_disk(self, spec: ImportSpec) -> Outcome[ImportResult]:
        return self.session.transferring(lambda: self.data.import_disk(spec))

    def hardware_upgrade(self, vm_id: str, target_version: int) -> Outcome[None]:
        return self.session.changing(lambda: upgrade.hardware_upgrade(self.session, vm_id, target_version))
