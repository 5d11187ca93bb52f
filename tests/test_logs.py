"""Structured logs of a full run of the real ``vm-provider`` process on the
Proxmox backend (fakepve over verified HTTPS, an image server on
127.0.0.1): one access line per call with its fields, the request id on
every line logged while serving a call (the backend's and its background
task's included), and no secret anywhere, even at DEBUG."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

TOKEN_ID = "vmp@pve!ci"
SECRETS = {
    "token": "T0KEN-5ecret-of-the-api",
    "password": "Pa55word-of-root",
    "bearer": "Bearer-5ecret-of-clients",
    "signature": "5IGNATURE0fthe0url",
    "credential": "CRED3NTIAL0fthe0url",
    "url password": "URLpa55word",
}
ACCESS_FIELDS = {"method", "peer", "code", "duration_ms", "task_id", "vm_id", "request_id"}


def config(fakepve: Any, cafile: str) -> str:
    return f"""
[provider]
backend = "proxmox"

[server]
listen = "127.0.0.1:0"
health_port = 0
log_format = "json"
log_level = "debug"
allow_addresses = ["loopback"]
auth_token = "{SECRETS["bearer"]}"
health_interval = 3600
drain_delay = 0

[backends.proxmox]
endpoint = "{fakepve.url}"
ca_file = "{cafile}"
token_id = "{TOKEN_ID}"
token_secret = "{SECRETS["token"]}"
username = "root@pam"
password = "{SECRETS["password"]}"
import_storage = "cloud"
"""


def test_a_full_run_logs_each_call_with_its_request_id_and_no_secret(
    serve: Callable[..., Any], tmp_path: Path, fakepve: Any, fakepve_cafile: str
) -> None:
    fakepve.apitokens[TOKEN_ID] = SECRETS["token"]
    fakepve.storages["cloud"] = {"type": "dir", "path": "/mnt/pve/cloud", "content": "images,import", "active": 1, "files": set()}
    served_dir = tmp_path / "images"
    served_dir.mkdir()
    (served_dir / "disk").write_bytes(b"QFI\xfb" + bytes(4092))  # a qcow2 header
    with HttpSink(served_dir, basic=("reader", SECRETS["url password"])) as images:
        signed = (
            f"http://reader:{SECRETS['url password']}@127.0.0.1:{images.port}/disk"
            f"?X-Amz-Signature={SECRETS['signature']}&X-Amz-Credential={SECRETS['credential']}"
        )
        served = serve(config=config(fakepve, fakepve_cafile))
        port = served.wait_for(r'"message":"serving provider\.v1\.Provider on 127\.0\.0\.1:(\d+) ')[1]
        served.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.ProviderStub(served.channel)
        auth = ("authorization", f"Bearer {SECRETS['bearer']}")

        def call(method: str, request: Any, rid: str) -> Any:
            return getattr(stub, method)(request, metadata=[auth, ("x-request-id", rid)], timeout=30)

        def wait(task: pb.TaskRef) -> None:
            while not call("TaskStatus", pb.TaskStatusRequest(task=task), f"req-poll-{uuid.uuid4().hex[:8]}").done:
                time.sleep(0.05)

        prepared = call(
            "ImagePrepare",
            pb.ImagePrepareRequest(image_json=json.dumps({"URL": signed}), target_name="golden", storage_hint="cloud"),
            "req-prepare",
        )
        wait(prepared.task)
        made = call("Create", pb.CreateRequest(name="web-1", class_json=json.dumps({"CPU": 1, "MemoryMiB": 512})), "req-create")
        wait(made.task)
        call("Describe", pb.DescribeRequest(id=made.id), "req-describe")
        call("Power", pb.PowerRequest(id=made.id, op=pb.POWER_OP_ON), "req-power")
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListVMs(pb.ListVMsRequest(), metadata=[("authorization", "Bearer wrong")], timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = signed.replace(SECRETS["url password"], SECRETS["url password"] + "x")
        with pytest.raises(grpc.RpcError) as failed:  # the image server refuses a wrong password
            call(
                "Create",
                pb.CreateRequest(name="web-2", image_json=json.dumps({"URL": bad})),
                "req-bad-url",
            )
        deleted = call("Delete", pb.DeleteRequest(id=made.id), "req-delete")
        wait(deleted.task)
        served.proc.send_signal(signal.SIGTERM)
        assert served.exit_status() == 0

    for name, secret in SECRETS.items():
        assert secret not in served.text, f"the {name} is in the log"
        assert secret not in (failed.value.details() or ""), f"the {name} is in an error"
    records = [json.loads(line) for line in served.log]
    access = [r for r in records if r["logger"] == "provider_core.access"]
    for record in access:
        assert set(record) >= ACCESS_FIELDS, record
        assert record["peer"].startswith("ipv4:127.0.0.1:"), record
    by_id = {r["request_id"]: r for r in access}
    assert by_id["req-create"]["code"] == "OK"
    assert by_id["req-create"]["vm_id"] == made.id
    assert by_id["req-create"]["task_id"] == made.task.id
    assert by_id["req-create"]["method"] == "/provider.v1.Provider/Create"
    assert by_id["req-describe"]["vm_id"] == made.id
    assert by_id["req-delete"]["task_id"] == deleted.task.id
    assert by_id["req-bad-url"]["code"] == failed.value.code().name == "INVALID_ARGUMENT"
    assert "HTTP 401" in failed.value.details()
    (refusal,) = [r for r in access if r["code"] == "UNAUTHENTICATED"]
    assert refusal["method"] == "/provider.v1.Provider/ListVMs"
    assert len(refusal["request_id"]) == 32  # generated: the caller sent none
    calls = [r for r in access if r["method"].startswith("/provider.v1.Provider/")]
    assert len(calls) == len({r["request_id"] for r in calls}), "one access line per call"

    # The backend's own lines carry the call's id, and so do its background task's, logged after the call was answered.
    for rid in ("req-create", "req-delete"):
        lines = [i for i, r in enumerate(records) if r.get("request_id") == rid]
        answered = records.index(by_id[rid])
        assert {records[i]["logger"] for i in lines if i < answered} - {"provider_core.access"}, f"no backend line of {rid}"
    # Delete runs on as a task of the core's: its lines, logged after the call was answered, carry the call's id.
    assert any(i > answered for i in lines), "no line of the background task carries the request id"
    for record in records:
        if record["logger"].startswith(("urllib3", "vm_provider_proxmox")) and "request_id" not in record:
            assert "/qemu" not in record["message"], f"a VM's call logged without a request id: {record}"


def test_text_lines_name_the_request_id(serve: Callable[..., Any]) -> None:
    served = serve("--backend", "memory", "--port", "0", config='[server]\nlisten = "127.0.0.1:0"\ndrain_delay = 0\n')
    served.started()
    stub = pb_grpc.ProviderStub(served.channel)
    stub.Describe(pb.DescribeRequest(id="nobody"), metadata=[("x-request-id", "r-1")], timeout=10)
    stub.Describe(pb.DescribeRequest(id="nobody"), metadata=[("x-request-id", "r 2] INFO forged line")], timeout=10)
    found = served.wait_for(r"provider_core\.access: \[request_id=r-1\] Describe OK in [\d.]+ ms from ipv4:127\.0\.0\.1:\d+ ")
    assert "vm=nobody task=-" in found.string
    forged = served.wait_for(r"provider_core\.access: \[request_id=(\w+)\] Describe OK")
    assert len(forged[1]) == 32  # not a token: replaced by a generated id
    served.proc.send_signal(signal.SIGTERM)
    assert served.exit_status() == 0
    assert "forged" not in served.text


def test_lines_are_written_in_batches_in_order_warnings_at_once() -> None:
    import io
    import logging

    from provider_core.logs import BatchingHandler

    stream = io.StringIO()
    handler = BatchingHandler(stream, interval=0.2)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test_logs.batching")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("one")
        log.info("two")
        assert stream.getvalue() == ""  # not yet: the next batch
        log.warning("three")
        assert stream.getvalue() == "INFO one\nINFO two\nWARNING three\n"
        log.info("four")
        deadline = time.monotonic() + 5
        while not stream.getvalue().endswith("INFO four\n"):
            assert time.monotonic() < deadline, "an INFO line was never written"
            time.sleep(0.05)
    finally:
        log.removeHandler(handler)


def test_a_failed_write_neither_stops_the_batches_nor_reaches_the_caller() -> None:
    """A write to standard error that fails once (a full non-blocking pipe)
    is reported the way logging reports it; the lines after it are still
    written, and the logging call never raises."""
    import io
    import logging

    from provider_core.logs import BatchingHandler

    class Flaky(io.StringIO):
        failures = 2

        def write(self, s: str) -> int:
            if self.failures:
                self.failures -= 1
                raise BlockingIOError(11, "Resource temporarily unavailable")
            return super().write(s)

    stream = Flaky()
    handler = BatchingHandler(stream, interval=0.05)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    reported: list[logging.LogRecord | None] = []
    handler.handleError = reported.append  # type: ignore[method-assign]  # logging's report, to count here
    log = logging.getLogger("test_logs.flaky")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.warning("lost at once")  # written in the caller's thread: the failure stays in the handler
        log.info("lost in the batch")
        time.sleep(0.3)
        log.info("kept")
        deadline = time.monotonic() + 5
        while "INFO kept\n" not in stream.getvalue():
            assert time.monotonic() < deadline, "the batches stopped after a failed write"
            time.sleep(0.05)
        assert len(reported) == 2
    finally:
        log.removeHandler(handler)
