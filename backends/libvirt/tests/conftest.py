"""Fixtures for the libvirt backend's tests.

Test-driver tests run a real vm-provider server (ProviderHarness, real gRPC
on 127.0.0.1) on libvirt's built-in test driver, each on a fresh copy of
``node.xml`` (``test:///<path>`` gives every connection its own copy): a
foreign domain, a NAT network ``default``, an Open vSwitch network ``ovs``,
pools ``default`` (with a 2 GiB template ``base.qcow2``) and ``fast``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import libvirt
import pytest
from vm_provider_libvirt import storage
from vmp_testplugins.skips import missing, skip_missing
from vmp_testplugins.testbed import libvirtd_socket, libvirtd_uri

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

NODE_XML = Path(__file__).with_name("node.xml")
TEST_URI = f"test://{NODE_XML}"
FOREIGN = "foreign-vm"


@pytest.fixture
def test_uri() -> str:
    """A test-driver URI whose every connection is a fresh copy of node.xml."""
    return TEST_URI


@pytest.fixture
def harness() -> Iterator[ProviderHarness]:
    """A server giving the backend's own power words (its state table is
    what these tests check; the core's On/Off default is tested there)."""
    with ProviderHarness.for_backend("libvirt", {"uri": TEST_URI}, power_states="detailed") as h:
        yield h


@pytest.fixture
def make_vm(harness: ProviderHarness) -> Callable[..., str]:
    """Create a VM through the RPC (waiting for its task); returns its id."""

    def make(name: str, **fields: Any) -> str:
        for key in ("class_json", "image_json", "networks_json", "disks_json", "placement_json"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        resp = harness.stub.Create(pb.CreateRequest(name=name, **fields), timeout=60)
        harness.wait(resp.task)
        return str(resp.id)

    return make


def raw_of(harness: ProviderHarness, vm_id: str) -> dict[str, Any]:
    resp = harness.stub.Describe(pb.DescribeRequest(id=vm_id), timeout=30)
    assert resp.exists
    data: dict[str, Any] = json.loads(resp.provider_raw_json)
    return data


@pytest.fixture
def raw(harness: ProviderHarness) -> Callable[[str], dict[str, Any]]:
    """Describe's provider_raw_json of a VM, parsed."""
    return lambda vm_id: raw_of(harness, vm_id)


# -- a real libvirt daemon running QEMU guests ----------------------------------------
# The test bed's own libvirtd (testbed/libvirtd.sh), never the machine's
# qemu:///system: its URI comes from vmp_testplugins.testbed.

REPO = Path(__file__).resolve().parents[3]
TESTBED = REPO / "testbed"


def libvirtd_unavailable() -> str:
    """Why the test bed's daemon cannot serve the real-daemon tests ("" when it can)."""
    uri = libvirtd_uri()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return f"{uri} is not reachable ({exc.get_error_message()}); start it with testbed/libvirtd.sh start"
    try:
        if conn.getType() != "QEMU":
            return f"{uri} is not a QEMU host"
        conn.storagePoolLookupByName("default")
        conn.networkLookupByName("default")
    except libvirt.libvirtError as exc:
        return f"the test bed's pool or network is missing ({exc.get_error_message()}); run: bash testbed/libvirtd.sh start"
    finally:
        conn.close()
    if shutil.which("qemu-img") is None:
        return "qemu-img is not installed (testbed/install.sh)"
    return ""


NEEDS_LIBVIRTD = "needs a libvirt daemon with QEMU"


def libvirtd_skip_reason() -> str:
    """Why the real-daemon tests skip here ("" when the daemon serves): a
    plain skip under ``VMP_NO_LIBVIRTD=1`` (a choice), else a missing part
    of the test bed (a failure under ``VMP_REQUIRE_TESTBED=1``)."""
    if os.environ.get("VMP_NO_LIBVIRTD") == "1":
        return f"{NEEDS_LIBVIRTD}: VMP_NO_LIBVIRTD=1"
    reason = libvirtd_unavailable()
    return missing(f"{NEEDS_LIBVIRTD}: {reason}") if reason else ""


def skip_without_libvirtd() -> None:
    """Skip the running test, saying why, unless the test bed's daemon serves."""
    __tracebackhide__ = True
    if reason := libvirtd_skip_reason():
        pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("libvirtd")]
    if not marked:
        return
    if reason := libvirtd_skip_reason():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


class RealHost:
    """A vm-provider server on the test bed's daemon plus the test guest: kernel
    and initramfs for direct kernel boot, and a base volume in the pool.
    Everything it makes is named ``vmpt-<tag>-...``."""

    def __init__(self, harness: ProviderHarness, tag: str, boot: Path, logs: Path, base: str) -> None:
        self.harness = harness
        self.stub = harness.stub
        self.tag = tag
        self.boot = boot
        self.logs = logs
        self.base = base

    def name(self, suffix: str) -> str:
        return f"vmpt-{self.tag}-{suffix}"

    def guest_class(self, cmdline: str = "", **fields: Any) -> dict[str, Any]:
        extra = {
            "libvirt.kernel": str(self.boot / "vmlinuz"),
            "libvirt.initrd": str(self.boot / "initrd.img"),
            "libvirt.cmdline": f"console=ttyS0 quiet {cmdline}".strip(),
        }
        return {"CPU": 1, "MemoryMiB": 128, "ExtraConfig": extra, **fields}

    def create(self, suffix: str, **fields: Any) -> str:
        fields.setdefault("class_json", self.guest_class())
        fields.setdefault("image_json", {"TemplateName": self.base})
        for key in ("class_json", "image_json", "networks_json", "disks_json", "placement_json"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        resp = self.stub.Create(pb.CreateRequest(name=self.name(suffix), **fields), timeout=120)
        self.harness.wait(resp.task)
        return str(resp.id)

    def power(self, vm_id: str, op: int, graceful: int = 0) -> str:
        resp = self.stub.Power(pb.PowerRequest(id=vm_id, op=op, graceful_timeout_seconds=graceful), timeout=120)
        self.harness.wait(resp.task)
        return str(self.stub.Describe(pb.DescribeRequest(id=vm_id)).power_state)

    def console(self, vm_id: str) -> str:
        name = self.stub.Describe(pb.DescribeRequest(id=vm_id)).provider_raw_json
        path = self.logs / f"{json.loads(name)['name']}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_console(self, vm_id: str, text: str, count: int = 1, timeout: float = 60) -> None:
        """Wait until the serial console printed ``text`` ``count`` times."""
        end = time.monotonic() + timeout
        while self.console(vm_id).count(text) < count:
            assert time.monotonic() < end, (
                f"no {text!r} x{count} on the console within {timeout}s:\n{self.console(vm_id)[-2000:]}"
            )
            time.sleep(0.1)

    def wait_ips(self, vm_id: str, timeout: float = 60) -> list[str]:
        end = time.monotonic() + timeout
        while True:
            ips = list(self.stub.Describe(pb.DescribeRequest(id=vm_id)).ips)
            if ips:
                return ips
            assert time.monotonic() < end, "no address within {timeout}s"
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Remove every domain and volume named vmpt-<tag>-*."""
        conn = libvirt.open(libvirtd_uri())
        try:
            prefix = f"vmpt-{self.tag}-"
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(prefix):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                pool.refresh(0)
                for vol in pool.listAllVolumes(0):
                    if vol.name().startswith(prefix):
                        storage.delete(vol)  # with the record of its source
        finally:
            conn.close()


@pytest.fixture
def system_uri() -> str:
    """The test bed's own QEMU daemon, when it serves (else skip)."""
    skip_without_libvirtd()
    return libvirtd_uri()


@pytest.fixture(scope="module")
def real_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHost]:
    """Module-scoped: the test guest in place and a server on the test bed's daemon."""
    skip_without_libvirtd()
    with real_host_context(tmp_path_factory) as host:
        yield host


def guest_cache() -> Path:
    """The directory of the test guest's files (testbed/build-guest.sh)."""
    built = subprocess.run(["bash", str(TESTBED / "build-guest.sh")], capture_output=True, text=True, check=False)
    if built.returncode:
        pytest.fail(f"testbed/build-guest.sh failed:\n{built.stderr[-2000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


@contextmanager
def real_host_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHost]:
    """The test guest in place and a server on the test bed's libvirtd, removed after."""
    cache = guest_cache()
    tag = uuid.uuid4().hex[:6]
    # QEMU runs as libvirt-qemu: the kernel must sit where it can read it, at
    # a path that is the same in the daemon's mount namespace (the guest's
    # cache is; the daemon's /var/lib/libvirt and /var/log/libvirt are not).
    boot = cache / "boot" / f"vmpt-{tag}"
    logs = cache / "serial" / f"vmpt-{tag}"
    boot.mkdir(mode=0o755, parents=True)
    logs.mkdir(mode=0o755, parents=True)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy(cache / name, boot / name)
    base = f"vmpt-{tag}-base.qcow2"
    conn = libvirt.open(libvirtd_uri())
    try:
        pool = conn.storagePoolLookupByName("default")
        pool_dir = Path(ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or "")
        shutil.copy(cache / "disk.qcow2", pool_dir / base)
        pool.refresh(0)
    finally:
        conn.close()
    settings = {"uri": libvirtd_uri(), "serial_log_dir": str(logs)}
    with ProviderHarness.for_backend("libvirt", settings, power_states="detailed") as h:
        host = RealHost(h, tag, boot, logs, base)
        try:
            yield host
        finally:
            host.cleanup()
            shutil.rmtree(boot, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)


# -- a link libvirt counts as remote ----------------------------------------------------------


class Relay:
    """A ``qemu+ext`` URI whose command is netcat relaying to the local
    daemon's socket: a link libvirt counts as remote, and one a test can cut
    (SIGKILL) or stall (SIGSTOP)."""

    def __init__(self, tmp: Path, socket: Path) -> None:
        self.pids = tmp / "relay.pids"
        script = tmp / "relay.sh"
        script.write_text(f"#!/bin/sh\necho $$ >> {self.pids}\nexec nc -U {socket}\n")
        script.chmod(0o755)
        self.uri = f"qemu+ext:///system?command={script}"

    def latest(self) -> int:
        return int(self.pids.read_text().split()[-1])

    def kill_all(self) -> None:
        for pid in self.pids.read_text().split() if self.pids.exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    socket = libvirtd_socket()
    if shutil.which("nc") is None or socket is None or not socket.exists():
        skip_missing("needs netcat (testbed/install.sh) and the test bed daemon's socket")
    r = Relay(tmp_path, socket)
    try:
        yield r
    finally:
        r.kill_all()
