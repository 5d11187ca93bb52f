"""What the libvirt backend can offer, and what one connected host offers.

The class declares :data:`DECLARED`: everything a QEMU/KVM host behind
libvirt can do. Once connected, :func:`offer` keeps what this host really
can, decided from what the connection reports about it
(:class:`~vm_provider_libvirt.host.HostInfo`: the driver ``getType()``
names, the machine types of its capabilities XML, the daemon's libvirt
version), never from a distribution's name:

=====================  ==============================================================
dropped                when
=====================  ==============================================================
image_prepare,         its volumes keep no bytes or the daemon cannot stream them
disk_export            with holes (libvirt's test driver; a daemon older than
(export_compression),  libvirt 4.4): nothing to download into, export or import
disk_import
disk_expansion_online  it cannot resize volumes or a running domain's disks (the
                       test driver: no ``virStorageVolResize``, no
                       ``virDomainBlockResize``). Reconfigure of CPU and memory
                       stays; growing a disk there is UNIMPLEMENTED, saying so
hardware_upgrade       its capabilities list no versioned machine types (the test
                       driver): there is no newer machine to move a VM to
=====================  ==============================================================

Staging backends (pvc, nfs, s3) are all declared: the data path hands
each request to :mod:`provider_core.transfer`, and the core keeps those its
``[server]`` roots serve. The only transfer mode is ``relay``: the bytes
pass through the provider, which reads the disk (locally, or over a libvirt
stream) and writes the staging file or object. ``direct`` (the hypervisor
host writing to staging itself) is not offered: nothing here makes a
remote host's QEMU reach an object store or an export, so a request for it
is INVALID_ARGUMENT naming the offered modes.

Everything else works on the test driver as on QEMU (it keeps domains,
their snapshots and volumes' metadata), so it is offered there too.
"""

from __future__ import annotations

from provider_core import Capability, Offer
from provider_core.capabilities import STAGING_BACKENDS

from . import images
from .host import HostInfo

#: The most this backend offers: a QEMU/KVM host.
DECLARED = Offer(
    capabilities=frozenset(
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
    ),
    disk_types=("thin", "thick", "qcow2", "raw"),
    network_types=("network", "bridge"),
    export_formats=images.FORMATS,
    import_formats=images.FORMATS,
    export_backends=STAGING_BACKENDS,
    import_backends=STAGING_BACKENDS,
    transfer_modes=("relay",),
)

#: What needs volume bytes streamed in or out (the disk data path).
DATA_PATH = (Capability.IMAGE_PREPARE, Capability.DISK_EXPORT, Capability.DISK_IMPORT)


def offer(declared: Offer, host: HostInfo) -> Offer:
    """What ``host`` offers of ``declared`` (see the module doc)."""
    missing: list[Capability] = []
    if not host.streams_disks:
        missing += DATA_PATH
    if not host.resizes_disks:
        missing.append(Capability.DISK_EXPANSION_ONLINE)
    if not host.machines:
        missing.append(Capability.HARDWARE_UPGRADE)
    return declared.without(*missing)


__all__ = ["DATA_PATH", "DECLARED", "offer"]
