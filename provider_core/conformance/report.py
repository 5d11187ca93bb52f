"""The kit's report: capability (declared, offered) x pass/fail/skipped, then
every check with its reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..capabilities import Capability
from .registry import CORE, Check

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Result:
    check: Check
    status: str
    """``pass``, ``fail`` or ``skip``."""
    detail: str = ""
    """Why it failed or was skipped."""
    seconds: float = 0.0


def row_verdict(results: Sequence[Result]) -> str:
    if not results:
        return "-"
    if any(r.status == FAIL for r in results):
        return "FAIL"
    if any(r.status == PASS for r in results):
        return "PASS"
    return "SKIP"


def render(
    backend: str, where: str, declared: frozenset[Capability], offered: frozenset[Capability], results: Sequence[Result]
) -> str:
    """The matrix (one row per capability, plus ``core``) and the check list.

    ``declared`` is what the backend's class declares, ``offered`` what the
    endpoint under test offers (GetCapabilities)."""
    lines = [f"vm-provider conformance: backend {backend!r} ({where})", ""]
    lines.append(f"{'capability':<24}{'declared':<10}{'offered':<9}{'pass':>5}{'fail':>6}{'skip':>6}  result")
    rows = [CORE] + [cap.value for cap in Capability]
    for row in rows:
        mine = [r for r in results if r.check.row == row]
        if row == CORE:
            words = ("always", "always")
        else:
            cap = Capability(row)
            words = ("yes" if cap in declared else "no", "yes" if cap in offered else "no")
        counts = [sum(r.status == s for r in mine) for s in (PASS, FAIL, SKIP)]
        lines.append(f"{row:<24}{words[0]:<10}{words[1]:<9}{counts[0]:>5}{counts[1]:>6}{counts[2]:>6}  {row_verdict(mine)}")
    unoffered = [cap.value for cap in Capability if cap in declared and cap not in offered]
    if unoffered:
        lines += ["", f"Declared but not offered by this endpoint (their checks are skipped): {', '.join(unoffered)}"]
    lines.append("")
    width = max((len(r.check.name) for r in results), default=10)
    for r in results:
        reason = r.detail if r.status != PASS else r.check.summary
        timing = f"{r.seconds:6.2f}s" if r.status != SKIP else " " * 7
        lines.append(f"  {r.status.upper():<5}{r.check.name:<{width}}  {timing}  {reason}")
    failed = sum(r.status == FAIL for r in results)
    skipped = sum(r.status == SKIP for r in results)
    lines.append("")
    lines.append(f"{len(results)} checks: {len(results) - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return "\n".join(lines)
