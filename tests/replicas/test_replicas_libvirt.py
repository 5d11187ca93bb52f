"""Two providers on the test bed's libvirt daemon sharing one database.

A Create from an http URL runs as a task of the core (the download and the
define), which is what the shared records and locks are about: the image
server here holds its answer until the test lets it go, so the task runs
as long as a test needs it to.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt
import pytest
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.testbed import libvirtd_uri

from provider_core.pb import provider_pb2 as pb
from provider_core.tasks import INTERRUPTED
from provider_core.testing import wait_task

from .conftest import LEASE

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]


class GatedImage:
    """An http server of one qcow2 image that sends its first bytes at once
    and the rest when :attr:`gate` is set."""

    def __init__(self, image: Path) -> None:
        self.data = image.read_bytes()
        self.gate = threading.Event()
        self.started = threading.Event()
        gated = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(gated.data)))
                self.end_headers()
                self.wfile.write(gated.data[:4096])
                self.wfile.flush()
                gated.started.set()
                if gated.gate.wait(60):
                    self.wfile.write(gated.data[4096:])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/image.qcow2"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def image(tmp_path: Path) -> Iterator[GatedImage]:
    path = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    served = GatedImage(path)
    yield served
    served.close()


@pytest.fixture
def libvirt_settings(tmp_path: Path) -> dict[str, Any]:
    uri = libvirtd_uri()
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError as exc:
        skip_missing(f"needs the test bed's libvirtd (testbed/libvirtd.sh start): {exc}")
    downloads = tmp_path / "downloads"  # what a killed replica leaves there goes with the test
    downloads.mkdir()
    return {"uri": uri, "download_dir": str(downloads)}


@pytest.fixture
def vm_name() -> Iterator[str]:
    """A VM name of this test's own; whatever carries it is removed after."""
    name = f"replicas-{uuid.uuid4().hex[:8]}"
    yield name
    conn = libvirt.open(libvirtd_uri())
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(name):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        for pool in conn.listAllStoragePools():
            if pool.isActive():
                pool.refresh()
                for vol in pool.listAllVolumes():
                    if name in vol.name():
                        vol.delete()
    finally:
        conn.close()


def create_from(url: str, name: str) -> pb.CreateRequest:
    return pb.CreateRequest(
        name=name,
        class_json=json.dumps({"CPU": 1, "MemoryMiB": 128}),
        image_json=json.dumps({"URL": url}),
        networks_json=json.dumps([]),
    )


def status(stub: Any, task: str) -> pb.TaskStatusResponse:
    return stub.TaskStatus(pb.TaskStatusRequest(task=pb.TaskRef(id=task)), timeout=10)


def start_pair(replicas: Callable[..., Any], settings: dict[str, Any], database: str) -> tuple[Any, Any]:
    return (
        replicas("libvirt", settings, database, allow_addresses=["loopback"]),
        replicas("libvirt", settings, database, allow_addresses=["loopback"]),
    )


def test_a_task_is_answered_by_the_other_replica(
    replicas: Callable[..., Any], database: str, libvirt_settings: dict[str, Any], image: GatedImage, vm_name: str
) -> None:
    a, b = start_pair(replicas, libvirt_settings, database)
    created = a.stub.Create(create_from(image.url, vm_name), timeout=30)
    task = created.task.id
    assert task.startswith("task-")
    assert not status(b.stub, task).done  # running, on the other replica's word
    image.gate.set()
    wait_task(b.stub, created.task, timeout=60)
    assert status(b.stub, task) == pb.TaskStatusResponse(done=True, error="")
    assert b.stub.Describe(pb.DescribeRequest(id=created.id), timeout=10).exists


def test_create_and_delete_on_two_replicas_are_serialised(
    replicas: Callable[..., Any], database: str, libvirt_settings: dict[str, Any], image: GatedImage, vm_name: str
) -> None:
    a, b = start_pair(replicas, libvirt_settings, database)
    created = a.stub.Create(create_from(image.url, vm_name), timeout=30)
    assert image.started.wait(10)
    with ThreadPoolExecutor(1) as pool:
        deleting = pool.submit(b.stub.Delete, pb.DeleteRequest(id=vm_name), timeout=60)
        time.sleep(1.5)
        assert not deleting.done(), "Delete ran while the Create's work still held the VM"
        image.gate.set()
        wait_task(a.stub, created.task, timeout=60)
        deleted = deleting.result(timeout=60)
    # The Delete found the VM the Create had finished making, and removed it.
    wait_task(b.stub, deleted.task if deleted.HasField("task") else None, timeout=60)
    assert not a.stub.Describe(pb.DescribeRequest(id=created.id), timeout=10).exists


def test_killed_replica_its_task_interrupted_within_the_lease_and_the_vm_free(
    replicas: Callable[..., Any], database: str, libvirt_settings: dict[str, Any], image: GatedImage, vm_name: str
) -> None:
    a, b = start_pair(replicas, libvirt_settings, database)
    created = a.stub.Create(create_from(image.url, vm_name), timeout=30)
    assert image.started.wait(10)
    assert not status(b.stub, created.task.id).done
    a.served.proc.kill()
    killed = time.monotonic()
    a.served.proc.wait(10)
    while not (state := status(b.stub, created.task.id)).done:
        assert time.monotonic() - killed < LEASE + 2, "the dead replica's task was not interrupted within the lease"
        time.sleep(0.1)
    assert state.error == INTERRUPTED
    # Its lock went with its session: the other replica changes the VM at once.
    started = time.monotonic()
    deleted = b.stub.Delete(pb.DeleteRequest(id=vm_name), timeout=10)
    wait_task(b.stub, deleted.task if deleted.HasField("task") else None, timeout=30)
    assert time.monotonic() - started < 5


def test_twenty_creates_of_one_name_over_two_replicas_make_one_domain(
    replicas: Callable[..., Any], database: str, libvirt_settings: dict[str, Any], vm_name: str
) -> None:
    a, b = start_pair(replicas, libvirt_settings, database)
    request = pb.CreateRequest(
        name=vm_name, class_json=json.dumps({"CPU": 1, "MemoryMiB": 128}), disks_json=json.dumps([{"SizeGiB": 1}])
    )

    def create(i: int) -> pb.CreateResponse:
        return (a if i % 2 else b).stub.Create(request, timeout=60)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(create, range(20)))
    for i, r in enumerate(answers):
        wait_task((b if i % 2 else a).stub, r.task if r.HasField("task") else None, timeout=60)
    assert len({r.id for r in answers}) == 1
    conn = libvirt.open(libvirtd_uri())
    try:
        assert [d.name() for d in conn.listAllDomains() if d.name() == vm_name] == [vm_name]
    finally:
        conn.close()
