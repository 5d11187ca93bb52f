"""Offered disk capabilities exercised end to end: disk info, image
preparation, export and import. Files travel through an HTTP server and an
S3 server (moto's) the kit runs on 127.0.0.1, never over gRPC.

Images and disks made by ImagePrepare and ImportDisk stay on the backend's
storage (the protocol has no RPC to remove them); their names start with the
kit's name prefix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc

from ..capabilities import Capability
from ..pb import provider_pb2 as pb
from .kit import Code, Kit, describe_error, expect, skip
from .registry import check

IMAGE = b"\0" * (1 << 20)
"""A 1 MiB raw disk image: what the kit serves when a fixture gives none."""
WRONG_SHA256 = "0" * 64


def outcome_error(kit: Kit, rpc: str, request: object) -> str:
    """Call ``rpc`` and poll its task; return the error it ended with ("" if none)."""
    try:
        resp = kit.call(rpc, request)
    except grpc.RpcError as err:
        expect(err.code() is not Code.INTERNAL, f"{rpc} answered INTERNAL: {err.details()}")
        return describe_error(err)
    return kit.task_error(resp.task)


@check("primary", needs=Capability.DISK_INFO)
def disk_info(kit: Kit) -> None:
    """GetDiskInfo describes the primary disk and each disk ListVMs lists; an unknown disk is NOT_FOUND."""
    vm = kit.create_vm("diskinfo")
    primary = kit.ok("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=vm))
    expect(primary.disk_id, "GetDiskInfo of the primary disk gives no disk_id")
    expect(primary.virtual_size_bytes > 0, f"GetDiskInfo gives virtual_size_bytes {primary.virtual_size_bytes}")
    expect(primary.format, "GetDiskInfo gives no format")
    again = kit.ok("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=vm, disk_id=primary.disk_id))
    expect(again.disk_id == primary.disk_id, f"GetDiskInfo(disk_id={primary.disk_id!r}) describes disk {again.disk_id!r}")
    listed = kit.listed(vm)
    assert listed is not None
    ids = [d.id for d in listed.disks]
    expect(primary.disk_id in ids, f"the primary disk {primary.disk_id!r} is not among the disks ListVMs lists ({ids})")
    for disk in listed.disks:
        info = kit.ok("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=vm, disk_id=disk.id))
        expect(
            info.virtual_size_bytes >= disk.size_gib * 2**30 * 0.99,
            f"disk {disk.id}: ListVMs says {disk.size_gib} GiB, GetDiskInfo {info.virtual_size_bytes} bytes",
        )
    kit.refused("GetDiskInfo", pb.GetDiskInfoRequest(vm_id=vm, disk_id="conformance-no-such-disk"), Code.NOT_FOUND)


def prepare_image(kit: Kit) -> tuple[dict[str, str], bool]:
    """The image to prepare, and whether the kit serves it."""
    if kit.fixtures.prepare_image_json:
        return kit.fixtures.json_object("prepare_image_json"), False
    url, sha = kit.serve("conformance-image.raw", IMAGE)
    return {"URL": url, "Format": "raw", "Checksum": sha}, True


@check("prepare", needs=Capability.IMAGE_PREPARE)
def image_prepare(kit: Kit) -> None:
    """ImagePrepare brings an image onto storage and names it at once
    (prepared_image_id); repeating it succeeds; a Create given that id as
    TemplateName makes a VM from it."""
    image, _ = prepare_image(kit)
    target = kit.vm_name("image")
    request = pb.ImagePrepareRequest(image_json=json.dumps(image), target_name=target)
    first = kit.ok("ImagePrepare", request)
    expect(first.prepared_image_id, f"ImagePrepare({target}) answered no prepared_image_id: a Create cannot name the image")
    kit.wait(first.task, f"ImagePrepare({target})")
    again = kit.ok("ImagePrepare", request)
    kit.wait(again.task, f"a repeated ImagePrepare({target})")
    expect(
        (again.prepared_image_id, again.prepared_image_path) == (first.prepared_image_id, first.prepared_image_path),
        f"a repeated ImagePrepare({target}) names the image {again.prepared_image_id!r}, the first {first.prepared_image_id!r}",
    )
    vm = kit.create_vm("prepared", image_json=json.dumps({"TemplateName": first.prepared_image_id}))
    expect(
        kit.describe(vm).exists, f"Describe says the VM made from the prepared image {first.prepared_image_id!r} does not exist"
    )


@check("checksum", needs=Capability.IMAGE_PREPARE)
def image_prepare_checksum(kit: Kit) -> None:
    """ImagePrepare with a wrong checksum fails and leaves nothing that blocks a correct retry."""
    image, served = prepare_image(kit)
    if not served:
        raise skip("prepare_image_json is set: the kit checks checksums only on the image it serves itself")
    target = kit.vm_name("badsum")
    wrong = pb.ImagePrepareRequest(image_json=json.dumps({**image, "Checksum": WRONG_SHA256}), target_name=target)
    error = outcome_error(kit, "ImagePrepare", wrong)
    expect(error, "ImagePrepare of an image whose checksum does not match succeeded")
    right = pb.ImagePrepareRequest(image_json=json.dumps(image), target_name=target)
    kit.wait(kit.ok("ImagePrepare", right).task, "ImagePrepare with the right checksum after a failed one")


def export(kit: Kit, vm: str, fmt: str, compress: bool, *, s3: bool = False) -> None:
    """Export ``vm``'s disk to the kit's HTTP server (or S3 server) and check
    what arrived against the checksum the answer reports."""
    name = f"export-{vm}-{'z' if compress else 'plain'}.{fmt}"
    url, credentials = kit.s3_place(name) if s3 else (kit.sink.url(name), {})
    request = pb.ExportDiskRequest(vm_id=vm, destination_url=url, format=fmt, compress=compress, credentials=credentials)
    resp = kit.ok("ExportDisk", request)
    expect(resp.export_id, "ExportDisk returned an empty export_id")
    kit.wait(resp.task, f"ExportDisk({vm}, {fmt})")
    data = kit.s3_object(name) if s3 else kit.received(name)
    expect(data, f"ExportDisk({vm}, {fmt}) finished but nothing arrived at {url}")
    assert data is not None
    if not resp.task.id:
        sha = hashlib.sha256(data).hexdigest()
        expect(
            resp.checksum.lower().removeprefix("sha256:") == sha,
            f"ExportDisk says checksum {resp.checksum!r}; what arrived has SHA256 {sha}",
        )


@check("http", needs=Capability.DISK_EXPORT)
def export_disk(kit: Kit) -> None:
    """ExportDisk uploads the disk to an HTTP URL, with the SHA256 of what was sent; an unknown format is INVALID_ARGUMENT."""
    vm = kit.create_vm("export")
    export(kit, vm, kit.offer.export_formats[0], compress=False)
    url = kit.sink.url("never.bin")
    kit.refused(
        "ExportDisk", pb.ExportDiskRequest(vm_id=vm, destination_url=url, format="conformance-format"), Code.INVALID_ARGUMENT
    )


@check("s3", needs=Capability.DISK_EXPORT)
def export_disk_s3(kit: Kit) -> None:
    """ExportDisk uploads to an s3:// URL, endpoint and keys in the request's credentials, with the SHA256 of what was sent."""
    vm = kit.create_vm("exports3")
    export(kit, vm, kit.offer.export_formats[0], compress=False, s3=True)


@check("http", needs=Capability.EXPORT_COMPRESSION)
def export_compressed(kit: Kit) -> None:
    """ExportDisk with compress=true uploads the disk."""
    vm = kit.create_vm("exportz")
    formats = kit.offer.export_formats
    export(kit, vm, "qcow2" if "qcow2" in formats else formats[0], compress=True)


def import_source(kit: Kit) -> tuple[bytes, str]:
    formats = kit.offer.import_formats
    if kit.fixtures.import_file:
        fmt = kit.fixtures.import_format or "raw"
        expect(fmt in formats, f"the import_format fixture {fmt!r} is not among the import formats offered {list(formats)}")
        return Path(kit.fixtures.import_file).read_bytes(), fmt
    if "raw" not in formats:
        raise skip(f"this endpoint imports no raw images ({list(formats)}): set the import_file and import_format fixtures")
    return IMAGE, "raw"


def import_from(kit: Kit, url: str, sha: str, fmt: str, *, credentials: dict[str, str], label: str) -> None:
    """Import ``url`` verifying ``sha``, then again expecting a wrong SHA256 to fail."""
    target = kit.vm_name(label)
    request = pb.ImportDiskRequest(
        source_url=url, format=fmt, target_name=target, verify_checksum=True, expected_checksum=sha, credentials=credentials
    )
    resp = kit.ok("ImportDisk", request)
    kit.wait(resp.task, f"ImportDisk({target})")
    expect(resp.disk_id, "ImportDisk returned an empty disk_id")
    if not resp.task.id and resp.checksum:
        expect(
            resp.checksum.lower().removeprefix("sha256:") == sha,
            f"ImportDisk says checksum {resp.checksum!r}, the file's SHA256 is {sha}",
        )
    bad = pb.ImportDiskRequest(
        source_url=url,
        format=fmt,
        target_name=kit.vm_name(f"bad{label}"),
        verify_checksum=True,
        expected_checksum=WRONG_SHA256,
        credentials=credentials,
    )
    expect(outcome_error(kit, "ImportDisk", bad), "ImportDisk of a file whose SHA256 does not match the expected one succeeded")


@check("http", needs=Capability.DISK_IMPORT)
def import_disk(kit: Kit) -> None:
    """ImportDisk fetches a disk from an HTTP URL, verifying its SHA256; a wrong checksum fails."""
    data, fmt = import_source(kit)
    url, sha = kit.serve(f"import.{fmt}", data)
    import_from(kit, url, sha, fmt, credentials={}, label="import")


@check("s3", needs=Capability.DISK_IMPORT)
def import_disk_s3(kit: Kit) -> None:
    """ImportDisk fetches a disk from an s3:// URL (credentials in the request), verifying its SHA256; a wrong checksum fails."""
    data, fmt = import_source(kit)
    key = f"import-{kit.run_tag}.{fmt}"
    sha = kit.s3_put(key, data)
    url, credentials = kit.s3_place(key)
    import_from(kit, url, sha, fmt, credentials=credentials, label="imports3")
