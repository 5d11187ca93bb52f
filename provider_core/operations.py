"""The one table of RPCs: what each asks of a backend and how the core runs it.

Each :class:`Operation` names the RPC, the :class:`~provider_core.models.Request`
model its request becomes (the only validation of a request), the backend
method it calls, the capability that gates it and the boolean request
fields that need a refining capability, the VM and names it locks, whether
it changes anything, whether the VM it changes must be the provider's own,
and whether a missing target counts as success. The
runtime runs every operation from this table alone; the servicer converts
protobuf in and out around one call; the load-time check of a backend's
declaration (``METHODS``), the docs' support matrix and the conformance kit
derive from it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .capabilities import Capability
from .models import (
    CloneSpec,
    CreateSpec,
    DiskRef,
    ExportSpec,
    ImagePrepareSpec,
    ImportSpec,
    NoArguments,
    PowerRequest,
    ReconfigureRequest,
    Request,
    SnapshotRef,
    SnapshotSpec,
    TaskQuery,
    UpgradeRequest,
    VMRef,
)


@dataclass(frozen=True)
class Operation:
    """One RPC of provider.v1.Provider as the core runs it."""

    rpc: str
    request: type[Request]
    method: str
    """The Backend method it calls, with ``request.args()``."""
    capability: Capability | None = None
    """Gates the RPC: UNIMPLEMENTED naming it when the endpoint does not offer it."""
    refines: tuple[tuple[str, Capability], ...] = ()
    """Boolean request fields that, when set, need a refining capability."""
    formats: str = ""
    """The :class:`~provider_core.capabilities.Offer` list the request's ``format`` must be in."""
    backends: str = ""
    """The Offer list the request's staging ``backend_type`` must be in; its
    ``transfer_mode`` is then resolved against the offered modes."""
    mutates: bool = False
    """Runs under locks and may leave background work tracked as a task."""
    vm: str = ""
    """The request field naming (by id or name) the VM it acts on: the access
    log's VM; a mutation holds its lock."""
    owned: bool = False
    """It changes the VM ``vm`` names, which must be one this provider made
    (:meth:`Backend.owns <provider_core.backend.Backend.owns>`) unless the
    server's ``manage_foreign_vms`` is on."""
    copies: bool = False
    """It copies the VM ``vm`` names: one this provider made, or one the
    backend lets anyone copy (:meth:`Backend.copyable
    <provider_core.backend.Backend.copyable>`: a template), unless the
    server's ``manage_foreign_vms`` is on."""
    new_vm: str = ""
    """The request field naming the VM it makes: locked like ``vm``, and
    the id the backend returns locks the same while the work runs."""
    names: tuple[str, ...] = ()
    """Lock keys of other names it claims (images), formatted with the request's fields."""
    missing_ok: bool = False
    """A missing target (NotFound) counts as success: Delete's idempotency,
    Describe's ``exists=false``."""
    wait: bool = False
    """The caller waits for the background work while its deadline allows."""

    @property
    def kind(self) -> str:
        """The task kind recorded for its background work."""
        return self.method.replace("_", "-")


VALIDATE = Operation("Validate", NoArguments, "validate")
CREATE = Operation("Create", CreateSpec, "create", mutates=True, new_vm="name")
DESCRIBE = Operation("Describe", VMRef, "describe", vm="id", missing_ok=True)
LIST_VMS = Operation("ListVMs", NoArguments, "list_vms")
POWER = Operation("Power", PowerRequest, "power", mutates=True, vm="id", owned=True)
DELETE = Operation("Delete", VMRef, "delete", mutates=True, vm="id", owned=True, missing_ok=True)
RECONFIGURE = Operation(
    "Reconfigure", ReconfigureRequest, "reconfigure", Capability.RECONFIGURE, mutates=True, vm="id", owned=True
)
SNAPSHOT_CREATE = Operation(
    "SnapshotCreate",
    SnapshotSpec,
    "snapshot_create",
    Capability.SNAPSHOTS,
    refines=(("include_memory", Capability.MEMORY_SNAPSHOTS),),
    mutates=True,
    vm="vm_id",
    owned=True,
)
SNAPSHOT_REVERT = Operation(
    "SnapshotRevert", SnapshotRef, "snapshot_revert", Capability.SNAPSHOTS, mutates=True, vm="vm_id", owned=True
)
SNAPSHOT_DELETE = Operation(
    "SnapshotDelete",
    SnapshotRef,
    "snapshot_delete",
    Capability.SNAPSHOTS,
    mutates=True,
    vm="vm_id",
    owned=True,
    missing_ok=True,
)
CLONE = Operation(
    "Clone",
    CloneSpec,
    "clone",
    Capability.CLONE,
    refines=(("linked", Capability.LINKED_CLONES),),
    mutates=True,
    vm="source_vm_id",
    copies=True,
    new_vm="target_name",
)
IMAGE_PREPARE = Operation(
    "ImagePrepare",
    ImagePrepareSpec,
    "image_prepare",
    Capability.IMAGE_PREPARE,
    mutates=True,
    names=("image:{storage_hint}/{target_name}",),
)
GET_DISK_INFO = Operation("GetDiskInfo", DiskRef, "disk_info", Capability.DISK_INFO, vm="vm_id")
EXPORT_DISK = Operation(
    "ExportDisk",
    ExportSpec,
    "export_disk",
    Capability.DISK_EXPORT,
    refines=(("compress", Capability.EXPORT_COMPRESSION),),
    formats="export_formats",
    backends="export_backends",
    mutates=True,
    vm="vm_id",
    wait=True,
)
IMPORT_DISK = Operation(
    "ImportDisk",
    ImportSpec,
    "import_disk",
    Capability.DISK_IMPORT,
    formats="import_formats",
    backends="import_backends",
    mutates=True,
    names=("image:{storage_hint}/{target_name}",),
    wait=True,
)
HARDWARE_UPGRADE = Operation(
    "HardwareUpgrade", UpgradeRequest, "hardware_upgrade", Capability.HARDWARE_UPGRADE, mutates=True, vm="id", owned=True
)
TASK_STATUS = Operation("TaskStatus", TaskQuery, "task_status")

OPERATIONS: Mapping[str, Operation] = {
    op.rpc: op
    for op in (
        VALIDATE,
        CREATE,
        DESCRIBE,
        LIST_VMS,
        POWER,
        DELETE,
        RECONFIGURE,
        SNAPSHOT_CREATE,
        SNAPSHOT_REVERT,
        SNAPSHOT_DELETE,
        CLONE,
        IMAGE_PREPARE,
        GET_DISK_INFO,
        EXPORT_DISK,
        IMPORT_DISK,
        HARDWARE_UPGRADE,
        TASK_STATUS,
    )
}
"""Every RPC that reaches a backend, by name (GetCapabilities answers from the offer alone)."""


def _by_capability(attr: str) -> dict[Capability, tuple[str, ...]]:
    table: dict[Capability, tuple[str, ...]] = {}
    for op in OPERATIONS.values():
        if op.capability is not None:
            table[op.capability] = (*table.get(op.capability, ()), getattr(op, attr))
    return table


METHODS: Mapping[Capability, tuple[str, ...]] = _by_capability("method")
"""Backend methods of each capability: a backend overrides exactly those of what it declares."""
RPCS: Mapping[Capability, tuple[str, ...]] = _by_capability("rpc")
"""The RPCs each capability gates (for the docs and the kit)."""
