"""ExportDisk and ImportDisk: the disk data path through a node's shell.

The Proxmox API has no call that streams a disk out of or into a storage,
so the bytes move over SSH (:mod:`.node`) between the node and the
provider, which streams them to or from the destination with
:mod:`provider_core.transfer` (S3 multipart, HTTP PUT or GET, staging
directories), hashing SHA256 on the way in flat memory (``relay``). With
``direct_transfers`` the node's curl reaches S3 or the client's http(s) URL
itself (``direct``, :mod:`.direct`): through URLs the provider presigns,
so that no credential of the client's reaches a root shell on the node.

Export: the disk as it is now or at a snapshot (:mod:`.sources`: which
volume, and how it reads at the snapshot; a snapshot only Proxmox can copy
is read from a temporary full clone, made before the node is reached and
destroyed after the stream, whatever happened); ``pvesm path`` names the
volume's file or device on the VM's node; ``qemu-img convert`` writes the
asked format there (``-c`` when compressed; ``-U`` while the VM runs: a
crash-consistent copy of a disk as it is now, or the snapshot, which the
running VM does not change) into ``node_tmp_dir``;
``cat`` streams it to the provider, which uploads it; the converted file is
removed in every case.

Import: into ``import`` content of a file storage (``storage_hint``, else
``import_storage``), on a node where it is available and whose
libpve-storage-perl takes disk images there (8.3.6 and later), as
``<storage>:import/<target_name>.<format>``. The provider downloads and
writes the bytes into a hidden ``.part`` file beside the target on the node;
the node then verifies them (``sha256sum`` against what was received, and
``qemu-img info`` and ``qemu-img check``: the format must be the one asked
for, the image sound and reading no other file of the node) before renaming it into place. Any failure removes
the ``.part`` file. The volume id is the answer's ``disk_id`` and ``path``:
Create takes it as image_json ``Path`` and attaches a copy of it to the new
VM through the API (``import-from``). A target already there is taken when
its SHA256 is the expected one, and refused otherwise.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import uuid
from typing import Any

from provider_core import (
    AlreadyExists,
    ExportResult,
    ExportSpec,
    FailedPrecondition,
    ImportResult,
    ImportSpec,
    InvalidArgument,
    Outcome,
    transfer,
)

from . import direct, images, placement, sources
from .inventory import Cluster
from .node import CommandFailed, NodeShell, Session
from .versions import IMPORT_IMAGES

log = logging.getLogger(__name__)

FORMATS = ("qcow2", "raw", "vmdk")
#: Formats ``qemu-img convert -c`` compresses.
COMPRESSIBLE = ("qcow2", "vmdk")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
#: ``qemu-img check`` exit statuses that pass: leaked clusters only (3:
#: space lost, data sound) and a format without consistency checks (63: raw).
CHECK_PASSES = (3, 63)


def export_disk(cluster: Cluster, shell: NodeShell, spec: ExportSpec) -> Outcome[ExportResult]:
    direct.check(spec)
    if spec.compress and spec.format not in COMPRESSIBLE:
        raise InvalidArgument.field("compress", f"qemu-img compresses {' and '.join(COMPRESSIBLE)} only, not {spec.format}")
    ref = cluster.state(spec.vm_id)
    source = sources.resolve(cluster, ref, spec.disk_id, spec.snapshot_id)
    drive = source.drive
    export_id = f"export-{uuid.uuid4().hex[:16]}"
    running = ref.running and source.how != "clone"  # a temporary clone is stopped

    def work() -> ExportResult:
        with sources.opened(cluster, ref, source) as readable, shell.session(ref.node) as node:
            path = node.run(["pvesm", "path", readable.drive.volume]).strip()
            tmp = node.run(["mktemp", "-p", cluster.settings.node_tmp_dir, f"vmp-{export_id}-XXXXXX"]).strip()
            try:
                argv = ["qemu-img", "convert", "-O", spec.format, *(["-c"] if spec.compress else [])]
                argv += ["-U"] if running else []
                node.run([*argv, *readable.args(path), tmp])
                size = node.size(tmp)
                if spec.transfer_mode == "direct":
                    sent = direct.upload(node, tmp, size, spec, cluster.settings)
                else:
                    with node.reading(["cat", tmp]) as stream:
                        sent = transfer.upload(stream, spec, size=size)
            finally:
                node.cleanup(["rm", "-f", tmp])
        log.info("VM %s: %s exported (%d bytes, sha256 %s)", ref.vmid, drive.key, sent.size, sent.sha256)
        return ExportResult(export_id=export_id, estimated_size_bytes=sent.size, checksum=sent.sha256)

    return Outcome.later(ExportResult(export_id=export_id, estimated_size_bytes=drive.size_bytes), work)


def import_disk(cluster: Cluster, shell: NodeShell, spec: ImportSpec) -> Outcome[ImportResult]:
    direct.check(spec)
    if not NAME_RE.match(spec.target_name):
        raise InvalidArgument.field("target_name", "must be letters, digits, '.', '_' and '-' (a file name on the storage)")
    storage = images.import_storage(cluster.settings, spec.storage_hint)
    target = images.ImageFile(storage, "import", f"{spec.target_name}.{spec.format}")
    origin = "storage_hint" if spec.storage_hint else "settings.import_storage"
    _holds_import(cluster, storage, origin)
    node_name = placement.download_node(cluster, cluster.listing(), target.storage, origin, IMPORT_IMAGES)
    expected = spec.expected_checksum if spec.verify_checksum else ""

    def work() -> ImportResult:
        with shell.session(node_name) as node:
            final = node.run(["pvesm", "path", target.volid]).strip()
            if node.status(["test", "-e", final]) == 0:
                return _existing(node, target.volid, final, expected)
            folder, name = posixpath.split(final)
            part = posixpath.join(folder, f".{name}.part")
            node.run(["mkdir", "-p", folder])
            try:
                if spec.transfer_mode == "direct":
                    got = direct.fetch(node, spec, part, expected, cluster.settings)  # hashed there
                else:
                    with node.writing(["dd", f"of={part}", "bs=1M", "status=none"]) as sink:
                        got = transfer.download(spec, sink, expected=expected)
                    _received(node, part, got.sha256)
                _verify(node, part, spec.format)
                node.run(["mv", "-f", part, final])
            except BaseException:
                node.cleanup(["rm", "-f", part])
                raise
        log.info("imported %s (%d bytes, sha256 %s)", target.volid, got.size, got.sha256)
        return ImportResult(disk_id=target.volid, path=target.volid, actual_size_bytes=got.size, checksum=got.sha256)

    return Outcome.later(ImportResult(disk_id=target.volid, path=target.volid), work)


def _holds_import(cluster: Cluster, storage: str, origin: str) -> None:
    entries: list[dict[str, Any]] = cluster.client.get("storage") or []
    found = next((e for e in entries if e.get("storage") == storage), None)
    if found is None:
        raise InvalidArgument.field(origin, f"storage {storage!r} does not exist")
    content = [c for c in str(found.get("content", "")).split(",") if c]
    if "import" not in content:
        held = ", ".join(content) or "none"
        why = f"storage {storage!r} holds no 'import' content ({held}); ImportDisk places disks there"
        raise InvalidArgument.field(origin, why)


def _received(node: Session, path: str, sha256: str) -> None:
    """The file on the node holds the bytes the provider sent."""
    on_node = node.sha256(path)
    if on_node != sha256:
        raise FailedPrecondition(f"the file written on {node.where} has sha256 {on_node}, not {sha256} as received")


def _verify(node: Session, path: str, fmt: str) -> None:
    """The file on the node is an image in format ``fmt``, sound."""
    try:
        info = json.loads(node.run(["qemu-img", "info", "--output=json", path]))
    except CommandFailed as exc:
        raise InvalidArgument.field("source_url", f"holds no image qemu-img can open: {exc}") from None
    found = info.get("format", "")
    if found != fmt:
        raise InvalidArgument.field("format", f"says {fmt}, but the image from source_url is {found or 'unknown'}")
    elsewhere = _reads_elsewhere(info)
    if elsewhere:
        raise InvalidArgument.field("source_url", f"holds a {fmt} image that reads another file of the node ({elsewhere})")
    try:
        node.run(["qemu-img", "check", "-q", "-f", fmt, path])
    except CommandFailed as exc:
        if exc.status not in CHECK_PASSES:
            raise InvalidArgument.field("source_url", f"holds a damaged {fmt} image: {exc}") from None


def _reads_elsewhere(info: dict[str, Any]) -> str:
    """What of an image (``qemu-img info``'s answer) reads another file than
    itself: a backing file, a qcow2 external data file, a vmdk extent. A VM
    made from such an image would read that file of the node (another VM's
    disk, say); "" when none."""
    if info.get("backing-filename") or info.get("full-backing-filename"):
        return "a backing file"
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        return "an external data file"
    if any(extent.get("filename") != info.get("filename") for extent in data.get("extents") or ()):
        return "an extent in another file"
    return ""


def _existing(node: Session, volid: str, path: str, expected: str) -> ImportResult:
    if not expected:
        raise AlreadyExists(f"{volid} exists; to accept it when it matches, set verify_checksum and expected_checksum")
    digest = node.sha256(path)
    if digest != expected:
        raise AlreadyExists(f"{volid} exists with sha256 {digest}, not the expected {expected}")
    size = node.size(path)
    return ImportResult(disk_id=volid, path=volid, actual_size_bytes=size, checksum=digest)


__all__ = ["FORMATS", "export_disk", "import_disk"]
