"""What a check works with: a client of the server under test, and its fixtures.

The :class:`Kit` calls RPCs the way deployed clients do (their deadlines,
tasks polled with TaskStatus), fails the check when any call answers
UNKNOWN, and deletes every VM a check made when the check ends.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ..backend import Backend
from ..capabilities import Capability, Offer
from ..pb import provider_pb2 as pb
from ..pb import provider_pb2_grpc as pb_grpc
from ..testing import TaskFailed, wait_task
from .fixtures import Fixtures
from .registry import CheckFailed, CheckSkipped
from .servers import HttpSink, S3Server

Code = grpc.StatusCode
POWER_WORDS = ("On", "Off", "Suspended", "Unknown")

#: Deadlines deployed clients set, per RPC (seconds).
DEADLINES: dict[str, float] = {
    "TaskStatus": 10,
    "Validate": 30,
    "Describe": 30,
    "GetCapabilities": 30,
    "Delete": 120,
    "Power": 120,
    "SnapshotDelete": 120,
    "GetDiskInfo": 120,
    "ListVMs": 120,
    "Create": 300,
    "Reconfigure": 300,
    "Clone": 300,
    "ImagePrepare": 300,
    "SnapshotCreate": 300,
    "SnapshotRevert": 300,
    "HardwareUpgrade": 300,
    "ExportDisk": 1800,
    "ImportDisk": 1800,
}


def fail(message: str) -> CheckFailed:
    """``raise fail("...")``: the check found a contract violation."""
    return CheckFailed(message)


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def skip(reason: str) -> CheckSkipped:
    return CheckSkipped(reason)


def describe_error(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def field_violations(err: grpc.RpcError) -> list[str]:
    """The field paths of a failed call's google.rpc.BadRequest detail."""
    status = rpc_status.from_call(err)
    fields: list[str] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def missing_capability(err: grpc.RpcError) -> str:
    """The capability named by a CAPABILITY_MISSING ErrorInfo detail, or ""."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason == "CAPABILITY_MISSING":
                return str(info.metadata.get("capability", ""))
    return ""


S3_BUCKET = "vm-provider-conformance"
"""The bucket of the kit's S3 server."""


class Kit:
    """One backend under test, seen through a real server."""

    def __init__(self, stub: pb_grpc.ProviderStub, name: str, backend_cls: type[Backend], fixtures: Fixtures) -> None:
        self.stub = stub
        self.name = name
        self.backend_cls = backend_cls
        self.declared: Offer = backend_cls.declared()
        """The most the backend's class can offer."""
        self.offer: Offer = self.declared
        """What the endpoint offers, as its server answers (:func:`.offered.read`,
        asked when a session starts): what the checks go by."""
        self.not_offered: dict[Capability, str] = {}
        """Every capability the endpoint does not offer -> how the server said so."""
        self.fixtures = fixtures
        self._made: list[str] = []
        self.run_tag = secrets.token_hex(2)
        """In every name this kit run makes, so that runs sharing a hypervisor keep apart."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._sink: HttpSink | None = None
        self._s3: S3Server | None = None

    def offers(self, cap: Capability) -> bool:
        """Whether the endpoint under test offers ``cap``."""
        return cap in self.offer.capabilities

    def exercises(self, cap: Capability) -> bool:
        """Offered, and not skipped as a whole by the fixtures' ``skip``."""
        return self.offers(cap) and cap.value not in self.fixtures.skip

    # -- calls ----------------------------------------------------------------------

    def call(self, rpc: str, request: Any) -> Any:
        """Call ``rpc`` with a client's deadline; UNKNOWN fails the check."""
        try:
            return getattr(self.stub, rpc)(request, timeout=DEADLINES[rpc])
        except grpc.RpcError as err:
            if err.code() is Code.UNKNOWN:
                raise fail(f"{rpc} answered UNKNOWN ({err.details()}): clients count it as an infrastructure failure") from None
            raise

    def ok(self, rpc: str, request: Any) -> Any:
        """Call ``rpc``; any error fails the check, naming the RPC."""
        try:
            return self.call(rpc, request)
        except grpc.RpcError as err:
            raise fail(f"{rpc} failed: {describe_error(err)}") from None

    def refused(self, rpc: str, request: Any, *codes: grpc.StatusCode) -> grpc.RpcError:
        """Call ``rpc`` expecting it to fail with one of ``codes``."""
        try:
            self.call(rpc, request)
        except grpc.RpcError as err:
            if err.code() in codes:
                return err
            want = " or ".join(c.name for c in codes)
            raise fail(f"{rpc} answered {describe_error(err)}, expected {want}") from None
        raise fail(f"{rpc} succeeded, expected {' or '.join(c.name for c in codes)}")

    def wait(self, task: pb.TaskRef | None, what: str) -> None:
        """Poll a task to completion like a client; its error fails the check."""
        try:
            wait_task(self.stub, task, timeout=self.fixtures.task_timeout)
        except TaskFailed as exc:
            raise fail(f"{what}: {exc}") from None
        except TimeoutError as exc:
            raise fail(f"{what}: {exc}") from None
        except grpc.RpcError as err:
            raise fail(f"{what}: TaskStatus failed: {describe_error(err)}") from None

    def task_error(self, task: pb.TaskRef | None) -> str:
        """Poll a task to completion; return its error ("" when it succeeded)."""
        try:
            wait_task(self.stub, task, timeout=self.fixtures.task_timeout)
        except TaskFailed as exc:
            return str(exc) or "failed"
        except TimeoutError as exc:
            raise fail(str(exc)) from None
        except grpc.RpcError as err:
            raise fail(f"TaskStatus failed: {describe_error(err)}") from None
        return ""

    # -- VMs ------------------------------------------------------------------------

    def vm_name(self, label: str) -> str:
        """A fresh VM name: prefix, run tag, label, random suffix (a valid DNS label)."""
        slug = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-")[:24]
        return f"{self.fixtures.name_prefix}{self.run_tag}-{slug}-{secrets.token_hex(3)}"

    def create_request(self, name: str, **overrides: Any) -> pb.CreateRequest:
        f = self.fixtures
        fields: dict[str, Any] = {
            "name": name,
            "class_json": f.class_json,
            "image_json": f.image_json,
            "networks_json": f.networks_json,
            "disks_json": f.disks_json,
            "placement_json": f.placement_json,
        }
        fields.update(overrides)
        return pb.CreateRequest(**fields)

    def create_vm(self, label: str, **overrides: Any) -> str:
        """Create a VM from the fixtures and wait for it; it is deleted when
        the check ends."""
        request = self.create_request(self.vm_name(label), **overrides)
        resp = self.ok("Create", request)
        expect(resp.id, "Create returned an empty id")
        self.track(resp.id)
        self.wait(resp.task, f"Create({request.name})")
        return str(resp.id)

    def track(self, vm_id: str) -> None:
        if vm_id and vm_id not in self._made:
            self._made.append(vm_id)

    def forget(self, vm_id: str) -> None:
        if vm_id in self._made:
            self._made.remove(vm_id)

    def describe(self, vm_id: str) -> pb.DescribeResponse:
        resp: pb.DescribeResponse = self.ok("Describe", pb.DescribeRequest(id=vm_id))
        if resp.exists:
            expect(
                resp.power_state in POWER_WORDS,
                f"Describe({vm_id}).power_state is {resp.power_state!r}, not one of {POWER_WORDS}",
            )
        return resp

    def list_vms(self) -> list[pb.VMInfo]:
        vms: list[pb.VMInfo] = list(self.ok("ListVMs", pb.ListVMsRequest()).vms)
        for vm in vms:
            expect(
                vm.power_state in POWER_WORDS,
                f"ListVMs gives VM {vm.id} power_state {vm.power_state!r}, not one of {POWER_WORDS}",
            )
        return vms

    def listed(self, vm_id: str) -> pb.VMInfo | None:
        found = [vm for vm in self.list_vms() if vm.id == vm_id]
        expect(len(found) <= 1, f"ListVMs lists VM {vm_id} {len(found)} times")
        return found[0] if found else None

    def power(self, vm_id: str, op: pb.PowerOp) -> None:
        """Power operation, with the fixtures' graceful timeout (used by reboot
        and graceful shutdown), polled to completion."""
        word = pb.PowerOp.Name(op)
        request = pb.PowerRequest(id=vm_id, op=op, graceful_timeout_seconds=self.fixtures.graceful_timeout)
        resp = self.ok("Power", request)
        self.wait(resp.task, f"Power({vm_id}, {word})")

    def power_state(self, vm_id: str) -> str:
        resp = self.describe(vm_id)
        expect(resp.exists, f"Describe({vm_id}) says exists=false for a VM the kit made")
        return str(resp.power_state)

    def expect_power(self, vm_id: str, word: str, after: str) -> None:
        state = self.power_state(vm_id)
        expect(state == word, f"after {after}, Describe says power_state {state!r}, expected {word!r}")
        listed = self.listed(vm_id)
        expect(listed is not None, f"after {after}, ListVMs does not list VM {vm_id}")
        assert listed is not None
        expect(listed.power_state == word, f"after {after}, ListVMs says power_state {listed.power_state!r}, expected {word!r}")

    def disk_sizes(self, vm_id: str) -> list[int]:
        listed = self.listed(vm_id)
        expect(listed is not None, f"ListVMs does not list VM {vm_id}")
        assert listed is not None
        return sorted(d.size_gib for d in listed.disks)

    def fingerprint(self) -> list[tuple[Any, ...]]:
        """What a call that must change nothing may not change: the id, name,
        power state, CPU, memory and disks of every VM of this kit run (made
        by the check, or named with this run's prefix), and Describe of each
        VM the check made. Other VMs are left out: on a shared hypervisor
        they change under the kit's feet."""
        ours = self.fixtures.name_prefix + self.run_tag
        seen: list[tuple[Any, ...]] = [
            (vm.id, vm.name, vm.power_state, vm.cpu, vm.memory_mib, tuple(sorted((d.id, d.size_gib) for d in vm.disks)))
            for vm in self.list_vms()
            if vm.id in self._made or vm.name.startswith(ours)
        ]
        for vm_id in self._made:
            resp = self.describe(vm_id)
            seen.append(("describe", vm_id, resp.exists, resp.power_state))
        return sorted(seen, key=repr)

    @contextmanager
    def unchanged(self, what: str) -> Iterator[None]:
        """Fail when the block changes the fingerprint."""
        before = self.fingerprint()
        yield
        after = self.fingerprint()
        if before != after:
            gone = [x for x in before if x not in after]
            new = [x for x in after if x not in before]
            raise fail(f"{what} changed state: before {gone}, after {new}")

    def cleanup(self) -> list[str]:
        """Delete every VM the check made (newest first); return problems."""
        problems = []
        for vm_id in reversed(self._made):
            try:
                resp = self.call("Delete", pb.DeleteRequest(id=vm_id))
                error = self.task_error(resp.task)
            except (grpc.RpcError, CheckFailed) as exc:
                error = describe_error(exc) if isinstance(exc, grpc.RpcError) else str(exc)
            if error:
                problems.append(f"cleanup: Delete({vm_id}) failed: {error}")
        self._made.clear()
        return problems

    # -- files served on 127.0.0.1 -------------------------------------------------------

    @property
    def sink(self) -> HttpSink:
        """An HTTP server on 127.0.0.1 (GET serves files, PUT stores them)."""
        if self._sink is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vm-provider-conformance-")
            self._sink = HttpSink(Path(self._tmp.name)).start()
        return self._sink

    def serve(self, name: str, data: bytes) -> tuple[str, str]:
        """Serve ``data`` at a URL; return (url, sha256)."""
        (self.sink.root / name).write_bytes(data)
        return self.sink.url(name), hashlib.sha256(data).hexdigest()

    def received(self, name: str) -> bytes | None:
        path = self.sink.root / name
        return path.read_bytes() if path.is_file() else None

    @property
    def s3(self) -> S3Server:
        """An S3 server on 127.0.0.1 (moto's) with the bucket :data:`S3_BUCKET`."""
        if self._s3 is None:
            try:
                server = S3Server(S3_BUCKET)
            except ImportError:
                raise skip(
                    "the S3 checks need moto's S3 server here: install the conformance extra"
                    " (from a clone: pip install './[conformance]')"
                ) from None
            self._s3 = server.__enter__()
        return self._s3

    def s3_place(self, key: str) -> tuple[str, dict[str, str]]:
        """The s3:// URL of ``key`` and the request credentials that reach it."""
        credentials = {
            "endpoint_url": self.s3.url,
            "region": S3Server.REGION,
            "access_key_id": "kit-access-key",
            "secret_access_key": "kit-secret-key",
        }
        return f"s3://{S3_BUCKET}/{key}", credentials

    def s3_put(self, key: str, data: bytes) -> str:
        """Store ``data`` as ``key``; return its SHA256."""
        self.s3.client().put_object(Bucket=S3_BUCKET, Key=key, Body=data)
        return hashlib.sha256(data).hexdigest()

    def s3_object(self, key: str) -> bytes | None:
        """The object ``key``, or None when there is none."""
        client = self.s3.client()
        try:
            body = client.get_object(Bucket=S3_BUCKET, Key=key)["Body"]
        except client.exceptions.NoSuchKey:
            return None
        return bytes(body.read())

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.__exit__(None, None, None)
            self._s3 = None
        if self._sink is not None:
            self._sink.stop()
            self._sink = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def valid_ips(ips: Any, where: str) -> None:
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise fail(f"{where} gives {ip!r}, not an IP address") from None


def json_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError as exc:
        raise fail(f"{where} is not valid JSON: {exc}") from None
    expect(isinstance(value, dict), f"{where} is JSON but not an object")
    return dict(value)
