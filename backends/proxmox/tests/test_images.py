"""ImagePrepare: Proxmox downloads the URL (checksum verified by Proxmox)
as one task; an image already there is not fetched again."""

from __future__ import annotations

import json
from typing import Any

import grpc
from vm_provider_proxmox.tasks import parse_upid

from provider_core.pb import provider_pb2 as pb

SHA = "b" * 64


def prepare(ops: Any, image: dict[str, str], target: str, hint: str = "") -> Any:
    return ops.stub.ImagePrepare(
        pb.ImagePrepareRequest(image_json=json.dumps(image), target_name=target, storage_hint=hint), timeout=30
    )


def test_download_with_checksum(ops: Any, pve: Any) -> None:
    image = {"URL": "https://images.example.invalid/noble.img", "Format": "qcow2", "Checksum": SHA}
    resp = prepare(ops, image, "noble")
    upid = parse_upid(resp.task.id)
    assert upid is not None
    assert (upid.type, upid.node) == ("download", "pve1")
    ops.h.wait(resp.task)
    body = next(b for m, p, b in pve.requests if p.endswith("/nodes/pve1/storage/cloud/download-url"))
    for part in (b"content=import", b"filename=noble.qcow2", b"checksum=" + SHA.encode(), b"checksum-algorithm=sha256"):
        assert part in body
    again = prepare(ops, image, "noble")  # already there: Proxmox hashes the file it has, fetches nothing
    ops.h.wait(again.task)
    assert len([p for m, p, _ in pve.requests if p.endswith("/download-url")]) == 2
    unchecked = prepare(ops, {k: v for k, v in image.items() if k != "Checksum"}, "noble")
    assert not unchecked.task.id  # without a checksum the client's file is taken as it is


def test_iso_and_storage_hint(ops: Any, pve: Any) -> None:
    pve.storages["local"]["content"] = "iso,vztmpl,backup"
    ops.h.wait(prepare(ops, {"URL": "https://images.example.invalid/netinst.iso"}, "netinst", hint="local").task)
    assert "netinst.iso" in str(pve.storages["local"]["files"])


def test_refusals(ops: Any) -> None:
    for image, target, hint, code, said in [
        ({"URL": "https://x.invalid/disk"}, "d", "", grpc.StatusCode.INVALID_ARGUMENT, "Format"),
        ({"URL": "https://x.invalid/d.qcow2"}, "../escape", "", grpc.StatusCode.INVALID_ARGUMENT, "target_name"),
        ({"URL": "https://x.invalid/d.qcow2"}, "d", "local-lvm", grpc.StatusCode.INVALID_ARGUMENT, "not a file based storage"),
        ({"Path": "cloud:import/missing.qcow2"}, "d", "", grpc.StatusCode.NOT_FOUND, "missing.qcow2"),
        ({"TemplateName": "nope"}, "d", "", grpc.StatusCode.NOT_FOUND, "nope"),
    ]:
        got, message = ops.fails(lambda i=image, t=target, h=hint: prepare(ops, i, t, h))
        assert got is code, message
        assert said in message


def test_present_path_and_template(ops: Any, pve: Any) -> None:
    pve.store_file("cloud", "debian.qcow2", 2**30, content="import")
    pve.add_vm(9000, "tmpl", template=True, config={"scsi0": "local-lvm:base-9000-disk-0,size=2G"})
    assert not prepare(ops, {"Path": "cloud:import/debian.qcow2"}, "debian").task.id
    assert not prepare(ops, {"Path": "debian.qcow2"}, "debian").task.id
    assert not prepare(ops, {"TemplateName": "tmpl"}, "tmpl").task.id


def test_without_import_storage(provider: Any, ops_for: Any, settings: dict[str, Any]) -> None:
    ops = ops_for(provider({**settings, "import_storage": ""}))
    code, message = ops.fails(lambda: prepare(ops, {"URL": "https://x.invalid/d.qcow2"}, "d"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "import_storage" in message
