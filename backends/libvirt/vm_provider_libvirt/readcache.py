"""What Describe and ListVMs keep between calls, so that a call usually
costs one libvirt round trip (``state()``) and little Python. Private to the
bottom layer (:class:`~vm_provider_libvirt.session.Session` holds them).

- :class:`Handles`: ``virDomain`` objects by UUID. A handle is only the
  domain's UUID and name on the client side; libvirt resolves it by UUID on
  every call, so it stays valid while the domain exists and across its
  restarts. An entry is dropped when a call on it says the domain is gone,
  and all of them when the connection is replaced (they belong to it).
- :class:`Parsed`: what Describe and ListVMs derive from a domain's XML.
  When ``XMLDesc`` returns the very same text as last time the parse is
  skipped. And Describe does not ask for the XML at all while what it read
  is recent (:meth:`Parsed.recent`): younger than :data:`DESCRIBE_TTL`
  seconds, the domain's state unchanged since, and no change made through
  this backend begun or ended since (:class:`Changes`). So a Describe sees
  every change this provider makes, every start, stop, pause and resume at
  once, and a change made to a domain's definition behind its back
  (``virsh edit``) at most that many seconds late -- as it sees a new DHCP
  lease.
- :class:`Leases`: the DHCP leases of each libvirt network, fetched at most
  every :data:`DESCRIBE_TTL` seconds for Describe (ListVMs makes one per
  listing).

All are bounded and thread-safe (entries are replaced whole; two threads
filling the same entry at once both compute it, which is harmless).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import libvirt

from provider_core import Nic

from . import domxml, errors

V = TypeVar("V")

#: Seconds Describe reuses what it read of a domain's XML, and a network's
#: DHCP leases.
DESCRIBE_TTL = 2.0

#: Entries kept per cache; past that the cache starts over (cheap, and
#: rare: it takes this many distinct VMs between two refills).
LIMIT = 4096


class _Bounded(Generic[V]):
    def __init__(self) -> None:
        self._entries: dict[str, V] = {}

    def _put(self, key: str, value: V) -> None:
        if len(self._entries) >= LIMIT:
            self._entries = {}
        self._entries[key] = value

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries = {}


class Handles(_Bounded[tuple[int, libvirt.virDomain]]):
    """``virDomain`` handles by lower-case UUID, each tagged with the
    generation of the connection it came from."""

    def get(self, uuid: str, generation: int, lookup: Callable[[], libvirt.virDomain]) -> libvirt.virDomain:
        """The cached handle, or ``lookup()`` (whose errors pass through)."""
        key = uuid.lower()
        hit = self._entries.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]
        dom = lookup()
        self._put(key, (generation, dom))
        return dom


@dataclass(frozen=True)
class Listing:
    """What a ListVMs entry takes from one version of a domain's XML (the
    rest comes from the domain's stats and the leases on each call)."""

    uuid: str
    name: str
    cpu: int
    memory_mib: int
    disks: tuple[tuple[str, str, str], ...]
    """(target, path, format) of each disk that is not a CD-ROM."""
    networks: tuple[Nic, ...]
    """One per NIC, with the static address Create gave it."""
    raw: dict[str, str]
    """provider_raw without the native state (added per call)."""


@dataclass(frozen=True)
class Facts:
    """What Describe and ListVMs read from one version of a domain's XML."""

    xml: str
    raw: dict[str, Any]
    """provider_raw_json without the native state (added per call)."""
    nics: list[domxml.DomainNic]
    agent: bool
    console: str
    managed: bool
    """The domain carries our mark."""
    listing: Listing


class Changes:
    """Counts the changes to domains this backend is making: Describe reuses
    what it read only while none began or ended since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = 0
        self._running = 0
        self._quiet: int | None = 0

    def begin(self) -> None:
        self._step(+1)

    def end(self) -> None:
        self._step(-1)

    def _step(self, running: int) -> None:
        with self._lock:
            self._epoch += 1
            self._running += running
            self._quiet = None if self._running else self._epoch

    def quiet(self) -> int | None:
        """The current epoch when no change is under way, else None. Read it
        before reading a domain: what was read is reusable while this stays
        the same."""
        return self._quiet


@dataclass(frozen=True)
class _Read:
    facts: Facts
    state: int
    """The domain's state (``virDomainState``) when its XML was read."""
    epoch: int | None
    """:meth:`Changes.quiet` before the XML was read."""
    at: float
    """``time.monotonic()`` when the XML was read."""


class Parsed(_Bounded[_Read]):
    """:class:`Facts` by domain UUID (as ``UUIDString()`` gives it), with
    when and how they were read."""

    def recent(self, uuid: str, state: int, epoch: int | None, ttl: float) -> Facts | None:
        """The facts last read for ``uuid`` if they can stand for its XML
        now: read less than ``ttl`` seconds ago, with the domain in the same
        ``state``, and ``epoch`` (:meth:`Changes.quiet`, now) what it was
        then (no change since, none under way). Else None: ask the XML."""
        hit = self._entries.get(uuid)
        if hit is None or epoch is None or hit.epoch != epoch or hit.state != state:
            return None
        if time.monotonic() - hit.at >= ttl:
            return None
        return hit.facts

    def get(self, uuid: str, xml: str, derive: Callable[[str], Facts], state: int, epoch: int | None) -> Facts:
        """The facts of ``xml``: the cached ones when the domain's XML is
        unchanged, else ``derive(xml)``; remembered with its ``state`` and
        the ``epoch`` read before the XML was."""
        hit = self._entries.get(uuid)
        facts = hit.facts if hit is not None and hit.facts.xml == xml else derive(xml)
        self._put(uuid, _Read(facts, state, epoch, time.monotonic()))
        return facts


class Leases:
    """DHCP leases per libvirt network, fetched at most once per network
    every ``ttl`` seconds (by default once in the object's life: ListVMs
    makes one per listing).

    The session keeps one with the ttl :data:`DESCRIBE_TTL` for Describe: a
    lease is granted once per boot and renewed every hour or so, so an
    address shows up at most ``ttl`` seconds late, and a VM polling for its
    first address is not kept waiting noticeably."""

    def __init__(self, conn: libvirt.virConnect, ttl: float = math.inf) -> None:
        self.conn = conn
        self.ttl = ttl
        self._by_network: dict[str, tuple[float, dict[str, list[str]] | None]] = {}

    def for_network(self, name: str) -> dict[str, list[str]] | None:
        """MAC -> addresses on that network; None when the driver has no
        lease API (test driver) or the network is gone."""
        now = time.monotonic()
        hit = self._by_network.get(name)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        table = self._fetch(name)
        self._by_network[name] = (now, table)
        return table

    def _fetch(self, name: str) -> dict[str, list[str]] | None:
        leases: list[dict[str, Any]] | None = None
        with errors.ignoring(errors.any_error):  # no lease API, or the network is gone: nothing known
            leases = self.conn.networkLookupByName(name).DHCPLeases()
        if leases is None:
            return None
        out: dict[str, list[str]] = {}
        for lease in leases:
            mac = str(lease.get("mac", "")).lower()
            addr = str(lease.get("ipaddr", ""))
            if mac and addr:
                out.setdefault(mac, []).append(addr)
        return out


__all__ = ["DESCRIBE_TTL", "Changes", "Facts", "Handles", "Leases", "Listing", "Parsed"]
