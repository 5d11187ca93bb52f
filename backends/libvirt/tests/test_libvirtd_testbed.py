"""The real-daemon tests run on the test bed's own libvirtd, not the machine's.

testbed/libvirtd.sh runs it in a mount and network namespace of its own,
with private /run/libvirt, /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt
and /var/log/libvirt: these tests look at the running daemon and its guests
from outside, the way the machine sees them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from vmp_testplugins.testbed import libvirtd_pid, libvirtd_socket, libvirtd_uri

from provider_core.pb import provider_pb2 as pb

pytestmark = pytest.mark.libvirtd

MACHINE_SOCKET = Path("/run/libvirt/libvirt-sock")
PRIVATE = ("/run/libvirt", "/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")


def mount_points(pid: int) -> set[str]:
    """The mount points a process sees (field 5 of /proc/PID/mountinfo)."""
    return {line.split()[4] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}


def test_the_uri_names_the_test_beds_socket_not_the_machines() -> None:
    socket = libvirtd_socket()
    assert socket is not None, libvirtd_uri()
    assert socket.is_socket()
    assert socket.resolve() != MACHINE_SOCKET.resolve()


def test_the_daemon_runs_in_namespaces_of_its_own() -> None:
    pid = libvirtd_pid()
    assert pid is not None
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "libvirtd"
    for ns in ("mnt", "net"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # Its libvirt directories are private mounts there, and only there.
    assert set(PRIVATE) <= mount_points(pid)
    assert not set(PRIVATE) & mount_points(os.getpid())


def test_its_guests_are_not_the_machines(real_host: Any) -> None:
    """A guest the tests run is known to the test bed's daemon only: its
    status and definition are in the private directories, and the machine's
    /run/libvirt and /etc/libvirt hold no trace of it."""
    vm_id = real_host.create("private")
    name = real_host.name("private")
    try:
        assert real_host.power(vm_id, pb.POWER_OP_ON) == "On"
        socket = libvirtd_socket()
        assert socket is not None
        pid = int((socket.parent / "qemu" / f"{name}.pid").read_text())
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert not Path(f"/run/libvirt/qemu/{name}.pid").exists()
        assert not Path(f"/etc/libvirt/qemu/{name}.xml").exists()
    finally:
        real_host.harness.wait(real_host.stub.Delete(pb.DeleteRequest(id=vm_id)).task)
