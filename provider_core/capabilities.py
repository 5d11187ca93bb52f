"""The capability vocabulary: one enum, declared once per backend.

A backend class declares the most it can offer (``Backend.capabilities``,
checked at load against the methods it overrides: ``operations.METHODS``);
once connected it says what its endpoint offers (:class:`Offer`).
GetCapabilities, the refusal of unsupported calls (UNIMPLEMENTED naming the
capability) and the conformance kit's choice of tests use the offer; which
RPCs a capability gates is in :mod:`provider_core.operations`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from .errors import InvalidArgument, Unimplemented


class Capability(str, Enum):
    """An optional part of the protocol a backend may offer.

    Create, Describe, Delete, Power, ListVMs, Validate and TaskStatus are
    mandatory for every backend and have no capability.
    """

    RECONFIGURE = "reconfigure"
    """Reconfigure: apply a desired_json to an existing VM."""
    RECONFIGURE_ONLINE = "reconfigure_online"
    """CPU and memory change while the VM runs (refines RECONFIGURE)."""
    DISK_EXPANSION_ONLINE = "disk_expansion_online"
    """Disks grow while the VM runs (refines RECONFIGURE)."""
    SNAPSHOTS = "snapshots"
    """SnapshotCreate, SnapshotRevert, SnapshotDelete."""
    MEMORY_SNAPSHOTS = "memory_snapshots"
    """Snapshots with include_memory=true (refines SNAPSHOTS)."""
    CLONE = "clone"
    """Clone: full copy of a VM."""
    LINKED_CLONES = "linked_clones"
    """Clone with linked=true: copy-on-write clone (refines CLONE)."""
    IMAGE_PREPARE = "image_prepare"
    """ImagePrepare: bring an image onto the backend's storage."""
    DISK_INFO = "disk_info"
    """GetDiskInfo."""
    DISK_EXPORT = "disk_export"
    """ExportDisk to an http(s) URL or a staging backend (``export_backends``)."""
    EXPORT_COMPRESSION = "export_compression"
    """ExportDisk with compress=true (refines DISK_EXPORT)."""
    DISK_IMPORT = "disk_import"
    """ImportDisk from an http(s) URL or a staging backend (``import_backends``)."""
    HARDWARE_UPGRADE = "hardware_upgrade"
    """HardwareUpgrade: move a VM to a newer machine/hardware version."""


#: Capabilities that refine another one (an option of its RPC); declaring
#: one requires declaring its parent.
REFINES: dict[Capability, Capability] = {
    Capability.RECONFIGURE_ONLINE: Capability.RECONFIGURE,
    Capability.DISK_EXPANSION_ONLINE: Capability.RECONFIGURE,
    Capability.MEMORY_SNAPSHOTS: Capability.SNAPSHOTS,
    Capability.LINKED_CLONES: Capability.CLONE,
    Capability.EXPORT_COMPRESSION: Capability.DISK_EXPORT,
}


_LISTS = (
    "disk_types",
    "network_types",
    "export_formats",
    "import_formats",
    "export_backends",
    "import_backends",
    "transfer_modes",
)

STAGING_BACKENDS = ("pvc", "nfs", "s3")
"""Staging backends of VirtRigaud's migrations: ``pvc`` and ``nfs`` are
directories mounted into the provider, ``s3`` an object store. What
:mod:`provider_core.transfer` serves for every backend that streams
through it."""
TRANSFER_MODES = ("relay", "direct")
"""``relay``: the bytes pass through the provider; ``direct``: the
hypervisor host reads or writes the staging backend itself."""


@dataclass(frozen=True)
class Offer:
    """What one connected endpoint offers: a subset of its backend class's
    declaration (:meth:`provider_core.Backend.offer`).

    GetCapabilities answers with it, the core refuses calls outside it
    (UNIMPLEMENTED naming the capability; a format outside the lists is
    INVALID_ARGUMENT), and the conformance kit chooses its checks from it.
    """

    capabilities: frozenset[Capability] = frozenset()
    disk_types: tuple[str, ...] = ()
    network_types: tuple[str, ...] = ()
    export_formats: tuple[str, ...] = ()
    import_formats: tuple[str, ...] = ()
    export_backends: tuple[str, ...] = ()
    """Staging backends ExportDisk writes to (:data:`STAGING_BACKENDS`);
    http(s) URLs need none. Only with DISK_EXPORT."""
    import_backends: tuple[str, ...] = ()
    """Staging backends ImportDisk reads from. Only with DISK_IMPORT."""
    transfer_modes: tuple[str, ...] = ()
    """How the bytes travel (:data:`TRANSFER_MODES`, best first). Only with
    DISK_EXPORT or DISK_IMPORT."""

    def without(self, *caps: Capability) -> Offer:
        """This offer less ``caps`` and whatever refines them; the format
        lists of a dropped DISK_EXPORT or DISK_IMPORT are emptied too."""
        drop = set(caps)
        drop |= {cap for cap, parent in REFINES.items() if parent in drop}
        kept = frozenset(self.capabilities - drop)
        exports, imports = Capability.DISK_EXPORT in kept, Capability.DISK_IMPORT in kept
        return replace(
            self,
            capabilities=kept,
            export_formats=self.export_formats if exports else (),
            import_formats=self.import_formats if imports else (),
            export_backends=self.export_backends if exports else (),
            import_backends=self.import_backends if imports else (),
            transfer_modes=self.transfer_modes if exports or imports else (),
        )

    def staged(self, available: tuple[str, ...]) -> Offer:
        """This offer less the staging backends this process cannot serve
        (``available``: what its mounted roots allow,
        :meth:`provider_core.urls.Roots.backends`)."""
        return replace(
            self,
            export_backends=tuple(b for b in self.export_backends if b in available),
            import_backends=tuple(b for b in self.import_backends if b in available),
        )

    def transfer_mode(self, backends: str, backend: str, mode: str) -> str:
        """The transfer mode a request of staging ``backend`` ("" for an
        http(s) URL) and ``mode`` gets from this offer (``backends``:
        ``export_backends`` or ``import_backends``). Unimplemented naming a
        backend the offer lacks; InvalidArgument naming ``transfer_mode`` when
        the mode is not offered. "" and ``auto`` mean the best offered mode
        (VirtRigaud's clients read an empty list as relay only)."""
        offered: tuple[str, ...] = getattr(self, backends)
        if backend and backend not in offered:
            what = "ExportDisk to" if backends == "export_backends" else "ImportDisk from"
            raise Unimplemented(
                f"{what} staging backend {backend!r} is not offered here; offered: {', '.join(offered) or '(none)'}"
            )
        modes = self.transfer_modes or ("relay",)
        if mode in ("", "auto"):
            return modes[0]
        if mode not in modes:
            raise InvalidArgument.field("transfer_mode", f"{mode!r} is not offered here; offered: {', '.join(modes)}")
        return mode

    def within(self, declared: Offer) -> Offer:
        """This offer less whatever ``declared`` does not hold; the format
        lists of a DISK_EXPORT or DISK_IMPORT it loses are emptied too,
        and so are its staging backends and transfer modes."""
        kept = replace(
            self,
            capabilities=self.capabilities & declared.capabilities,
            **{f: tuple(v for v in getattr(self, f) if v in getattr(declared, f)) for f in _LISTS},
        )
        return kept.without()

    def beyond(self, declared: Offer) -> list[str]:
        """What this offer holds that ``declared`` does not, as readable
        items (empty when it is a subset, as it must be)."""
        extra = [f"capability {c.value!r}" for c in sorted(self.capabilities - declared.capabilities, key=lambda c: c.value)]
        for field in _LISTS:
            have = set(getattr(declared, field))
            extra += [f"{field} {v!r}" for v in getattr(self, field) if v not in have]
        return extra
