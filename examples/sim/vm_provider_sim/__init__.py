"""vm-provider-sim: a simulated hypervisor backend for vm-provider.

Registered as the backend ``sim`` (entry point group ``vm_provider.backends``).
"""

from .backend import SimBackend
from .settings import SimSettings

__all__ = ["SimBackend", "SimSettings"]
