"""``vm-provider conformance --backend NAME [--config FILE] [-k SUBSTR]``.

Serves the backend, asks the server what its endpoint offers, runs every
check that applies, printing each as it ends, then the report. Exits 0 when
nothing failed (skips are fine), 1 when a check failed; a bad
configuration, or a backend that cannot connect, raises ConfigError (the
CLI exits 2).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

from ..config import default_config_path, load_file
from .report import FAIL, Result
from .session import Session


def run(name: str, config: Path | None, select: str | None = None, out: TextIO | None = None) -> int:
    """Run the kit against the installed backend ``name`` configured by
    ``config`` (default: $VM_PROVIDER_CONFIG or ./plugins.toml)."""
    out = out or sys.stdout
    conf = load_file(config if config is not None else default_config_path())
    logging.getLogger().setLevel(logging.WARNING)  # the report is the output; warnings and errors still show
    results: list[Result] = []
    with Session(name, conf) as session:
        checks = session.checks(select)
        if not checks:
            print(f"no check of backend {name!r} matches {select!r}", file=out)
            return 1
        for check in checks:
            result = session.run(check)
            results.append(result)
            print(f"{result.status.upper():<5}{check.name}", file=out, flush=True)
        report = session.report(results)
    print(file=out)
    print(report, file=out)
    return 1 if any(r.status == FAIL for r in results) else 0
