"""Backends for vm-provider's own tests, registered as real entry points.

``memory`` (and ``memory-plus``, which adds every optional operation) is a
small correct backend whose behaviour the tests steer; the others break the
plugin contract in one way each, so the tests can check how loading fails.
"""
