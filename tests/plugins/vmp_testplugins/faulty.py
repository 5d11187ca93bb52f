"""Backends that break the plugin contract, one way each.

Each subclasses :class:`MemoryBackend` so that only the defect named in its
docstring differs from a working backend.
"""

from __future__ import annotations

from pydantic import SecretStr

from provider_core import BackendSettings, Capability, CloneSpec, Outcome, SnapshotSpec

from .memory import MemoryBackend, MemorySettings


class CtorRaisesBackend(MemoryBackend):
    """Its constructor fails (a library it needs is misconfigured)."""

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        raise RuntimeError("cannot open /dev/hypervisor0")


class LyingBackend(MemoryBackend):
    """Declares SNAPSHOTS without implementing the snapshot methods."""

    capabilities = frozenset({Capability.SNAPSHOTS})


class UndeclaredBackend(MemoryBackend):
    """Implements clone() without declaring CLONE."""

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        return Outcome.done(spec.target_name)


class RefinesOrphanBackend(MemoryBackend):
    """Declares LINKED_CLONES (a refinement of CLONE) without CLONE."""

    capabilities = frozenset({Capability.LINKED_CLONES})


class NotABackend:
    """A plain class: not a provider_core.Backend at all."""

    def snapshot_create(self, spec: SnapshotSpec) -> str:
        return spec.name


class BadSettings(MemorySettings):
    """Settings with a required field and a secret."""

    region: str
    api_key: SecretStr
    retries: int = 3


class BadSettingsBackend(MemoryBackend):
    """A working backend whose settings need a value (for config errors)."""

    Settings = BadSettings
