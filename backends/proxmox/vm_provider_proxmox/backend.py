"""ProxmoxBackend: the provider.v1 operations on a Proxmox VE cluster.

The methods only wire the core's contract to the modules that do the work;
each module's docstring says what Proxmox calls it makes and which choices
it takes. VM ids are VMIDs as strings; task ids of Proxmox's own tasks are
their UPIDs.

DISK_EXPORT and DISK_IMPORT are offered where the nodes' SSH data path is
configured (:mod:`.datapath`): the Proxmox API has no call that streams a
disk out of or into a storage, so without SSH clients get UNIMPLEMENTED.
RECONFIGURE_ONLINE is offered by a connection whose settings make new VMs
for it (``cpu_memory_hotplug``: CPU and memory hotplug, NUMA, vCPUs below a
maximum; see :mod:`.hotplug`); without it Proxmox changes a running VM's
cores only at the next reboot, so online CPU and memory changes are not
something a client could rely on. Disks do grow online (``resize``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
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
    TaskState,
    ValidationReport,
    VMInfo,
    VMStatus,
)
from provider_core.capabilities import STAGING_BACKENDS

from . import cloning, create, datapath, describe, disks, images, power, reconfigure, snapshots, tasks, validate
from .client import PveClient
from .inventory import Cluster
from .node import NodeShell
from .settings import ProxmoxSettings

log = logging.getLogger(__name__)


class ProxmoxBackend(Backend):
    Settings = ProxmoxSettings
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
            Capability.EXPORT_COMPRESSION,
            Capability.DISK_IMPORT,
            Capability.HARDWARE_UPGRADE,
        }
    )
    disk_types = ("thin", "thick", "qcow2", "raw", "vmdk")
    network_types = ("bridge", "vlan", "sdn-vnet")
    export_formats = datapath.FORMATS
    import_formats = datapath.FORMATS
    export_backends = STAGING_BACKENDS
    import_backends = STAGING_BACKENDS
    transfer_modes = ("relay", "direct")

    def __init__(self, settings: ProxmoxSettings) -> None:
        super().__init__(settings)
        self.settings: ProxmoxSettings = settings
        self.client = PveClient(settings)
        self.cluster = Cluster(self.client, settings)
        self.shell = NodeShell(settings)

    # -- life cycle -------------------------------------------------------------

    def connect(self) -> None:
        """Log in, check the API answers, and learn where the VMs are."""
        self.client.connect()
        self.client.get("version")
        self.cluster.versions.forget()
        self.cluster.vms()

    def offer(self) -> Offer:
        """Without RECONFIGURE_ONLINE unless ``cpu_memory_hotplug`` makes new
        VMs for it; without DISK_EXPORT and DISK_IMPORT unless the nodes'
        SSH data path is configured (``ssh_key_file``,
        ``ssh_known_hosts_file``); with transfer mode ``direct`` (after
        ``relay``: ``auto`` stays relay) only when ``direct_transfers`` says
        the nodes reach the staging servers themselves. Without IMAGE_PREPARE where no node that
        would download can put disk images into ``import`` content
        (libpve-storage-perl before 8.3.6): ImagePrepare is refused
        (UNIMPLEMENTED) rather than failing later."""
        offer = self.declared()
        if not self.settings.cpu_memory_hotplug:
            offer = offer.without(Capability.RECONFIGURE_ONLINE)
        if not self.shell.configured:
            offer = offer.without(Capability.DISK_EXPORT, Capability.DISK_IMPORT)
        elif not self.settings.direct_transfers:
            offer = replace(offer, transfer_modes=("relay",))
        if self.settings.import_storage and (why := validate.images_impossible(self.cluster)):
            log.warning("not offering image_prepare: %s", why)
            return offer.without(Capability.IMAGE_PREPARE)
        return offer

    def lock_key(self, vm_id: str) -> str:
        """A VM's VMID as given. An image (``image:<storage
        hint>/<target name>``) by the storage it goes to: an empty hint is
        ``import_storage``'s, so that ImportDisk or ImagePrepare naming that
        storage and one naming none write the same file one after the
        other."""
        kind, _, rest = vm_id.partition(":")
        hint, slash, target = rest.partition("/")
        if kind != "image" or not slash:
            return vm_id
        return f"image:{images.storage_of(self.settings, hint)}/{target}"

    def ping(self) -> None:
        self.client.get("version")

    def close(self) -> None:
        self.client.close()

    # -- mandatory ----------------------------------------------------------------

    def validate(self) -> ValidationReport:
        return validate.validate(self.cluster)

    def create(self, spec: CreateSpec) -> Outcome[str]:
        return create.create(self.cluster, spec)

    def describe(self, vm_id: str) -> VMStatus:
        return describe.describe(self.cluster, vm_id)

    def list_vms(self) -> list[VMInfo]:
        return describe.list_vms(self.cluster)

    def owns(self, vm_id: str) -> bool:
        """The VM carries ``owner_tag`` (the cluster's VM list: one request).
        A template without the tag is someone else's too: Create and Clone
        may copy it (:meth:`copyable`), but powering or changing it needs
        ``manage_foreign_vms``, and Delete refuses it whatever the settings."""
        return self.cluster.owned(self.cluster.find(vm_id))

    def copyable(self, vm_id: str) -> bool:
        """Its own VMs, and any template: a template is an image to clone
        from, and a clone (full or linked) leaves it as it was."""
        ref = self.cluster.find(vm_id)
        return ref.template or self.cluster.owned(ref)

    def power(self, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
        return power.power(self.cluster, vm_id, op, graceful_timeout)

    def delete(self, vm_id: str) -> Outcome[None]:
        return power.delete(self.cluster, vm_id)

    def task_status(self, task_id: str) -> TaskState:
        return tasks.state(self.client, task_id)

    # -- optional -----------------------------------------------------------------

    def reconfigure(self, vm_id: str, desired: DesiredVM) -> Outcome[None]:
        return reconfigure.reconfigure(self.cluster, vm_id, desired)

    def snapshot_create(self, spec: SnapshotSpec) -> Outcome[str]:
        return snapshots.create(self.cluster, spec)

    def snapshot_revert(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        return snapshots.revert(self.cluster, vm_id, snapshot_id)

    def snapshot_delete(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        return snapshots.delete(self.cluster, vm_id, snapshot_id)

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        return cloning.clone(self.cluster, spec)

    def image_prepare(self, spec: ImagePrepareSpec) -> Outcome[PreparedImage]:
        return images.image_prepare(self.cluster, spec)

    def disk_info(self, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
        return disks.disk_info(self.cluster, vm_id, disk_id, snapshot_id)

    def export_disk(self, spec: ExportSpec) -> Outcome[ExportResult]:
        return datapath.export_disk(self.cluster, self.shell, spec)

    def import_disk(self, spec: ImportSpec) -> Outcome[ImportResult]:
        return datapath.import_disk(self.cluster, self.shell, spec)

    def hardware_upgrade(self, vm_id: str, target_version: int) -> Outcome[None]:
        return disks.hardware_upgrade(self.cluster, vm_id, target_version)
