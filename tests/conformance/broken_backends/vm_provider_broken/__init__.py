"""Deliberately broken backends for the conformance kit's own tests."""
