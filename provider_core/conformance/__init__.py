"""The conformance kit: does a backend keep the provider.v1 contract?

It serves an installed backend on a real server and drives it over gRPC like
a client, with checks chosen from what the server says its endpoint offers
(:mod:`.offered`).
Run it as ``vm-provider conformance --backend NAME`` or through the pytest
plugin (``pytest -p provider_core.conformance.pytest_plugin
--vm-provider-backend NAME``); see docs/conformance.md. Its S3 server needs
the ``vm-provider[conformance]`` extra (moto).

Modules: :mod:`.registry` (checks and which apply), :mod:`.kit` (what a
check works with), ``checks_*`` (the checks), :mod:`.fixtures`
(``[conformance.NAME]``), :mod:`.session` (a server plus the checks),
:mod:`.report`, :mod:`.runner` (the command), :mod:`.pytest_plugin`,
:mod:`.servers` (the HTTP and S3 servers files travel through).

Attributes are imported on first use, so that importing one module (the
pytest plugin, the servers) does not import the whole kit.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Check": "registry",
    "CheckFailed": "registry",
    "CheckSkipped": "registry",
    "check": "registry",
    "checks_for": "registry",
    "Fixtures": "fixtures",
    "Kit": "kit",
    "Result": "report",
    "render": "report",
    "Session": "session",
    "run": "runner",
}

__all__ = ["Check", "CheckFailed", "CheckSkipped", "Fixtures", "Kit", "Result", "Session", "check", "checks_for", "render", "run"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
