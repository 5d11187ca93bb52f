"""The libvirt backend: QEMU/KVM hosts (``qemu:///system``, ``qemu+ssh://``,
``qemu+tls://``) and libvirt's built-in test hypervisor (``test:///default``).

This class is thin: it holds the connection and the helpers every operation
uses (:meth:`conn`, :meth:`lookup`, :meth:`pool`, :meth:`domain_disks`,
:meth:`translate`); the operations live in modules named for them. The disk
data path (ImagePrepare, ExportDisk, ImportDisk, image downloads) comes from
the :class:`~vm_provider_libvirt.datapath.DiskTransfers` mixin.

VM ids are domain UUIDs (stable across renames); every call also accepts a
domain name. Domains made by vm-provider carry its mark
(:mod:`~vm_provider_libvirt.marks`): ListVMs lists those, Delete refuses
others, Create is idempotent only for them.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import ClassVar, TypeVar
from urllib.parse import urlsplit

import libvirt

from provider_core import (
    Backend,
    Capability,
    CloneSpec,
    CreateSpec,
    DesiredVM,
    DiskDetails,
    FailedPrecondition,
    NotFound,
    Outcome,
    PowerOp,
    ProviderError,
    SnapshotSpec,
    Unavailable,
    ValidationReport,
    VMInfo,
    VMStatus,
)

from . import errors, networks, queries, readcache, snapshots
from .clone import clone as clone_vm
from .connection import Connection
from .create import create as create_vm
from .datapath import DiskTransfers
from .domxml import DomainDisk, disks, parse
from .host import HostInfo, choose_domain_type
from .power import power as set_power
from .reconfigure import reconfigure as reconfigure_vm
from .removal import delete as delete_vm
from .settings import LibvirtSettings
from .upgrade import hardware_upgrade as upgrade_vm

log = logging.getLogger(__name__)
T = TypeVar("T")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

_OWN: frozenset[Capability] = frozenset(
    {
        Capability.RECONFIGURE,
        Capability.RECONFIGURE_ONLINE,
        Capability.DISK_EXPANSION_ONLINE,
        Capability.SNAPSHOTS,
        Capability.MEMORY_SNAPSHOTS,
        Capability.CLONE,
        Capability.LINKED_CLONES,
        Capability.DISK_INFO,
        Capability.HARDWARE_UPGRADE,
    }
)


class LibvirtBackend(DiskTransfers, Backend):
    """vm-provider on libvirt. Settings: :class:`LibvirtSettings`."""

    Settings = LibvirtSettings
    capabilities: ClassVar[frozenset[Capability]] = _OWN | getattr(DiskTransfers, "CAPABILITIES", frozenset())
    disk_types: ClassVar[tuple[str, ...]] = ("thin", "thick", "qcow2", "raw")
    network_types: ClassVar[tuple[str, ...]] = ("network", "bridge")
    export_formats: ClassVar[tuple[str, ...]] = getattr(DiskTransfers, "EXPORT_FORMATS", ())
    import_formats: ClassVar[tuple[str, ...]] = getattr(DiskTransfers, "IMPORT_FORMATS", ())

    settings: LibvirtSettings

    def __init__(self, settings: LibvirtSettings) -> None:
        super().__init__(settings)
        self.connection = Connection(settings.uri, settings.reconnect_attempts)
        self._host: tuple[int, HostInfo] | None = None
        self._domain_type = ""
        self._probe_lock = threading.Lock()
        self.handles = readcache.Handles()
        self.parsed = readcache.Parsed()
        self.changes = readcache.Changes()
        self._leases: tuple[int, networks.Leases] | None = None

    # -- life cycle ---------------------------------------------------------------

    def connect(self) -> None:
        self.host()

    def ping(self) -> None:
        conn = self.conn()
        try:
            conn.getLibVersion()
        except libvirt.libvirtError as exc:
            raise self.translate(exc) from exc

    def close(self) -> None:
        self.connection.close()

    def checked(self) -> None:
        """Before a change: make sure the connection still reaches the
        daemon, reconnecting if not. A local daemon's restart is noticed
        only by the call that meets the closed socket (no event loop watches
        it, see :mod:`.connection`); a read is then simply retried, a change
        is not, so a change first spends one cheap call that is."""
        self.reading(self.ping)

    def changing(self, change: Callable[[], Outcome[T]]) -> Outcome[T]:
        """Run a change to domains: first :meth:`checked`, and while it and
        its background work run, Describe reads every XML afresh
        (:class:`~vm_provider_libvirt.readcache.Changes`)."""
        self.changes.begin()
        try:
            self.checked()
            outcome = change()
        except BaseException:
            self.changes.end()
            raise
        work = outcome.work
        if work is None:
            self.changes.end()
            return outcome

        def tracked() -> T | None:
            try:
                return work()
            finally:
                self.changes.end()

        return replace(outcome, work=tracked)

    # -- helpers shared by the operation modules and the data-path mixin -----------

    def conn(self) -> libvirt.virConnect:
        """The live connection (reopened when the daemon went away);
        Unavailable when libvirt cannot be reached."""
        return self.connection.get()

    def translate(self, exc: libvirt.libvirtError, context: str = "") -> ProviderError:
        """The core error for a libvirt error (the one table in
        :mod:`~vm_provider_libvirt.errors`); marks the connection dead when
        the error says it is."""
        if errors.connection_lost(exc):
            self.connection.invalidate()
        return errors.translate(exc, context)

    @contextmanager
    def translated(self, context: str = "") -> Iterator[None]:
        """Run a block, turning libvirt errors into core errors."""
        try:
            yield
        except libvirt.libvirtError as exc:
            raise self.translate(exc, context) from exc

    def reading(self, fn: Callable[[], T]) -> T:
        """Run a read-only operation; when the connection turns out to be
        dead, reconnect and run it once more."""
        try:
            return fn()
        except Unavailable as exc:
            cause = exc.__cause__
            if not (isinstance(cause, libvirt.libvirtError) and errors.connection_lost(cause)):
                raise
            log.info("retrying a read after the libvirt connection was lost")
        return fn()

    def host(self) -> HostInfo:
        """Facts about the host, read once per connection."""
        conn = self.conn()
        cached = self._host
        if cached is not None and cached[0] == self.connection.generation:
            return cached[1]
        with self.translated("reading host capabilities"):
            info = HostInfo.read(conn)
        self._host = (self.connection.generation, info)
        return info

    def domain_type(self) -> str:
        """``<domain type>`` of new VMs (probed once, see :mod:`.host`)."""
        if self._domain_type:
            return self._domain_type
        with self._probe_lock:
            if not self._domain_type:
                host = self.host()
                with self.translated("choosing the domain type"):
                    self._domain_type = choose_domain_type(self.conn(), host, self.settings.domain_type)
        return self._domain_type

    def lookup(self, vm_id: str) -> libvirt.virDomain:
        """The domain with this UUID or name; NotFound otherwise."""
        conn = self.conn()
        try:
            if UUID_RE.match(vm_id):
                try:
                    return conn.lookupByUUIDString(vm_id)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return conn.lookupByName(vm_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"VM {vm_id!r} not found") from exc
            raise self.translate(exc) from exc

    def lock_key(self, vm_id: str) -> str:
        """A VM answers to its UUID and its name: serialise on the UUID."""
        if UUID_RE.match(vm_id):
            return vm_id.lower()
        try:
            return str(self.lookup(vm_id).UUIDString())
        except ProviderError:
            return vm_id

    def lookup_cached(self, vm_id: str) -> libvirt.virDomain:
        """:meth:`lookup`, reusing the handle of a UUID looked up before on
        this connection (for reads; a handle of a domain that is gone makes
        its first call fail with VIR_ERR_NO_DOMAIN: then :meth:`forget` it)."""
        if not UUID_RE.match(vm_id):
            return self.lookup(vm_id)
        self.conn()  # reconnects first when the daemon went away
        return self.handles.get(vm_id, self.connection.generation, lambda: self.lookup(vm_id))

    def forget(self, vm_id: str) -> None:
        """Drop what the read caches hold about a VM (it is gone)."""
        self.handles.drop(vm_id.lower())
        self.parsed.drop(vm_id.lower())  # by UUID (a name's entry ages out)

    def leases(self) -> networks.Leases:
        """DHCP leases for Describe, reused for a short while (see
        :class:`~vm_provider_libvirt.networks.Leases`)."""
        conn = self.conn()
        generation = self.connection.generation
        cached = self._leases
        if cached is not None and cached[0] == generation:
            return cached[1]
        leases = networks.Leases(conn, networks.DESCRIBE_TTL)
        self._leases = (generation, leases)
        return leases

    def find_by_name(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self.translate(exc) from exc

    def pool(self, name: str = "") -> libvirt.virStoragePool:
        """The storage pool ``name`` ("" = ``settings.pool``); NotFound
        naming it when it does not exist, FailedPrecondition when inactive.

        On the test driver, whose only pool is ``default-pool``, the default
        setting ``pool = "default"`` falls back to that only pool."""
        conn = self.conn()
        want = name or self.settings.pool
        try:
            try:
                pool = conn.storagePoolLookupByName(want)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = self._fallback_pool(conn, name)
                if pool is None:
                    raise NotFound(f"storage pool {want!r} not found") from exc
            if not pool.isActive():
                raise FailedPrecondition(f"storage pool {want!r} is not active (start it with virsh pool-start {want})")
        except libvirt.libvirtError as exc:
            raise self.translate(exc, f"storage pool {want!r}") from exc
        return pool

    def _fallback_pool(self, conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
        if name or not self.host().is_test:
            return None
        pools = conn.listAllStoragePools(0)
        return pools[0] if len(pools) == 1 else None

    def domain_disks(self, dom: libvirt.virDomain) -> list[DomainDisk]:
        """Disks of a domain (its inactive config when stopped), in order;
        the first non-CD-ROM disk is the primary one."""
        with self.translated(f"VM {dom.name()!r}"):
            return disks(parse(dom.XMLDesc(0)))

    def console_host(self) -> str:
        """Host name for console URLs: the setting, else the URI's host."""
        return self.settings.console_host or urlsplit(self.settings.uri).hostname or "127.0.0.1"

    # -- mandatory operations -----------------------------------------------------

    def validate(self) -> ValidationReport:
        return queries.validate(self)

    def create(self, spec: CreateSpec) -> Outcome[str]:
        return self.changing(lambda: create_vm(self, spec))

    def describe(self, vm_id: str) -> VMStatus:
        return self.reading(lambda: queries.describe(self, vm_id))

    def list_vms(self) -> list[VMInfo]:
        return self.reading(lambda: queries.list_vms(self))

    def power(self, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
        return self.changing(lambda: set_power(self, vm_id, op, graceful_timeout))

    def delete(self, vm_id: str) -> Outcome[None]:
        return self.changing(lambda: delete_vm(self, vm_id))

    # -- optional operations ------------------------------------------------------

    def reconfigure(self, vm_id: str, desired: DesiredVM) -> Outcome[None]:
        return self.changing(lambda: reconfigure_vm(self, vm_id, desired))

    def snapshot_create(self, spec: SnapshotSpec) -> Outcome[str]:
        return self.changing(lambda: snapshots.create(self, spec))

    def snapshot_revert(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        return self.changing(lambda: snapshots.revert(self, vm_id, snapshot_id))

    def snapshot_delete(self, vm_id: str, snapshot_id: str) -> Outcome[None]:
        return self.changing(lambda: snapshots.delete(self, vm_id, snapshot_id))

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        return self.changing(lambda: clone_vm(self, spec))

    def disk_info(self, vm_id: str, disk_id: str, snapshot_id: str) -> DiskDetails:
        return self.reading(lambda: queries.disk_info(self, vm_id, disk_id, snapshot_id))

    def hardware_upgrade(self, vm_id: str, target_version: int) -> Outcome[None]:
        return self.changing(lambda: upgrade_vm(self, vm_id, target_version))
