"""Image URLs: the format is what the image is, not what its name says, and
an image already on storage is used again only once Proxmox verified it.

Proxmox takes an import volume's format from its file name (pve-storage
src/PVE/Storage/Plugin.pm:831-833), and Ubuntu's ``.img`` cloud images are
qcow2: a file named ``.raw`` would be imported as a raw disk. The images
here are served on 127.0.0.1 and really fetched by the test cluster, which
verifies checksums the way ``download-url`` does (pvesim.downloads).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import grpc
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import TaskFailed

QCOW2 = b"QFI\xfb\x00\x00\x00\x03" + bytes(504) + b"qcow2 image one"
QCOW2_NEWER = b"QFI\xfb\x00\x00\x00\x03" + bytes(504) + b"qcow2 image two"
RAW = b"\xeb\x63\x90" + bytes(509) + b"a raw disk"
ISO = bytes(0x8001) + b"CD001" + bytes(100)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def imported(pve: Any, vm: str) -> str:
    """The volume the VM's root disk was imported from."""
    scsi0 = pve.vm(int(vm)).config["scsi0"]
    return next(part.split("=", 1)[1] for part in scsi0.split(",") if part.startswith("import-from="))


def prepare(ops: Any, image: dict[str, str], target: str) -> Any:
    return ops.stub.ImagePrepare(pb.ImagePrepareRequest(image_json=json.dumps(image), target_name=target), timeout=30)


# -- the format ----------------------------------------------------------------------------


def test_img_url_holding_qcow2_is_imported_as_qcow2(ops: Any, pve: Any, cluster: Any, images: Any) -> None:
    url = images.serve("noble-server-cloudimg-amd64.img", QCOW2)
    vm = ops.create("img-1", image_json={"URL": url, "Checksum": sha(QCOW2)})
    volid = imported(pve, vm)
    assert volid.endswith(".qcow2")
    assert cluster.downloads.format_of(volid) == "qcow2"


def test_img_url_holding_raw_is_imported_as_raw(ops: Any, pve: Any, cluster: Any, images: Any) -> None:
    url = images.serve("disk.img", RAW)
    vm = ops.create("img-2", image_json={"URL": url})
    volid = imported(pve, vm)
    assert volid.endswith(".raw")
    assert cluster.downloads.format_of(volid) == "raw"


def test_prepare_of_an_img_url_names_the_file_by_its_format(ops: Any, pve: Any, cluster: Any, images: Any) -> None:
    url = images.serve("jammy.img", QCOW2)
    ops.h.wait(prepare(ops, {"URL": url, "Checksum": sha(QCOW2)}, "jammy").task)
    assert cluster.downloads.format_of("cloud:import/jammy.qcow2") == "qcow2"
    assert "import/jammy.raw" not in pve.storages["cloud"].get("volumes", {})


def test_format_that_contradicts_the_image_is_refused(ops: Any, images: Any) -> None:
    url = images.serve("disk.img", QCOW2)
    code, message = ops.fails(lambda: prepare(ops, {"URL": url, "Format": "raw"}, "contradiction"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "image_json.Format" in message
    assert "qcow2" in message


def test_unreadable_img_url_needs_a_format(ops: Any) -> None:
    code, message = ops.fails(lambda: prepare(ops, {"URL": "http://127.0.0.1:9/unreachable.img"}, "x"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "image_json.Format" in message


def test_probe_keeps_to_the_url_policy(ops: Any, images: Any) -> None:
    """The provider reads the image itself, so the core's URL policy holds
    for it: a redirect to the cloud metadata address is refused before any
    connection to it (provider_core.urls)."""
    url = images.redirect("metadata.img", "http://169.254.169.254/latest/meta-data")
    code, message = ops.fails(lambda: prepare(ops, {"URL": url}, "x"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "image_json.URL" in message
    assert "link-local" in message


def test_probe_follows_redirects(ops: Any, images: Any) -> None:
    target = images.serve("real/noble.img", QCOW2)
    url = images.redirect("latest.img", target)
    code, _ = ops.fails(lambda: prepare(ops, {"URL": url, "Format": "raw"}, "noble-redirected"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT  # read through the redirect: it is qcow2


# -- images already on storage ---------------------------------------------------------------


def test_a_changed_image_with_its_new_checksum_is_downloaded_again(ops: Any, pve: Any, cluster: Any, images: Any) -> None:
    url = images.serve("current/jammy.qcow2", QCOW2)
    first = ops.create("sum-1", image_json={"URL": url, "Checksum": sha(QCOW2)})
    images.serve("current/jammy.qcow2", QCOW2_NEWER)  # the "current" image moved on
    second = ops.create("sum-2", image_json={"URL": url, "Checksum": sha(QCOW2_NEWER)})
    assert cluster.downloads.stored[imported(pve, first)] == QCOW2
    assert cluster.downloads.stored[imported(pve, second)] == QCOW2_NEWER


def test_the_same_image_is_verified_not_fetched_again(ops: Any, pve: Any, images: Any) -> None:
    url = images.serve("debian.qcow2", QCOW2)
    one = ops.create("sum-3", image_json={"URL": url, "Checksum": sha(QCOW2)})
    two = ops.create("sum-4", image_json={"URL": url, "Checksum": sha(QCOW2)})
    assert imported(pve, one) == imported(pve, two)
    assert [p for p, _ in images.gets if p == "/debian.qcow2"] == ["/debian.qcow2"]  # fetched once
    downloads = [p for m, p, _ in pve.requests if p.endswith("/download-url")]
    assert len(downloads) == 2  # the second asked Proxmox to verify the file it has


def test_a_wrong_checksum_fails_even_when_an_image_is_there(ops: Any, images: Any) -> None:
    url = images.serve("debian.qcow2", QCOW2)
    ops.create("sum-5", image_json={"URL": url, "Checksum": sha(QCOW2)})
    resp = ops.stub.Create(pb.CreateRequest(name="sum-6", image_json=json.dumps({"URL": url, "Checksum": "0" * 64})), timeout=30)
    with pytest.raises(TaskFailed, match="checksum mismatch"):
        ops.h.wait(resp.task)


def test_without_checksum_a_changed_image_is_fetched_again(ops: Any, pve: Any, cluster: Any, images: Any) -> None:
    url = images.serve("current/noble.qcow2", QCOW2)
    first = ops.create("sum-7", image_json={"URL": url})
    images.serve("current/noble.qcow2", QCOW2_NEWER)  # its ETag changes with it
    second = ops.create("sum-8", image_json={"URL": url})
    assert cluster.downloads.stored[imported(pve, second)] == QCOW2_NEWER
    assert imported(pve, first) != imported(pve, second)


def test_prepare_verifies_an_image_already_there(ops: Any, images: Any) -> None:
    url = images.serve("bookworm.qcow2", QCOW2)
    ops.h.wait(prepare(ops, {"URL": url, "Checksum": sha(QCOW2)}, "bookworm").task)
    ops.h.wait(prepare(ops, {"URL": url, "Checksum": sha(QCOW2)}, "bookworm").task)  # repeated: Proxmox checks it
    with pytest.raises(TaskFailed, match="checksum mismatch"):
        ops.h.wait(prepare(ops, {"URL": url, "Checksum": sha(QCOW2_NEWER)}, "bookworm").task)


def test_iso_url(ops: Any, pve: Any, cluster: Any, images: Any) -> None:
    url = images.serve("installer.img", ISO)
    vm = ops.create("iso-img-1", image_json={"URL": url, "Checksum": sha(ISO)}, disks_json=[{"SizeGiB": 4}])
    volume = pve.vm(int(vm)).config["ide2"].split(",")[0]
    assert volume.startswith("cloud:iso/")
    assert cluster.downloads.format_of(volume) == "iso"
