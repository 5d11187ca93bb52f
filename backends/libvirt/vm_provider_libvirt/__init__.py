"""libvirt backend for vm-provider."""
