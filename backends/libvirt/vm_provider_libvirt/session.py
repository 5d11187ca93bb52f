"""The bottom layer of the libvirt backend: one libvirt connection and what
is known about it. Every operation module and the disk data path work
through a :class:`Session`; nothing here knows of them.

It holds:

- the connection (:class:`~vm_provider_libvirt.connection.Connection`,
  opened again after the daemon went away) and :meth:`Session.checked`;
- the one boundary where libvirt errors become the core's errors
  (:meth:`Session.translated`, through the table of
  :mod:`~vm_provider_libvirt.errors`), which :meth:`Session.reading`,
  :meth:`Session.changing` and :meth:`Session.transferring` put around each
  public operation, its background work included;
- facts about the host, read once per connection, and the domain type of
  new VMs (:mod:`~vm_provider_libvirt.host`);
- lookup of domains by UUID or name, of storage pools, volumes and
  networks;
- the private caches of Describe and ListVMs
  (:mod:`~vm_provider_libvirt.readcache`): domain handles, what was read of
  each domain's XML, the changes under way, the DHCP leases.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit

import libvirt

from provider_core import FailedPrecondition, NotFound, Outcome, ProviderError, Unavailable

from . import errors, readcache, storage
from .connection import Connection
from .domxml import DomainDisk, disks, parse
from .host import HostInfo, choose_domain_type
from .login import Login
from .settings import LibvirtSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


class Session:
    """One libvirt endpoint as the operations see it."""

    def __init__(self, settings: LibvirtSettings) -> None:
        self.settings = settings
        self.connection = Connection(Login.of(settings), settings.reconnect_attempts)
        self._host: tuple[int, HostInfo] | None = None
        self._domain_type = ""
        self._probe_lock = threading.Lock()
        self._handles = readcache.Handles()
        self._parsed = readcache.Parsed()
        self._changes = readcache.Changes()
        self._leases: tuple[int, readcache.Leases] | None = None

    # -- the connection ----------------------------------------------------------------

    def conn(self) -> libvirt.virConnect:
        """The live connection (reopened when the daemon went away);
        Unavailable when libvirt cannot be reached."""
        return self.connection.get()

    def connect(self) -> None:
        """Open the connection and read the host's facts."""
        self.host()

    def ping(self) -> None:
        conn = self.conn()
        with self.translated():
            conn.getLibVersion()

    def close(self) -> None:
        self.connection.close()

    def checked(self) -> None:
        """Before a change: make sure the connection still reaches the
        daemon, reconnecting if not. A local daemon's restart is noticed
        only by the call that meets the closed socket (no event loop watches
        it, see :mod:`.connection`); a read is then simply retried, a change
        is not, so a change first spends one cheap call that is."""
        self.reading(self.ping)

    # -- the boundary ------------------------------------------------------------------

    def translate(self, exc: libvirt.libvirtError, context: str = "") -> ProviderError:
        """The core error for a libvirt error (the one table in
        :mod:`~vm_provider_libvirt.errors`); marks the connection dead when
        the error says it is."""
        if errors.connection_lost(exc):
            self.connection.invalidate()
        return errors.translate(exc, context)

    @contextmanager
    def translated(self, context: str = "") -> Iterator[None]:
        """Run a block, turning libvirt errors into core errors; ``context``
        (``"VM 'web-1'"``) goes in front of the message."""
        try:
            yield
        except libvirt.libvirtError as exc:
            raise self.translate(exc, context) from exc

    def reading(self, read: Callable[[], T]) -> T:
        """Run a read-only operation; when the connection turns out to be
        dead, reconnect and run it once more."""
        try:
            with self.translated():
                return read()
        except Unavailable as exc:
            cause = exc.__cause__
            if not (isinstance(cause, libvirt.libvirtError) and errors.connection_lost(cause)):
                raise
            log.info("retrying a read after the libvirt connection was lost")
        with self.translated():
            return read()

    def changing(self, change: Callable[[], Outcome[T]]) -> Outcome[T]:
        """Run a change to domains (see :meth:`_run`); while it and its
        background work run, Describe reads every XML afresh
        (:class:`~vm_provider_libvirt.readcache.Changes`)."""
        self._changes.begin()
        try:
            outcome = self._run(change)
        except BaseException:
            self._changes.end()
            raise
        work = outcome.work
        if work is None:
            self._changes.end()
            return outcome

        def tracked() -> T | None:
            try:
                return work()
            finally:
                self._changes.end()

        return replace(outcome, work=tracked)

    def transferring(self, transfer: Callable[[], Outcome[T]]) -> Outcome[T]:
        """Run an operation of the disk data path, which changes volumes but
        no domain: Describe goes on reusing what it read (see :meth:`_run`)."""
        return self._run(transfer)

    def _run(self, operation: Callable[[], Outcome[T]]) -> Outcome[T]:
        """First :meth:`checked`, then the operation, its libvirt errors
        translated, in its background work too."""
        self.checked()
        with self.translated():
            outcome = operation()
        work = outcome.work
        if work is None:
            return outcome

        def translated() -> T | None:
            with self.translated():
                return work()

        return replace(outcome, work=translated)

    # -- facts -------------------------------------------------------------------------

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

    def console_host(self) -> str:
        """Host name for console URLs: the setting, else the URI's host."""
        return self.settings.console_host or urlsplit(self.settings.uri).hostname or "127.0.0.1"

    def is_local(self) -> bool:
        """Whether libvirt runs on this machine (the URI names no host), so
        that a path in its XML is a path here too."""
        return not urlsplit(self.settings.uri).hostname

    # -- domains -----------------------------------------------------------------------

    def lookup(self, vm_id: str) -> libvirt.virDomain:
        """The domain with this UUID or name; NotFound otherwise."""
        conn = self.conn()
        dom: libvirt.virDomain | None = None
        with self.translated(f"VM {vm_id!r}"):
            if UUID_RE.match(vm_id):
                with errors.ignoring(errors.is_missing_domain):
                    dom = conn.lookupByUUIDString(vm_id)
            if dom is None:
                with errors.ignoring(errors.is_missing_domain):
                    dom = conn.lookupByName(vm_id)
        if dom is None:
            raise NotFound(f"VM {vm_id!r} not found")
        return dom

    def find_domain(self, name: str) -> libvirt.virDomain | None:
        """The domain of that name, or None."""
        conn = self.conn()
        with self.translated(f"VM {name!r}"), errors.ignoring(errors.is_missing_domain):
            return conn.lookupByName(name)
        return None

    def lock_key(self, vm_id: str) -> str:
        """A VM answers to its UUID and its name: serialise on the UUID."""
        if UUID_RE.match(vm_id):
            return vm_id.lower()
        try:
            return str(self.lookup(vm_id).UUIDString())
        except ProviderError:
            return vm_id

    @contextmanager
    def reading_domain(self, vm_id: str) -> Iterator[libvirt.virDomain]:
        """A block reading one domain, by a handle kept from an earlier
        lookup of its UUID on this connection. When a call in it says the
        domain is gone, its handle and what was read of it are dropped and
        the block ends with NotFound; other libvirt errors are translated."""
        if UUID_RE.match(vm_id):
            self.conn()  # reconnects first when the daemon went away
            dom = self._handles.get(vm_id, self.connection.generation, lambda: self.lookup(vm_id))
        else:
            dom = self.lookup(vm_id)
        try:
            yield dom
        except libvirt.libvirtError as exc:
            if errors.is_missing_domain(exc):
                self._handles.drop(vm_id.lower())
                self._parsed.drop(vm_id.lower())  # by UUID (a name's entry ages out)
                raise NotFound(f"VM {vm_id!r} not found") from exc
            raise self.translate(exc, f"VM {vm_id!r}") from exc

    def domain_disks(self, dom: libvirt.virDomain) -> list[DomainDisk]:
        """Disks of a domain (its inactive config when stopped), in order;
        the first non-CD-ROM disk is the primary one."""
        with self.translated(f"VM {dom.name()!r}"):
            return disks(parse(dom.XMLDesc(0)))

    # -- what Describe and ListVMs reuse ------------------------------------------------

    def quiet(self) -> int | None:
        """The epoch of changes through this backend when none is under way
        (else None); read it before reading a domain
        (:meth:`readcache.Changes.quiet`)."""
        return self._changes.quiet()

    def facts(
        self,
        dom: libvirt.virDomain,
        uuid: str,
        state: int,
        epoch: int | None,
        derive: Callable[[str], readcache.Facts],
    ) -> readcache.Facts:
        """What ``derive`` makes of the domain's XML: reused while the last
        read is recent (:meth:`readcache.Parsed.recent`), else read again
        (raises libvirtError for the caller's boundary)."""
        facts = self._parsed.recent(uuid, state, epoch, readcache.DESCRIBE_TTL)
        if facts is None:
            facts = self._parsed.get(uuid, dom.XMLDesc(0), derive, state, epoch)
        return facts

    def leases(self) -> readcache.Leases:
        """DHCP leases for Describe, reused for a short while (see
        :class:`~vm_provider_libvirt.readcache.Leases`)."""
        conn = self.conn()
        generation = self.connection.generation
        cached = self._leases
        if cached is not None and cached[0] == generation:
            return cached[1]
        leases = readcache.Leases(conn, readcache.DESCRIBE_TTL)
        self._leases = (generation, leases)
        return leases

    # -- storage and networks ---------------------------------------------------------------

    def pool(self, name: str = "") -> libvirt.virStoragePool:
        """The storage pool ``name`` ("" = ``settings.pool``); NotFound
        naming it when it does not exist, FailedPrecondition when inactive.

        On the test driver, whose only pool is ``default-pool``, the default
        setting ``pool = "default"`` falls back to that only pool."""
        conn = self.conn()
        want = name or self.settings.pool
        with self.translated(f"storage pool {want!r}"):
            pool = self.find_pool(want)
            if pool is None and not name and self.host().is_test:
                pools = conn.listAllStoragePools(0)
                pool = pools[0] if len(pools) == 1 else None
            if pool is None:
                raise NotFound(f"storage pool {want!r} not found")
            if not pool.isActive():
                raise FailedPrecondition(f"storage pool {want!r} is not active (start it with virsh pool-start {want})")
        return pool

    def find_pool(self, name: str) -> libvirt.virStoragePool | None:
        """The storage pool of that name, active or not, or None."""
        conn = self.conn()
        with self.translated(f"storage pool {name!r}"), errors.ignoring(errors.is_missing_pool):
            return conn.storagePoolLookupByName(name)
        return None

    def volume_at(self, path: str) -> libvirt.virStorageVol | None:
        """The volume at this path in any pool, or None."""
        conn = self.conn()
        with self.translated(f"volume {path!r}"):
            return storage.at_path(conn, path)

    def find_network(self, name: str) -> libvirt.virNetwork | None:
        """The libvirt network of that name, or None."""
        conn = self.conn()
        with self.translated(f"network {name!r}"), errors.ignoring(errors.is_missing_network):
            return conn.networkLookupByName(name)
        return None


__all__ = ["UUID_RE", "Session"]
