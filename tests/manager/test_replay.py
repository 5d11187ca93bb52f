"""The manager's calls, replayed against a real provider server.

Each test drives one provider the way VirtRigaud's manager does (its
deadlines, WaitForReady, TaskStatus polling, the payloads it marshals, the
words it accepts) on every endpoint of conftest.py, and fails when its calls
would have opened the manager's circuit breaker.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import manager_payloads as mp
import pytest
from conftest import Endpoint
from manager_client import COUNTED, Breaker, Manager

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.testing import ProviderHarness

#: The only words VirtualMachine.status.powerState admits (virtualmachine_types.go).
STATUS_WORDS = {"On", "Off", "OffGraceful"}


def settle(manager: Manager, vm_id: str, want: str, timeout: float = 120) -> pb.DescribeResponse:
    """Describe until the power state is ``want`` (the manager requeues
    every 10 s while a VM changes; shortened here). Every answer must be a
    word the status field admits."""
    end = time.monotonic() + timeout
    while True:
        described = manager.describe(vm_id)
        assert described.power_state in STATUS_WORDS, f"{described.power_state!r} would be refused by the API server"
        if described.exists and described.power_state == want:
            return described
        assert time.monotonic() < end, f"{vm_id} is {described.power_state}, not {want}, after {timeout}s"
        time.sleep(manager.poll_interval)


def test_capabilities_and_validate(endpoint: Endpoint, manager: Manager) -> None:
    caps = manager.call("GetCapabilities", pb.GetCapabilitiesRequest())
    assert caps.supported_disk_types, "the manager shows supported disk types on the Provider's status"
    # An empty list means "pvc only" and "relay only" to the manager: what is
    # listed must be what is offered, with the capability it belongs to.
    assert bool(caps.supported_export_backends) == caps.supports_disk_export
    assert bool(caps.supported_import_backends) == caps.supports_disk_import
    assert set(caps.supported_export_backends) | set(caps.supported_import_backends) <= {"pvc", "nfs", "s3"}
    if caps.supports_disk_export or caps.supports_disk_import:
        assert list(caps.supported_transfer_modes) == ["relay"]
    assert manager.call("Validate", pb.ValidateRequest()).ok
    manager.reuse()
    if endpoint.credentials is not None:  # so the calls above went through the TLS layer
        plain = grpc.insecure_channel(endpoint.target)
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ProviderStub(plain).Validate(pb.ValidateRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()


def test_a_virtual_machine_through_its_life(endpoint: Endpoint, manager: Manager) -> None:
    """Create, power on, describe, reconfigure, graceful shutdown, delete:
    the VirtualMachine controller's sequence with the manager's payloads."""
    vm_id = manager.create(endpoint.create_request("life"))
    try:
        settle(manager, vm_id, "Off")
        manager.power(vm_id, pb.POWER_OP_ON)
        settle(manager, vm_id, "On")
        manager.power(vm_id, pb.POWER_OP_SHUTDOWN_GRACEFUL)
        settle(manager, vm_id, "Off")
        manager.reconfigure(vm_id, endpoint.desired("life", cpu=2))
        listed = {vm.id: vm for vm in manager.list_vms()}
        assert listed[vm_id].cpu == 2
        assert listed[vm_id].power_state in STATUS_WORDS
        again = manager.create(endpoint.create_request("life"))  # a requeued Create: the same VM
        assert again == vm_id
    finally:
        manager.delete(vm_id)
    gone = manager.describe(vm_id)
    assert not gone.exists
    manager.delete(vm_id)  # the manager deletes again after a restart: already deleted


def test_ten_reconciles_describe_at_once(endpoint: Endpoint, manager: Manager, breaker: Breaker) -> None:
    """10 VirtualMachine reconciles run at once against one provider: every
    Describe answers within its 30 s deadline, in a word the status admits."""
    ids = [manager.create(endpoint.create_request(f"par{i}")) for i in range(3)]
    try:
        clients = [Manager(endpoint.target, breaker, credentials=endpoint.credentials) for _ in range(10)]

        def reconcile(client: Manager) -> list[float]:
            took = []
            for _ in range(5):
                for vm_id in ids:
                    start = time.monotonic()
                    described = client.describe(vm_id)
                    took.append(time.monotonic() - start)
                    assert described.exists
                    assert described.power_state in STATUS_WORDS
            return took

        with ThreadPoolExecutor(10) as pool:
            took = [t for ts in pool.map(reconcile, clients) for t in ts]
        for client in clients:
            client.close()
        assert len(took) == 150
        assert max(took) < 30
    finally:
        for vm_id in ids:
            manager.delete(vm_id)


def test_listed_vms_use_the_status_words(endpoint: Endpoint, manager: Manager) -> None:
    vm_id = manager.create(endpoint.create_request("words"))
    try:
        for vm in manager.list_vms():
            assert vm.power_state in STATUS_WORDS, f"ListVMs says {vm.power_state!r} for {vm.name}"
    finally:
        manager.delete(vm_id)


def test_mistakes_never_count_towards_the_breaker(endpoint: Endpoint, manager: Manager, breaker: Breaker) -> None:
    """What a client gets wrong is NOT_FOUND or INVALID_ARGUMENT, which the
    manager's breaker ignores, never a code it counts."""
    mistakes = [
        ("Describe", pb.DescribeRequest(id="no-such-vm")),
        ("Power", pb.PowerRequest(id="no-such-vm", op=pb.POWER_OP_ON)),
        ("Reconfigure", pb.ReconfigureRequest(id="no-such-vm", desired_json='{"Class": {"CPU": 2}}')),
        ("Create", pb.CreateRequest(name=endpoint.name("bad"), class_json='{"CPU": "two"}')),
        ("Create", pb.CreateRequest(name=endpoint.name("bad"), image_json='{"URL": "ftp://example.test/x"}')),
        ("TaskStatus", pb.TaskStatusRequest(task=pb.TaskRef(id="no-such-task"))),
        ("SnapshotRevert", pb.SnapshotRevertRequest(vm_id="no-such-vm", snapshot_id="s")),
    ]
    codes = []
    for _ in range(2):
        for rpc, request in mistakes:
            try:
                manager.call(rpc, request)
            except grpc.RpcError as err:
                codes.append((rpc, err.code(), err.details()))
    counted = [c for c in codes if c[1] in COUNTED]
    assert not counted, counted
    assert not breaker.failures


def test_wait_for_ready_rides_over_a_provider_start(endpoint: Endpoint, breaker: Breaker) -> None:
    """The manager dials before the provider pod listens: with WaitForReady
    the first call waits for the server instead of failing UNAVAILABLE."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Manager(f"127.0.0.1:{port}", breaker)
    answer: list[object] = []
    caller = threading.Thread(target=lambda: answer.append(client.call("GetCapabilities", pb.GetCapabilitiesRequest())))
    caller.start()
    time.sleep(1.0)
    assert caller.is_alive(), "the call did not wait for the server"
    with ProviderHarness(endpoint.harness.backend, endpoint.harness.name, listen=f"127.0.0.1:{port}"):
        caller.join(30)
        assert answer
        assert isinstance(answer[0], pb.GetCapabilitiesResponse)
    client.close()
    assert not breaker.failures


def test_an_unreachable_hypervisor_opens_the_breaker() -> None:
    """The rule the other tests are held to does fire: when the Proxmox API
    stops answering, the provider says UNAVAILABLE, and 10 of them within a
    minute would open the manager's breaker."""
    table = {"endpoint": "https://127.0.0.1:9", "token_id": "root@pam!probe", "token_secret": "s", "verify_tls": False}
    with ProviderHarness.for_backend("proxmox", table) as h:
        client = Manager(h.address, Breaker())
        for _ in range(10):
            with pytest.raises(grpc.RpcError) as info:
                client.call("Describe", pb.DescribeRequest(id="100"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert client.breaker.would_open()
        client.close()


def test_raw_json_is_json(endpoint: Endpoint, manager: Manager) -> None:
    vm_id = manager.create(endpoint.create_request("raw"))
    try:
        raw = json.loads(manager.describe(vm_id).provider_raw_json)
        assert isinstance(raw, dict)
        assert raw
    finally:
        manager.delete(vm_id)


def test_adoption_finds_vms_made_elsewhere_and_manages_them_once_allowed(
    endpoint: Endpoint, manager: Manager, breaker: Breaker
) -> None:
    """The adoption controller lists the provider's VMs, drops those it
    manages, and takes the rest over: they must be listed, readable, and
    refused changes until the operator allows them."""
    own = manager.create(endpoint.create_request("own"))
    foreign = endpoint.made_elsewhere("elsewhere")
    try:
        listed = {vm.id: vm for vm in manager.list_vms()}
        assert listed[own].provider_raw["managed"] == "true"
        candidates = {vm_id: vm for vm_id, vm in listed.items() if vm_id != own}
        assert foreign in candidates, f"{foreign} made elsewhere is not listed: {sorted(candidates)}"
        assert candidates[foreign].provider_raw["managed"] == "false"
        assert candidates[foreign].power_state in STATUS_WORDS
        assert manager.describe(foreign).exists
        with pytest.raises(grpc.RpcError) as info:
            manager.power(foreign, pb.POWER_OP_ON)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # not a code the breaker counts
        assert "manage_foreign_vms" in (info.value.details() or "")

        with ProviderHarness(endpoint.harness.backend, endpoint.harness.name, manage_foreign_vms=True) as allowed:
            adopter = Manager(allowed.address, breaker)
            adopter.power(foreign, pb.POWER_OP_ON)
            settle(adopter, foreign, "On")
            adopter.power(foreign, pb.POWER_OP_OFF)
            settle(adopter, foreign, "Off")
            adopter.delete(foreign)
            assert not adopter.describe(foreign).exists
            adopter.close()
    finally:
        manager.delete(own)
    assert not breaker.failures


def test_image_prepare_then_create_from_the_prepared_image(endpoint: Endpoint, manager: Manager) -> None:
    """The image controller prepares a VMImage (its resource spec as
    image_json), stamps the id and path it answers at once, polls the task,
    then the VM controller creates from the prepared location."""
    answer = manager.image_prepare(mp.image_resource(endpoint.image_source()), endpoint.name("image"))
    assert answer.prepared_image_id or answer.prepared_image_path, "nothing to stamp on the VMImage's status"
    manager.wait(answer.task)
    again = manager.image_prepare(mp.image_resource(endpoint.image_source()), endpoint.name("image"))
    assert (again.prepared_image_id, again.prepared_image_path) == (answer.prepared_image_id, answer.prepared_image_path)
    manager.wait(again.task)
    request = mp.create_request(
        endpoint.name("prepared"), endpoint.cls(), endpoint.prepared_image(answer), endpoint.networks(), None
    )
    vm_id = manager.create(request)
    try:
        assert manager.describe(vm_id).exists
    finally:
        manager.delete(vm_id)
