"""The registry of checks, and which of them apply to a backend.

A check is a plain function taking a :class:`~.kit.Kit`, registered with
:func:`check`. It belongs to one row of the report: the capability it
exercises (``needs``: run when the endpoint offers it), the capability whose
absence it verifies (``absent``: run when the endpoint does *not* offer
it), or ``core`` (the contract every backend keeps). The CLI runner and the
pytest plugin both iterate :func:`checks_for`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..capabilities import Capability

CORE = "core"
_MODULES = ("checks_core", "checks_lifecycle", "checks_disks", "checks_honesty")


class CheckFailed(AssertionError):
    """The backend broke the contract; the message says how."""


class CheckSkipped(Exception):
    """The check cannot run here; the message says why."""


@dataclass(frozen=True)
class Check:
    name: str
    """``<row>.<what>``, e.g. ``snapshots.revert`` or ``core.delete_missing``."""
    func: Callable[..., None]
    needs: Capability | None = None
    absent: Capability | None = None

    @property
    def row(self) -> str:
        """The report row: a capability's value, or ``core``."""
        cap = self.needs or self.absent
        return cap.value if cap else CORE

    @property
    def summary(self) -> str:
        doc = (self.func.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    def applies(self, declared: frozenset[Capability], offered: frozenset[Capability] | None = None) -> bool:
        """Whether the check belongs to a run against an endpoint offering
        ``offered`` (default: all of ``declared``) of a class declaring
        ``declared``. The checks of a capability declared but not offered
        belong to it, to be reported skipped."""
        offered = declared if offered is None else offered
        if self.needs is not None and self.needs not in declared:
            return False
        return not (self.absent is not None and self.absent in offered)


_CHECKS: dict[str, Check] = {}


def check(
    what: str, *, needs: Capability | None = None, absent: Capability | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a check named ``<row>.<what>``."""
    if needs is not None and absent is not None:
        raise ValueError("a check either needs a capability or verifies its absence")

    def register(func: Callable[..., None]) -> Callable[..., None]:
        cap = needs or absent
        c = Check(f"{cap.value if cap else CORE}.{what}", func, needs, absent)
        if c.name in _CHECKS:
            raise ValueError(f"two checks named {c.name!r}")
        _CHECKS[c.name] = c
        return func

    return register


def all_checks() -> list[Check]:
    """Every registered check, in report order (core first, then by capability)."""
    for module in _MODULES:
        importlib.import_module(f"{__package__}.{module}")
    order = {CORE: -1} | {cap.value: i for i, cap in enumerate(Capability)}
    return sorted(_CHECKS.values(), key=lambda c: (order[c.row], c.absent is not None))


def names() -> set[str]:
    """Check names and rows: what ``skip`` and ``-k`` may name."""
    found = set()
    for c in all_checks():
        found |= {c.name, c.row}
    return found


def checks_for(
    declared: Iterable[Capability], select: str | None = None, *, offered: Iterable[Capability] | None = None
) -> list[Check]:
    """The checks of a backend whose class declares ``declared`` on an
    endpoint that offers ``offered`` (default: everything declared),
    optionally only those whose name contains ``select``: every ``core``
    check, the end-to-end checks of every declared capability (those of a
    capability not offered are skipped when run, saying so), and the
    ``not_offered`` check of every capability not offered."""
    caps = frozenset(declared)
    offer = caps if offered is None else frozenset(offered)
    return [c for c in all_checks() if c.applies(caps, offer) and (not select or select in c.name)]
