"""The simulated hypervisor: machines in memory, optionally kept in a JSON file.

This plays the part a hypervisor API (libvirt, Proxmox) plays for a real
backend: it has its own records (:mod:`.machines`), its own rules and its
own exceptions (:class:`SimError` and subclasses), which the backend
translates through one table. It is thread-safe; every call is atomic.

A guest asked to shut down (ACPI) finishes doing so by itself after
``shutdown_seconds``, whether anyone watches or not, unless it ignores ACPI
(``sim.ignore_acpi`` in its ExtraConfig).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from .machines import CREATING, PAUSED, RUNNING, SHUTOFF, SHUTTING_DOWN, Image, Machine, Snapshot

STATE_VERSION = 1


class SimError(Exception):
    """Root of the simulated hypervisor's errors."""


class NoMachineError(SimError):
    pass


class NoSnapshotError(SimError):
    pass


class NoDiskError(SimError):
    pass


class NoImageError(SimError):
    pass


class NameInUseError(SimError):
    pass


class StateError(SimError):
    """The machine's state does not allow the operation now."""


class DependentsError(SimError):
    """Other machines' disks are overlays on this one's."""


class UnsupportedError(SimError):
    """The hypervisor cannot do this at all (shrink a disk, downgrade hardware)."""


class OutOfSpaceError(SimError):
    pass


class StateFileError(SimError):
    """The state file cannot be read or written."""


class Hypervisor:
    """One simulated host. Queries return copies; mutate only through methods."""

    def __init__(
        self, state_file: Path | None, *, storage_gib: int, shutdown_seconds: float, hardware_versions: Iterable[int]
    ) -> None:
        self.state_file = state_file
        self.storage_gib = storage_gib
        self.shutdown_seconds = shutdown_seconds
        self.hardware_versions = tuple(sorted(hardware_versions))
        self._lock = threading.RLock()
        self._machines: dict[str, Machine] = {}
        self._images: dict[str, Image] = {}
        self._next_console = 5900
        if state_file is not None and state_file.exists():
            self._load(state_file)

    # -- persistence -----------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StateFileError(f"cannot read state file {path}: {exc}") from exc
        if data.get("version") != STATE_VERSION:
            raise StateFileError(f"state file {path} has version {data.get('version')!r}, expected {STATE_VERSION}")
        for raw in data.get("machines", []):
            machine = Machine.from_json(raw)
            if machine.state == CREATING:  # the provider stopped mid-create: the disks never got written
                continue
            self._machines[machine.id] = machine
        for raw in data.get("images", []):
            image = Image.from_json(raw)
            self._images[image.name] = image
        self._next_console = max([m.console_port + 1 for m in self._machines.values()] + [5900])

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "version": STATE_VERSION,
            "machines": [m.to_json() for m in self._machines.values()],
            "images": [i.to_json() for i in self._images.values()],
        }
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            raise StateFileError(f"cannot write state file {self.state_file}: {exc.strerror}") from exc

    # -- queries -----------------------------------------------------------------

    def _settle(self, machine: Machine) -> Machine:
        if machine.state == SHUTTING_DOWN and machine.shutdown_at is not None and time.time() >= machine.shutdown_at:
            machine.state, machine.shutdown_at = SHUTOFF, None
        return machine

    def _get(self, vm_id: str) -> Machine:
        machine = self._machines.get(vm_id)
        if machine is None:
            raise NoMachineError(f"no machine with id {vm_id!r}")
        return self._settle(machine)

    def get(self, vm_id: str) -> Machine:
        with self._lock:
            return copy.deepcopy(self._get(vm_id))

    def find(self, name: str) -> Machine | None:
        with self._lock:
            for machine in self._machines.values():
                if machine.name == name:
                    return copy.deepcopy(self._settle(machine))
            return None

    def machines(self) -> list[Machine]:
        with self._lock:
            return [copy.deepcopy(self._settle(m)) for m in sorted(self._machines.values(), key=lambda m: (m.created, m.name))]

    def image(self, ref: str) -> Image:
        """An image by name or path."""
        with self._lock:
            for image in self._images.values():
                if ref in (image.name, image.path):
                    return copy.deepcopy(image)
            raise NoImageError(f"no image named {ref!r}")

    def images(self) -> list[Image]:
        with self._lock:
            return [copy.deepcopy(i) for i in sorted(self._images.values(), key=lambda i: i.name)]

    def used_gib(self) -> int:
        with self._lock:
            return sum(d.size_gib for m in self._machines.values() for d in m.disks) + sum(
                i.size_gib for i in self._images.values()
            )

    def _check_space(self, extra_gib: int) -> None:
        free = self.storage_gib - self.used_gib()
        if extra_gib > free:
            raise OutOfSpaceError(f"storage is full: {extra_gib} GiB needed, {free} GiB free")

    # -- machines ------------------------------------------------------------------

    def define(self, machine: Machine) -> None:
        """Add a machine (its id and name must be new)."""
        with self._lock:
            if any(m.name == machine.name for m in self._machines.values()):
                raise NameInUseError(f"a machine named {machine.name!r} exists")
            self._check_space(sum(d.size_gib for d in machine.disks))
            machine = copy.deepcopy(machine)
            machine.console_port = self._next_console
            machine.created = time.time()
            self._next_console += 1
            self._machines[machine.id] = machine
            self._save()

    def finish_creating(self, vm_id: str) -> None:
        with self._lock:
            machine = self._get(vm_id)
            if machine.state == CREATING:
                machine.state = SHUTOFF
                self._save()

    def undefine(self, vm_id: str) -> None:
        """Remove a machine with its disks and snapshots (forcing it off)."""
        with self._lock:
            self._get(vm_id)
            self.check_no_dependents(vm_id)
            del self._machines[vm_id]
            self._save()

    def check_no_dependents(self, vm_id: str) -> None:
        with self._lock:
            users = sorted(m.name for m in self._machines.values() if m.linked_from == vm_id)
            if users:
                raise DependentsError(f"linked clones use this machine's disks: {', '.join(users)}; delete them first")

    def _not_creating(self, machine: Machine) -> None:
        if machine.state == CREATING:
            raise StateError(f"machine {machine.name!r} is still being created")

    # -- power -------------------------------------------------------------------------

    def start(self, vm_id: str) -> None:
        """Start a stopped machine, or resume a paused one."""
        with self._lock:
            machine = self._get(vm_id)
            self._not_creating(machine)
            if machine.state == SHUTTING_DOWN:
                raise StateError(f"machine {machine.name!r} is shutting down; start it once it is off")
            machine.state = RUNNING
            self._save()

    def destroy(self, vm_id: str) -> None:
        """Force off (pull the plug)."""
        with self._lock:
            machine = self._get(vm_id)
            self._not_creating(machine)
            machine.state, machine.shutdown_at = SHUTOFF, None
            self._save()

    def acpi_shutdown(self, vm_id: str) -> None:
        """Press the power button: a cooperating guest goes off after
        ``shutdown_seconds``; one that ignores ACPI keeps running."""
        with self._lock:
            machine = self._get(vm_id)
            self._not_creating(machine)
            if machine.state == RUNNING and not machine.ignores_acpi:
                machine.state, machine.shutdown_at = SHUTTING_DOWN, time.time() + self.shutdown_seconds
                self._save()

    def resume(self, vm_id: str) -> None:
        """Let a paused machine run again (no-op in any other state)."""
        with self._lock:
            machine = self._get(vm_id)
            if machine.state == PAUSED:
                machine.state = RUNNING
                self._save()

    def reboot(self, vm_id: str) -> None:
        with self._lock:
            machine = self._get(vm_id)
            self._not_creating(machine)
            if machine.state != RUNNING:
                raise StateError(f"machine {machine.name!r} is not running; power it on instead")

    # -- configuration ---------------------------------------------------------------------

    def reconfigure(
        self,
        vm_id: str,
        *,
        cpu: int,
        memory_mib: int,
        disk_sizes: dict[str, int],
        max_cpu: int,
        max_memory_mib: int,
        online_cpu_memory: bool,
        online_disks: bool,
        dry_run: bool = False,
    ) -> None:
        """Set CPU, memory and disk sizes, all or nothing.

        A running machine takes more CPU and memory only with
        ``online_cpu_memory`` and up to its hot-plug maxima, never less; its
        disks grow only with ``online_disks``. Disks never shrink. A stopped
        machine takes anything and gets new maxima.
        """
        with self._lock:
            machine = self._get(vm_id)
            self._not_creating(machine)
            running = machine.state != SHUTOFF
            for name, size in disk_sizes.items():
                disk = machine.disk(name)
                if disk is None:
                    raise NoDiskError(f"machine {machine.name!r} has no disk {name!r}")
                if size < disk.size_gib:
                    raise UnsupportedError(f"disk {name!r} cannot shrink from {disk.size_gib} GiB to {size} GiB")
                if size > disk.size_gib and running and not online_disks:
                    raise StateError(f"growing disk {name!r} needs the machine powered off")
            if running and (cpu, memory_mib) != (machine.cpu, machine.memory_mib):
                if not online_cpu_memory:
                    raise StateError("changing CPU or memory needs the machine powered off")
                if cpu < machine.cpu or memory_mib < machine.memory_mib:
                    raise StateError("removing vCPUs or memory from a running guest needs the machine powered off")
                if cpu > machine.max_cpu or memory_mib > machine.max_memory_mib:
                    raise StateError(
                        f"{cpu} vCPUs / {memory_mib} MiB exceeds the hot-plug maximum of {machine.max_cpu} vCPUs / "
                        f"{machine.max_memory_mib} MiB set at power-off; power off to go higher"
                    )
            self._check_space(sum(size - d.size_gib for name, size in disk_sizes.items() if (d := machine.disk(name))))
            if dry_run:
                return
            machine.cpu, machine.memory_mib = cpu, memory_mib
            if not running:
                machine.max_cpu, machine.max_memory_mib = max(max_cpu, cpu), max(max_memory_mib, memory_mib)
            for name, size in disk_sizes.items():
                disk = machine.disk(name)
                assert disk is not None
                disk.size_gib = size
            self._save()

    def set_tags(self, vm_id: str, tags: list[str]) -> None:
        with self._lock:
            self._get(vm_id).tags = list(tags)
            self._save()

    def upgrade_hardware(self, vm_id: str, version: int, *, dry_run: bool = False) -> None:
        """Move a stopped machine to a newer machine version (0: the newest)."""
        with self._lock:
            machine = self._get(vm_id)
            self._not_creating(machine)
            target = version or self.hardware_versions[-1]
            if target not in self.hardware_versions:
                offered = ", ".join(map(str, self.hardware_versions))
                raise UnsupportedError(f"hardware version {target} is not offered by this host (offered: {offered})")
            if target < machine.hardware_version:
                raise UnsupportedError(f"hardware version {target} is older than the machine's {machine.hardware_version}")
            if machine.state != SHUTOFF:
                raise StateError("a hardware upgrade needs the machine powered off")
            if dry_run:
                return
            machine.hardware_version = target
            self._save()

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_create(self, vm_id: str, name: str, description: str, memory: bool) -> Snapshot:
        """Snapshot disks and configuration, plus memory when asked and running.
        Saving memory pauses a running machine: :meth:`resume` it once saved."""
        with self._lock:
            machine = self._get(vm_id)
            self._not_creating(machine)
            if name and machine.snapshot(name) is not None:
                raise NameInUseError(f"machine {machine.name!r} already has a snapshot named {name!r}")
            snap_id = "snap-" + uuid.uuid4().hex[:12]
            snap = Snapshot(
                id=snap_id,
                name=name or snap_id,
                description=description,
                created=time.time(),
                memory=memory and machine.state in (RUNNING, PAUSED),
                state=SHUTOFF if machine.state == SHUTOFF else RUNNING,
                cpu=machine.cpu,
                memory_mib=machine.memory_mib,
                disk_sizes={d.name: d.size_gib for d in machine.disks},
                hardware_version=machine.hardware_version,
            )
            machine.snapshots.append(snap)
            if snap.memory and machine.state == RUNNING:
                machine.state = PAUSED
            self._save()
            return copy.deepcopy(snap)

    def snapshot_get(self, vm_id: str, snap: str) -> Snapshot:
        with self._lock:
            machine = self._get(vm_id)
            found = machine.snapshot(snap)
            if found is None:
                raise NoSnapshotError(f"machine {machine.name!r} has no snapshot {snap!r}")
            return copy.deepcopy(found)

    def snapshot_revert(self, vm_id: str, snap: str) -> None:
        """Bring back the snapshot's configuration and disks; the machine runs
        afterwards only when the snapshot holds memory."""
        with self._lock:
            machine = self._get(vm_id)
            found = self.snapshot_get(vm_id, snap)
            machine.cpu, machine.memory_mib = found.cpu, found.memory_mib
            machine.max_cpu, machine.max_memory_mib = (
                max(machine.max_cpu, found.cpu),
                max(machine.max_memory_mib, found.memory_mib),
            )
            machine.hardware_version = found.hardware_version
            for disk in machine.disks:
                disk.size_gib = found.disk_sizes.get(disk.name, disk.size_gib)
            machine.state = RUNNING if found.memory else SHUTOFF
            machine.shutdown_at = None
            self._save()

    def snapshot_delete(self, vm_id: str, snap: str) -> None:
        with self._lock:
            machine = self._get(vm_id)
            found = self.snapshot_get(vm_id, snap)
            machine.snapshots = [s for s in machine.snapshots if s.id != found.id]
            self._save()

    # -- images --------------------------------------------------------------------------------

    def add_image(self, image: Image) -> bool:
        """Register an image; False when the same one is already there."""
        with self._lock:
            have = self._images.get(image.name)
            if have is not None:
                if (have.source, have.checksum) == (image.source, image.checksum):
                    return False
                raise NameInUseError(f"an image named {image.name!r} exists with another source ({have.source or 'built in'})")
            self._check_space(image.size_gib)
            self._images[image.name] = copy.deepcopy(image)
            self._save()
            return True
