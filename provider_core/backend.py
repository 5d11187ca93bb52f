"""The Backend contract: what a hypervisor plugin implements.

A backend is a class deriving from :class:`Backend`, registered under the
entry-point group ``vm_provider.backends``. The core constructs it with its
validated settings, calls :meth:`Backend.connect` once, then dispatches RPCs
to its methods from worker threads (methods may block; they are never called
on the event loop). The core serialises mutating calls per VM, so a backend
never sees two concurrent operations on the same VM from one process.

Every method takes and returns the typed values of :mod:`provider_core.models`
and raises only :mod:`provider_core.errors` (translate native errors through
one table, ``raise ... from exc``). Anything else becomes INTERNAL.

Long operations return an :class:`Outcome`: the immediate value (a VM id,
a snapshot id) plus either work for the core to run in the background and
track as a task, or the id of a task the hypervisor runs itself.

Optional capabilities (:class:`~provider_core.capabilities.Capability`):
a backend class declares the most it can offer in ``capabilities`` and
overrides exactly the methods of those capabilities
(``operations.METHODS``); the core refuses to load a backend whose
declaration and methods disagree. Once connected, :meth:`Backend.offer` says
what this endpoint offers (a subset): GetCapabilities answers with it, and
the core never calls outside it: the client gets UNIMPLEMENTED naming the
capability.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from .capabilities import Capability, Offer
from .errors import NotFound
from .models import (
    CloneSpec,
    CreateSpec,
    DesiredVM,
    DiskDetails,
    ExportResult,
    ExportSpec,
    ImagePrepareSpec,
    ImportResult,
    ImportSpec,
    PowerOp,
    PreparedImage,
    SnapshotSpec,
    TaskState,
    ValidationReport,
    VMInfo,
    VMStatus,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """The result of a possibly long operation.

    Build it with one of the three constructors:

    - ``Outcome.done(value)``: finished; the client gets no task.
    - ``Outcome.later(value, work)``: ``value`` is returned to the client at
      once; the core runs ``work()`` in a worker thread, still holding the
      VM's lock, and tracks it as a task (TaskStatus answers for it, and a
      restart of the provider does not lose it). ``work`` may return a new
      value that replaces ``value`` once done (e.g. an export's checksum);
      raising a ProviderError fails the task with its message.
    - ``Outcome.native(value, task_id)``: the hypervisor runs the operation as
      its own task; ``task_id`` goes to the client verbatim and TaskStatus
      asks :meth:`Backend.task_status`.
    """

    value: T
    work: Callable[[], T | None] | None = None
    native_task: str = ""

    @classmethod
    def done(cls, value: T) -> Outcome[T]:
        return cls(value)

    @classmethod
    def later(cls, value: T, work: Callable[[], T | None]) -> Outcome[T]:
        return cls(value, work=work)

    @classmethod
    def native(cls, value: T, task_id: str) -> Outcome[T]:
        if not task_id:
            raise ValueError("a native task needs an id")
        return cls(value, native_task=task_id)


class BackendSettings(BaseModel):
    """Base of a backend's settings model (``[backends.NAME]`` in plugins.toml).

    Every field can be overridden by ``VM_PROVIDER_<NAME>_<FIELD>`` and read
    from a file with ``<field>_file`` (TOML) or ``VM_PROVIDER_<NAME>_<FIELD>_FILE``
    (environment). Declare secrets as ``pydantic.SecretStr`` so they never
    print. Unknown settings are refused.

    Two class attributes tell the core more about the fields:
    ``endpoint_settings`` names the fields that say which hypervisor is
    served (the state directory is per endpoint; ``PROVIDER_ENDPOINT`` sets
    the one field named there); left None, the core takes the conventional
    names the model has (``uri``, ``endpoint``, ...).
    ``credential_keys`` maps the files of a credentials directory (a
    Kubernetes Secret's keys, ``[server] credentials_dir``) to the fields
    they fill: a field typed ``Path`` gets the file's path, any other its
    content.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_settings: ClassVar[tuple[str, ...] | None] = None
    credential_keys: ClassVar[dict[str, str]] = {}


class Backend(ABC):
    """A hypervisor backend. Subclass it; document only what differs."""

    #: Model of this backend's settings.
    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    #: Optional capabilities this backend offers; nothing else is ever called.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: Values for GetCapabilities' lists.
    disk_types: ClassVar[tuple[str, ...]] = ()
    network_types: ClassVar[tuple[str, ...]] = ()
    export_formats: ClassVar[tuple[str, ...]] = ()
    import_formats: ClassVar[tuple[str, ...]] = ()
    export_backends: ClassVar[tuple[str, ...]] = ("pvc", "s3")
    """Staging backends of ExportDisk. ``pvc`` and ``s3`` work with
    :mod:`provider_core.transfer` given the URL alone; ``nfs`` needs the
    request's storage options (its ``export``), so a backend lists it
    (:data:`~provider_core.capabilities.STAGING_BACKENDS`) only when it hands
    :mod:`provider_core.transfer` the request itself."""
    import_backends: ClassVar[tuple[str, ...]] = ("pvc", "s3")
    """Staging backends of ImportDisk: as ``export_backends``."""
    transfer_modes: ClassVar[tuple[str, ...]] = ("relay",)
    """``direct`` only for a backend whose hypervisor hosts reach staging themselves."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    # -- life cycle ---------------------------------------------------------

    def connect(self) -> None:
        """Open connections to the hypervisor. Raise Unavailable when it
        cannot be reached; the core reports NOT_SERVING and calls it again
        later. Called once at start and after every failed :meth:`ping`."""

    def ping(self) -> None:
        """Cheap liveness check, called periodically. Raise Unavailable when
        the hypervisor stopped answering (the core then calls connect)."""

    def close(self) -> None:
        """Release connections at shutdown."""

    @classmethod
    def declared(cls) -> Offer:
        """The most this class can offer: its ``capabilities`` and lists."""
        return Offer(
            capabilities=frozenset(cls.capabilities),
            disk_types=tuple(cls.disk_types),
            network_types=tuple(cls.network_types),
            export_formats=tuple(cls.export_formats),
            import_formats=tuple(cls.import_formats),
            export_backends=tuple(cls.export_backends),
            import_backends=tuple(cls.import_backends),
            transfer_modes=tuple(cls.transfer_modes),
        ).without()

    def offer(self) -> Offer:
        """What the endpoint this backend is connected to offers: never more
        than :meth:`declared` (the core drops anything beyond it and logs an
        error). Called after each successful :meth:`connect`, so it may ask
        the hypervisor (its version, driver, storage) and raise like
        connect. Override when what an endpoint can do depends on what it
        is (``self.declared().without(Capability.DISK_EXPORT)``). Default:
        everything declared."""
        return self.declared()

    # -- mandatory operations ----------------------------------------------

    @abstractmethod
    def validate(self) -> ValidationReport:
        """Check connectivity, versions and that the configured resources
        (storage, networks, privileges) exist. Never raises for a failed
        check: report it with ``ok=False`` and say what is wrong."""

    @abstractmethod
    def create(self, spec: CreateSpec) -> Outcome[str]:
        """Create a VM and return its id. Idempotent by name: when a VM of
        this name made by this provider exists, return its id (and do not
        change it). A name taken by a VM not made by this provider raises
        AlreadyExists. Bad specs raise InvalidArgument naming the field."""

    @abstractmethod
    def describe(self, vm_id: str) -> VMStatus:
        """State of one VM, whoever made it; the raw JSON carries the native
        state. Raise NotFound when it does not exist (the core answers
        ``exists=false``). Costs O(1) hypervisor calls."""

    @abstractmethod
    def list_vms(self) -> list[VMInfo]:
        """Every VM of the endpoint (templates are not VMs: left out),
        those this provider made and the others, O(1) hypervisor calls per
        VM; ``raw["managed"]`` is ``"true"`` for a VM of this provider
        (:meth:`owns`), else ``"false"``, and the raw fields carry the
        native state. Clients adopt the VMs they do not manage yet. A
        backend setting may narrow the list (the provider's own only)."""

    @abstractmethod
    def power(self, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
        """Change power state. Idempotent: powering on a running VM or off a
        stopped one succeeds. SHUTDOWN_GRACEFUL asks the guest (ACPI/agent),
        waits up to ``graceful_timeout`` seconds, then forces off. A paused VM
        powered ON is resumed. NotFound when the VM is missing."""

    @abstractmethod
    def delete(self, vm_id: str) -> Outcome[None]:
        """Stop and remove a VM with its disks and snapshots. A missing VM
        may raise NotFound: the core reports success (Delete is idempotent).
        A VM this provider did not make (only called so with
        ``manage_foreign_vms``) loses no disk another VM uses: say in the
        backend's docs what goes with it."""

    def lock_key(self, vm_id: str) -> str:
        """The one name of a VM under which the core serialises operations on
        it. Override when a VM answers to several ids (libvirt: UUID and
        name), so that calls naming it differently still wait for each other.
        Must be cheap, and return ``vm_id`` itself for a VM it cannot find
        (never raise NotFound: the operation reports that). Default: ``vm_id``.

        The names of images an operation writes (ImagePrepare, ImportDisk:
        ``image:<storage_hint>/<target_name>``) pass through it too: a
        backend whose empty storage hint means a default storage names that
        storage, so that a call naming it and one naming none wait for each
        other. Return any other name unchanged."""
        return vm_id

    def owns(self, vm_id: str) -> bool:
        """Whether this provider made the VM (Create or Clone through it),
        as opposed to one found on the hypervisor (an adopted VM). The core
        asks before every change to a VM (``Operation.owned``) unless the
        server's ``manage_foreign_vms`` is on, and refuses the change of a
        VM that is not its own with FAILED_PRECONDITION. Must be cheap (a
        hypervisor call or two; the operation follows at once). NotFound
        for a missing VM (the operation then reports it). Default: True,
        for backends that cannot tell: every VM counts as their own, and
        nothing is refused; ListVMs should then say so in its raw fields."""
        return True

    def copyable(self, vm_id: str) -> bool:
        """Whether Clone may copy this VM without ``manage_foreign_vms``:
        one this provider made, or one meant to be copied by anyone that the
        copy leaves untouched (a Proxmox template). Default: :meth:`owns`.
        Never True for a source the clone changes (libvirt's linked clones
        redefine their source)."""
        return self.owns(vm_id)

    def task_status(self, task_id: str) -> TaskState:
        """State of a native task returned through ``Outcome.native``. Raise
        NotFound for an id the backend does not know. Errors that pass (the
        hypervisor briefly unreachable) should be retried, not reported as a
        failed task."""
        raise NotFound(f"task {task_id!r} not found")

    # -- optional operations: override exactly those you declare ----------

    def reconfigure(self, vm_id: str, desired: DesiredVM) -> Outcome[None]:
        """RECONFIGURE. Bring CPU, memory and disk sizes to ``desired``.
        Applies all or nothing; raises FailedPrecondition naming what needs a
        power-off or reboot. Disks only grow (shrinking is InvalidArgument)."""
        raise NotImplementedError

    def snapshot_create(self, spec: SnapshotSpec) -> Outcome[str]:
        """SNAPSHOTS. Snapshot a VM, with memory when ``include_memory`` (only
        called so when MEMORY_SNAPSHOTS is declared). Returns the snapshot id."""
        raise NotImplementedError

    def snapshot_revert(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        """SNAPSHOTS. Revert to a snapshot; NotFound when it does not exist."""
        raise NotImplementedError

    def snapshot_delete(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        """SNAPSHOTS. Delete a snapshot. A missing one may raise NotFound:
        the core reports success."""
        raise NotImplementedError

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        """CLONE. Copy a VM to a new one with its own name, UUID and MACs,
        apply ``spec.customize``; return the new id. ``linked`` is only set
        when LINKED_CLONES is declared. Idempotent by target name like create."""
        raise NotImplementedError

    def image_prepare(self, spec: ImagePrepareSpec) -> Outcome[PreparedImage] | Outcome[None]:
        """IMAGE_PREPARE. Bring an image onto storage under ``target_name``,
        verifying its checksum. Idempotent when the image is already there.
        The value says, at once, how a Create names the image: its id (a
        TemplateName) and, for a file, its path; None leaves the client's
        prepared_image_id and prepared_image_path empty."""
        raise NotImplementedError

    def disk_info(self, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
        """DISK_INFO. Describe one disk (the primary one when ``disk_id`` is
        empty)."""
        raise NotImplementedError

    def export_disk(self, spec: ExportSpec) -> Outcome[ExportResult]:
        """DISK_EXPORT. Stream a disk, converted to ``spec.format``, to the
        destination URL; the final value carries the SHA256 of what was sent.
        ``compress`` is only set when EXPORT_COMPRESSION is declared."""
        raise NotImplementedError

    def import_disk(self, spec: ImportSpec) -> Outcome[ImportResult]:
        """DISK_IMPORT. Fetch a disk from the source URL onto storage,
        verifying the expected SHA256 and the image before it appears."""
        raise NotImplementedError

    def hardware_upgrade(self, vm_id: str, target_version: int) -> Outcome[None]:
        """HARDWARE_UPGRADE. Move a stopped VM to a newer hardware/machine
        version; FailedPrecondition when it runs, InvalidArgument when the
        target is not supported."""
        raise NotImplementedError
