"""HardwareUpgrade: move a stopped VM to a newer machine type version.

QEMU versions its machine types (``pc-q35-7.2``, ``pc-i440fx-7.2``): a VM
keeps the version it was made with until it is moved on. ``target_version``
is the major version of the machine type (8 -> the newest ``pc-q35-8.x``
this host offers), 0 the newest of the VM's family. The family (q35,
i440fx) never changes. Moving to an older version is refused, the current
one is a no-op. Distributions name their own machine types
(:func:`~.host.machine_version`): on RHEL ``target_version`` 9 is the newest
``pc-q35-rhel9.x``, on Ubuntu 24 is ``pc-q35-noble`` (24.04).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from provider_core import FailedPrecondition, InvalidArgument, Outcome

from . import domxml, power
from .host import machine_version
from .session import Session


def hardware_upgrade(session: Session, vm_id: str, target_version: int) -> Outcome[None]:
    dom = session.lookup(vm_id)
    name = dom.name()
    host = session.host()
    with session.translated(f"upgrading VM {name!r}"):
        if dom.state()[0] not in power.STOPPED:
            raise FailedPrecondition(f"VM {name!r} is running: power it off to change its machine type")
        root = domxml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        current = host.canonical_machine(domxml.machine(root))
        parsed = machine_version(current)
        if parsed is None:
            raise FailedPrecondition(f"VM {name!r} has the unversioned machine type {current!r}; nothing to upgrade")
        family, version = parsed
        offered = host.machine_families.get(family, [])
        majors = sorted({v[0] for v, _ in offered})
        candidates = [(v, n) for v, n in offered if v[0] == target_version] if target_version else offered
        if not candidates:
            listed = ", ".join(str(x) for x in majors) or "none"
            raise InvalidArgument.field(
                "target_version",
                f"this host offers no {family} machine of version {target_version} (versions: {listed}; 0 = newest)",
            )
        new_version, new_machine = candidates[-1]
        if new_version < version:
            raise InvalidArgument.field(
                "target_version", f"{new_machine} is older than VM {name!r}'s {current}; machine types only move forward"
            )
        if new_version == version:
            return Outcome.done(None)
        type_el = root.find("os/type")
        assert type_el is not None
        type_el.set("machine", new_machine)
        session.conn().defineXML(ET.tostring(root, encoding="unicode"))
    return Outcome.done(None)
