"""A plugin whose module cannot be imported (a missing dependency)."""

raise ImportError("No module named 'hypervisor_sdk' (vmp_testplugins.broken_import needs it)")
