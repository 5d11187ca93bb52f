"""Proxmox VE backend for vm-provider.

Registered as ``proxmox`` in the ``vm_provider.backends`` entry-point group;
configured by ``[backends.proxmox]`` (:class:`ProxmoxSettings`).
"""

from .backend import ProxmoxBackend
from .settings import ProxmoxSettings

__all__ = ["ProxmoxBackend", "ProxmoxSettings"]
