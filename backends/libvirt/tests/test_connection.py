"""Which libvirt URIs count as local: keepalive probes and the data path
(disk files read through their paths) depend on it."""

from __future__ import annotations

import pytest
from vm_provider_libvirt.connection import is_local, safe_uri


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("test:///default", True),
        ("qemu:///system", True),
        ("qemu+unix:///system", True),
        ("qemu:///session", True),
        ("qemu+unix:///system?socket=/run/libvirt/libvirt-sock", True),
        ("qemu+ssh://root@node1/system", False),
        ("qemu+tcp://node1:16509/system", False),
        ("qemu+tls://node1/system", False),
        ("qemu://node1/system", False),
        ("qemu+ssh://localhost/system", False),
        ("qemu+libssh2://node1/system?known_hosts=/k", False),
    ],
)
def test_is_local(uri: str, local: bool) -> None:
    assert is_local(uri) is local


def test_safe_uri_drops_credentials_and_query() -> None:
    assert safe_uri("qemu+ssh://admin:secret@node1:2222/system?keyfile=/root/k") == "qemu+ssh://***@node1:2222/system?<redacted>"
    assert safe_uri("qemu+ssh://root@[fd00::1]:22/system") == "qemu+ssh://***@[fd00::1]:22/system"
    assert safe_uri("test:///default") == "test:///default"
