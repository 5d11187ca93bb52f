"""What Describe keeps between calls, so that a call costs two libvirt
round trips (``state()`` and ``XMLDesc()``) and little Python.

- :class:`Handles`: ``virDomain`` objects by UUID. A handle is only the
  domain's UUID and name on the client side; libvirt resolves it by UUID on
  every call, so it stays valid while the domain exists and across its
  restarts. An entry is dropped when a call on it says the domain is gone,
  and all of them when the connection is replaced (they belong to it).
- :class:`Parsed`: what Describe and ListVMs derive from a domain's XML,
  keyed on the XML text itself. ``XMLDesc`` is asked on every call; only
  when it returns the very same text as last time is the parse skipped, so
  the answer is never older than the XML.

Both are bounded and thread-safe (entries are replaced whole; two threads
filling the same entry at once both compute it, which is harmless).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import libvirt

from provider_core import Nic

from . import domxml

V = TypeVar("V")

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


class Parsed(_Bounded[Facts]):
    """:class:`Facts` by VM id, valid while the XML text is unchanged."""

    def get(self, vm_id: str, xml: str, derive: Callable[[str], Facts]) -> Facts:
        """The facts of ``xml``: cached when the VM's XML is unchanged, else
        ``derive(xml)``."""
        hit = self._entries.get(vm_id)
        if hit is not None and hit.xml == xml:
            return hit
        facts = derive(xml)
        self._put(vm_id, facts)
        return facts


__all__ = ["Facts", "Handles", "Listing", "Parsed"]
