"""What this package needs beyond the core: the ``transfer`` extra.

Imported first by the package, so that without the extra ``import
provider_core.transfer`` fails saying what to install, not which module of
a dependency is missing.
"""

from __future__ import annotations

import importlib.util

EXTRA = "vm-provider[transfer]"
NEEDS = ("requests", "boto3", "botocore")

missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
if missing:
    raise ImportError(
        f"provider_core.transfer needs {', '.join(missing)}, which the core does not install: pip install '{EXTRA}'",
        name=missing[0],
    )
