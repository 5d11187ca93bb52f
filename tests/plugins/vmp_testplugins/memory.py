"""An in-memory backend the tests can steer and observe.

VMs live in a dict keyed by name (a VM's id is its name). Settings choose
how operations run: at once, as core-tracked background work
(``Outcome.later``) or as backend-native tasks (``Outcome.native``). VMs whose
name starts with ``slow_prefix`` are slow: operations on them sleep
``delay_seconds`` and wait on :attr:`MemoryBackend.gate`, which tests close to
hold them inside the backend.

For the tests' eyes the backend records what happened: calls per method,
the thread and deadline each call saw, the specs it received, how many operations were
inside at once, and any two mutations of one VM that overlapped.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field

from provider_core import (
    Backend,
    BackendSettings,
    Capability,
    CloneSpec,
    CreateSpec,
    DesiredVM,
    DiskDetails,
    ExportResult,
    ExportSpec,
    FailedPrecondition,
    ImagePrepareSpec,
    ImportResult,
    ImportSpec,
    NotFound,
    Outcome,
    PowerOp,
    PowerState,
    SnapshotSpec,
    TaskState,
    Unavailable,
    ValidationReport,
    VMInfo,
    VMStatus,
    deadline,
)

T = TypeVar("T")


class MemorySettings(BackendSettings):
    delay_seconds: float = Field(0.0, ge=0, description="extra time operations on slow VMs take")
    slow_prefix: str = Field("slow-", min_length=1, description="VMs whose name starts with this are slow")
    background: bool = Field(False, description="run mutations as core-tracked background work (Outcome.later)")
    numbered_ids: bool = Field(False, description="give VMs numbers as ids, like Proxmox's VMIDs (names still work)")
    native_tasks: bool = Field(False, description="run mutations as backend-native tasks (Outcome.native)")
    slow_calls: bool = Field(
        False, description="a mutation of a slow VM also waits on call_gate in the backend method, before returning its outcome"
    )
    fail_connect_file: Path | None = Field(
        None,
        description="connect() and ping() raise Unavailable while this file exists (an untranslated error if it says 'crash')",
    )
    trace_dir: Path | None = Field(None, description="touch <dir>/<op>-<vm> when an operation on a slow VM starts")


@dataclass
class MemoryVM:
    name: str
    power: PowerState = PowerState.OFF
    cpu: int = 1
    memory_mib: int = 512
    disks_gib: list[int] = field(default_factory=lambda: [10])
    snapshots: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


class MemoryBackend(Backend):
    """The mandatory operations only."""

    Settings: ClassVar[type[BackendSettings]] = MemorySettings
    settings: MemorySettings
    disk_types = ("thin",)
    network_types = ("memory",)

    def __init__(self, settings: BackendSettings) -> None:
        assert isinstance(settings, MemorySettings)
        super().__init__(settings)
        self.vms: dict[str, MemoryVM] = {}
        #: VM ids given by number (numbered_ids) and the names they stand for.
        self.numbers: dict[str, str] = {}
        #: Closed by tests to hold operations on slow VMs inside the backend.
        self.gate = threading.Event()
        self.gate.set()
        self.call_gate = threading.Event()
        self.call_gate.set()
        #: Raised by every following operation while set.
        self.fail_with: BaseException | None = None
        self.calls: Counter[str] = Counter()
        self.deadlines: dict[str, float | None] = {}
        self.threads: dict[str, str] = {}
        self.specs: dict[str, Any] = {}
        self.inside: Counter[str] = Counter()
        self.overlaps: list[tuple[str, str]] = []
        self.active = 0
        self.peak = 0
        self.native: dict[str, TaskState] = {}
        self.connects = 0
        self.closed = False
        self._lock = threading.Condition()

    # -- instrumentation ----------------------------------------------------------

    def _record(self, op: str, spec: Any = None) -> None:
        with self._lock:
            self.calls[op] += 1
            self.deadlines[op] = deadline.remaining()
            self.threads[op] = threading.current_thread().name
            if spec is not None:
                self.specs[op] = spec

    @contextmanager
    def _inside(self, op: str, vm: str, mutation: bool) -> Iterator[None]:
        with self._lock:
            if mutation and self.inside[vm]:
                self.overlaps.append((op, vm))
            if mutation:
                self.inside[vm] += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            self._lock.notify_all()
        try:
            if vm.startswith(self.settings.slow_prefix):
                if self.settings.trace_dir is not None:
                    (self.settings.trace_dir / f"{op}-{vm}").touch()
                self.gate.wait()
                if self.settings.delay_seconds:
                    threading.Event().wait(self.settings.delay_seconds)
            if self.fail_with is not None:
                raise self.fail_with
            yield
        finally:
            with self._lock:
                if mutation:
                    self.inside[vm] -= 1
                self.active -= 1
                self._lock.notify_all()

    def wait_active(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` operations are inside the backend at once."""
        with self._lock:
            return self._lock.wait_for(lambda: self.active >= count, timeout)

    #: A VM also answers to this prefix plus its name (like libvirt's UUID and name).
    ALIAS = "alias:"

    def lock_key(self, vm_id: str) -> str:
        return vm_id.removeprefix(self.ALIAS)

    def _run(self, op: str, vm: str, value: T, body: Callable[[], T | None]) -> Outcome[T]:
        """Run a mutation the way the settings say: now, later, or natively."""
        vm = self._name(vm)
        if self.settings.slow_calls and vm.startswith(self.settings.slow_prefix):
            self.call_gate.wait()

        def work() -> T | None:
            with self._inside(op, vm, mutation=True):
                return body()

        if self.settings.native_tasks:
            task_id = f"mem-{uuid.uuid4().hex[:12]}"
            self.native[task_id] = TaskState(done=False)
            threading.Thread(target=self._native, args=(task_id, work), daemon=True).start()
            return Outcome.native(value, task_id)
        if self.settings.background:
            return Outcome.later(value, work)
        result = work()
        return Outcome.done(value if result is None else result)

    def _native(self, task_id: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as exc:
            self.native[task_id] = TaskState(done=True, error=str(exc) or type(exc).__name__)
        else:
            self.native[task_id] = TaskState(done=True)

    def _name(self, vm_id: str) -> str:
        return self.numbers.get(vm_id, self.lock_key(vm_id))

    def _vm(self, vm_id: str) -> MemoryVM:
        try:
            return self.vms[self._name(vm_id)]
        except KeyError:
            raise NotFound(f"VM {vm_id!r} not found") from None

    # -- life cycle -------------------------------------------------------------------

    def _check_reachable(self) -> None:
        path = self.settings.fail_connect_file
        if path is not None and path.exists():
            if path.read_text().strip() == "crash":  # a backend that forgot to translate its library's error
                raise ConnectionRefusedError(111, "Connection refused")
            raise Unavailable("memory hypervisor unreachable (flag file present)")

    def connect(self) -> None:
        self.connects += 1
        self._check_reachable()

    def ping(self) -> None:
        self._check_reachable()

    def close(self) -> None:
        self.closed = True

    # -- mandatory operations ---------------------------------------------------------

    def validate(self) -> ValidationReport:
        self._record("validate")
        return ValidationReport(ok=True, message=f"{len(self.vms)} VM(s) in memory")

    def create(self, spec: CreateSpec) -> Outcome[str]:
        self._record("create", spec)

        vm_id = spec.name
        if self.settings.numbered_ids:
            known = [number for number, name in self.numbers.items() if name == spec.name]
            vm_id = known[0] if known else str(100 + len(self.numbers))
            self.numbers[vm_id] = spec.name

        def body() -> str:
            if spec.name not in self.vms:
                cpu = spec.vm_class.cpu or 1
                memory = spec.vm_class.memory_mib or 512
                disks = [d.size_gib for d in spec.disks] or [10]
                self.vms[spec.name] = MemoryVM(spec.name, cpu=cpu, memory_mib=memory, disks_gib=disks, tags=list(spec.tags))
            return vm_id

        return self._run("create", spec.name, vm_id, body)

    def describe(self, vm_id: str) -> VMStatus:
        self._record("describe")
        with self._inside("describe", vm_id, mutation=False):
            vm = self._vm(vm_id)
            return VMStatus(power_state=vm.power, raw={"name": vm.name, "cpu": vm.cpu, "memory_mib": vm.memory_mib})

    def list_vms(self) -> list[VMInfo]:
        self._record("list_vms")
        return [
            VMInfo(id=vm.name, name=vm.name, power_state=vm.power, cpu=vm.cpu, memory_mib=vm.memory_mib)
            for vm in list(self.vms.values())
        ]

    def power(self, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
        self._record("power", (op, graceful_timeout))
        target = PowerState.OFF if op in (PowerOp.OFF, PowerOp.SHUTDOWN_GRACEFUL) else PowerState.ON

        def body() -> None:
            self._vm(vm_id).power = target

        return self._run("power", vm_id, None, body)

    def delete(self, vm_id: str) -> Outcome[None]:
        self._record("delete")

        def body() -> None:
            self._vm(vm_id)
            del self.vms[self._name(vm_id)]

        return self._run("delete", self._name(vm_id), None, body)

    def task_status(self, task_id: str) -> TaskState:
        self._record("task_status", task_id)
        try:
            return self.native[task_id]
        except KeyError:
            raise NotFound(f"task {task_id!r} not found") from None


class MemoryPlusBackend(MemoryBackend):
    """Every optional operation, none of their refinements (so the tests can
    check that linked clones, memory snapshots and compression are refused)."""

    capabilities = frozenset(
        {
            Capability.RECONFIGURE,
            Capability.SNAPSHOTS,
            Capability.CLONE,
            Capability.IMAGE_PREPARE,
            Capability.DISK_INFO,
            Capability.DISK_EXPORT,
            Capability.DISK_IMPORT,
            Capability.HARDWARE_UPGRADE,
        }
    )
    export_formats = ("qcow2", "raw")
    import_formats = ("qcow2",)

    def reconfigure(self, vm_id: str, desired: DesiredVM) -> Outcome[None]:
        self._record("reconfigure", desired)

        def body() -> None:
            vm = self._vm(vm_id)
            if desired.vm_class is not None:
                vm.cpu = desired.vm_class.cpu or vm.cpu
                vm.memory_mib = desired.vm_class.memory_mib or vm.memory_mib

        return self._run("reconfigure", vm_id, None, body)

    def snapshot_create(self, spec: SnapshotSpec) -> Outcome[str]:
        self._record("snapshot_create", spec)
        snap = spec.name or f"snap-{uuid.uuid4().hex[:8]}"

        def body() -> None:
            self._vm(spec.vm_id).snapshots.append(snap)

        return self._run("snapshot_create", spec.vm_id, snap, body)

    def snapshot_revert(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        self._record("snapshot_revert")

        def body() -> None:
            if snapshot_id not in self._vm(vm_id).snapshots:
                raise NotFound(f"snapshot {snapshot_id!r} of VM {vm_id!r} not found")

        return self._run("snapshot_revert", vm_id, None, body)

    def snapshot_delete(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        self._record("snapshot_delete")

        def body() -> None:
            snaps = self._vm(vm_id).snapshots
            if snapshot_id not in snaps:
                raise NotFound(f"snapshot {snapshot_id!r} of VM {vm_id!r} not found")
            snaps.remove(snapshot_id)

        return self._run("snapshot_delete", vm_id, None, body)

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        self._record("clone", spec)

        def body() -> str:
            src = self._vm(spec.source_vm_id)
            if spec.target_name not in self.vms:
                self.vms[spec.target_name] = MemoryVM(
                    spec.target_name, cpu=spec.vm_class.cpu or src.cpu, memory_mib=src.memory_mib
                )
            return spec.target_name

        return self._run("clone", spec.source_vm_id, spec.target_name, body)

    def image_prepare(self, spec: ImagePrepareSpec) -> Outcome[None]:
        self._record("image_prepare", spec)
        return self._run("image_prepare", f"image:{spec.target_name}", None, lambda: None)

    def disk_info(self, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
        self._record("disk_info")
        vm = self._vm(vm_id)
        return DiskDetails(disk_id=disk_id or "disk0", format="qcow2", virtual_size_bytes=vm.disks_gib[0] * 2**30)

    def export_disk(self, spec: ExportSpec) -> Outcome[ExportResult]:
        self._record("export_disk", spec)
        self._vm(spec.vm_id)
        return Outcome.done(ExportResult(export_id=f"export-{spec.vm_id}", checksum="0" * 64))

    def import_disk(self, spec: ImportSpec) -> Outcome[ImportResult]:
        self._record("import_disk", spec)
        return Outcome.done(ImportResult(disk_id=spec.target_name, checksum=spec.expected_checksum))

    def hardware_upgrade(self, vm_id: str, target_version: int) -> Outcome[None]:
        self._record("hardware_upgrade", target_version)

        def body() -> None:
            if self._vm(vm_id).power is PowerState.ON:
                raise FailedPrecondition(f"VM {vm_id!r} must be stopped for a hardware upgrade")

        return self._run("hardware_upgrade", vm_id, None, body)
