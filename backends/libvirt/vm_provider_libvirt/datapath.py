"""The disk data path of the libvirt backend: ImagePrepare, ExportDisk,
ImportDisk, and fetching image URLs for Create.

Disk bytes never travel over gRPC: they stream between the pool and an
http(s) or s3 URL or a staging directory (pvc, nfs) through
:mod:`provider_core.transfer`, which is handed the request (its staging
backend and storage options apply) and hashes the bytes on the way,
in chunks, so memory stays flat whatever the disk size. Conversions run
``qemu-img`` (:mod:`.images`) on scratch files (:mod:`.scratch`) in
``settings.download_dir`` (default: the system temp dir), which needs free
space for:

- export: the converted image (about the disk's allocated data; less when
  compressed; nothing when a raw disk is exported as raw, streamed as is);
- import and image download: the downloaded file, plus its qcow2 conversion
  for vmdk, or its (sparse) raw conversion for a pool that holds raw only.

Disks are read through their path when libvirtd runs on this host (a URI
without a host); for a remote libvirtd the volume (and its backing chain)
is first copied here with a libvirt stream (``vol.download``). New volumes
are always written with ``vol.upload`` streams, preserving holes
(:mod:`.streams`).

Idempotency: when the target volume exists, ImagePrepare and image
downloads return it if it holds the image of its checksum (or when the
image names none); ImportDisk returns it only when ``verify_checksum``
holds and it holds that image. Otherwise AlreadyExists. A volume holds the
image when :func:`storage.record_source` recorded so once it was complete
(its bytes differ from the image's when it was converted or grown), else
when its bytes match. Digests of local volumes are remembered while their
size and mtime stay the same.

An export writes ``<destination>.sha256`` beside the disk (not for
presigned URLs with a query string), since a client whose export outlived
its deadline sees only a task, and TaskStatus carries no checksum.

A downloaded image must pass its checksum, an inspection that refuses
images reading other host files (backing files, external data files,
multi-file vmdk, a "raw" image with another format's header) and
``qemu-img check`` before its volume is created; a failed upload deletes
the volume again. The libvirt test driver keeps no disk data and cannot
stream volumes: it does not offer ImagePrepare, ExportDisk and ImportDisk
(:mod:`~vm_provider_libvirt.offers`), and Create refuses an image URL there.

:class:`DiskTransfers` is built on the backend's
:class:`~vm_provider_libvirt.session.Session`; the backend holds one and
runs each operation through :meth:`Session.transferring
<vm_provider_libvirt.session.Session.transferring>`, which translates
libvirt errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import libvirt

from provider_core import (
    AlreadyExists,
    ExportResult,
    ExportSpec,
    FailedPrecondition,
    ImagePrepareSpec,
    ImportResult,
    ImportSpec,
    InvalidArgument,
    NotFound,
    Outcome,
    PreparedImage,
    ProviderError,
    Unimplemented,
    transfer,
)
from provider_core.runtime import KeyedThreadLocks
from provider_core.specs import VMImage

from . import connection, errors, images, scratch, storage, streams
from .domxml import DomainDisk
from .domxml import parse as parse_xml
from .session import Session

log = logging.getLogger(__name__)

#: Digests of local volumes already read, by (path, size, mtime, algorithm).
_digests: dict[tuple[str, int, int, str], str] = {}
_digests_lock = threading.Lock()

#: Backing layers followed when checking that an image can be read here.
MAX_CHAIN = 64
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


class DiskTransfers:
    """The disk data path of one libvirt endpoint (see the module doc)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = session.settings
        self.local_disks: bool | None = None
        """Read disks through their local path (None: when the URI reaches a
        daemon on this host)."""
        self.stores = KeyedThreadLocks()
        """Downloads into one volume, by (pool UUID, volume name): one at a
        time (:meth:`_one_store`)."""

    # -- the operations ----------------------------------------------------------

    def image_prepare(self, spec: ImagePrepareSpec) -> Outcome[PreparedImage]:
        name = _volume_name(spec.target_name, "target_name")
        pool = self.session.pool(spec.storage_hint)
        image = spec.image
        prepared = PreparedImage(id=f"{pool.name()}/{name}", path=storage.path_of(pool, name))
        facts = storage.pool_info(pool)
        facts.need(f"preparing image {name!r}", "upload" if image.source == "url" else "copy")
        if image.source == "url":

            def fetch() -> None:
                self.fetch_image(image, pool, name)

            return Outcome.later(prepared, fetch)
        source = self._source_volume(image, pool)

        def copy() -> None:
            self._copy_volume(source, pool, name, image)

        return Outcome.later(prepared, copy)

    def export_disk(self, spec: ExportSpec) -> Outcome[ExportResult]:
        images.convert_args(spec.format, compress=spec.compress)  # refuses raw + compress
        dom = self.session.lookup(spec.vm_id)
        disk, disk_path = self._pick_disk(dom, spec.disk_id)
        path, snapshot = self._snapshot_source(dom, disk, disk_path, spec.snapshot_id)
        local = self._reads_here(path)
        estimate = self._estimate(path, spec.format, local)
        direct = spec.format == "raw" and disk.format == "raw" and not snapshot  # streamed as it is
        self._check_space(0 if direct and local else estimate)
        export_id = f"export-{uuid.uuid4().hex[:16]}"

        def work() -> ExportResult:
            with contextlib.ExitStack() as stack:
                src = Path(path) if local else self._fetch_chain(path, stack)
                if not direct:
                    out = stack.enter_context(self._scratch(f".{spec.format}"))
                    images.convert(src, out, spec.format, compress=spec.compress, src_fmt=disk.format, snapshot=snapshot)
                    src = out
                with src.open("rb") as f:
                    sent = transfer.upload(f, spec, settings=self._transfer_settings())
            self._checksum_file(spec, sent)
            return ExportResult(export_id=export_id, estimated_size_bytes=sent.size, checksum=sent.sha256)

        return Outcome.later(ExportResult(export_id=export_id, estimated_size_bytes=estimate), work)

    def _checksum_file(self, spec: ExportSpec, sent: transfer.UploadResult) -> None:
        """Write ``<destination>.sha256`` (sha256sum's format) beside the
        export: a client whose export outlived its deadline gets only a task,
        whose status carries no checksum. Skipped for a URL with a query
        string (a presigned URL signs only its own object); a failure is
        logged, not raised: the export itself succeeded."""
        parts = urlsplit(spec.destination_url)
        if parts.query:
            return
        url = urlunsplit(parts._replace(path=parts.path + ".sha256", fragment=""))
        line = f"{sent.sha256}  {Path(parts.path).name}\n".encode()
        beside = spec.model_copy(update={"destination_url": url})
        try:
            transfer.upload(io.BytesIO(line), beside, settings=self._transfer_settings())
        except ProviderError as exc:
            log.warning("could not write the checksum file %s: %s", transfer.redact(url), exc)

    def import_disk(self, spec: ImportSpec) -> Outcome[ImportResult]:
        name = _volume_name(spec.target_name, "target_name")
        pool = self.session.pool(spec.storage_hint)
        storage.pool_info(pool).need(f"importing disk {name!r}", "upload")
        disk_id = f"{pool.name()}/{name}"
        expected = spec.expected_checksum if spec.verify_checksum else ""

        def work() -> ImportResult:
            with self._one_store(pool, name):
                vol = self._existing(
                    pool,
                    name,
                    expected,
                    "sha256",
                    unverified="to accept it when it matches, set verify_checksum and expected_checksum",
                )
                if vol is not None:
                    return self._import_result(disk_id, vol, expected)
                with self._scratch(f".{spec.format}") as file:
                    with file.open("wb") as f:
                        got = transfer.download(spec, f, settings=self._transfer_settings(), expected=expected)
                    vol = self._store(file, spec.format, pool, name, source=("sha256", got.sha256))
            return self._import_result(disk_id, vol, got.sha256)

        return Outcome.later(ImportResult(disk_id=disk_id), work)

    def fetch_image(self, image: VMImage, pool: libvirt.virStoragePool, name: str, capacity: int = 0) -> libvirt.virStorageVol:
        """Download ``image.url`` into ``pool`` as volume ``name``, verifying
        ``image.checksum`` and the image; return the volume, of ``capacity``
        bytes when that is more than the image's size.

        Idempotent: an existing volume of that name is returned when it
        holds the image of the checksum (or when the image has none);
        otherwise AlreadyExists. Downloads into one volume take turns
        (:meth:`_one_store`). InvalidArgument (``image_json.Checksum``) when the
        download does not match.
        """
        if not image.url:
            raise InvalidArgument.field("image_json.URL", "is empty")
        with self._one_store(pool, name):
            return self._fetch_image(image, pool, name, capacity)

    def _fetch_image(self, image: VMImage, pool: libvirt.virStoragePool, name: str, capacity: int) -> libvirt.virStorageVol:
        algorithm = image.checksum_type.value
        vol = self._existing(pool, name, image.checksum, algorithm)
        if vol is not None:
            return vol
        fmt = "raw" if image.format == "iso" else image.format
        with self._scratch(".img") as file:
            with file.open("wb") as f:
                transfer.download(
                    image.url,
                    f,
                    settings=self._transfer_settings(),
                    expected=image.checksum,
                    algorithm=algorithm,
                    url_field="image_json.URL",
                    checksum_field="image_json.Checksum",
                )
            return self._store(file, fmt, pool, name, capacity, source=(algorithm, image.checksum))

    # -- finding disks and volumes ------------------------------------------------

    def _local(self) -> bool:
        if self.local_disks is not None:
            return self.local_disks
        return connection.is_local(self.session.conn().getURI())

    def _reads_here(self, path: str) -> bool:
        """Whether the image at ``path`` is read through the file system:
        libvirt runs on this host and this process may read the image and
        every image of its backing chain (as libvirt's volumes tell it).
        Otherwise it is streamed from libvirt (``vol.download``) as from a
        remote daemon, so the provider need not run as root or as the QEMU
        user; an image that is no volume of an active pool cannot be
        streamed, and is FAILED_PRECONDITION saying why."""
        if not self._local():
            return False
        conn = self.session.conn()
        layer = path
        for _ in range(MAX_CHAIN):
            if not os.access(layer, os.R_OK):
                vol = storage.at_path(conn, path)
                if vol is None:
                    raise FailedPrecondition(
                        f"this provider (uid {os.getuid()}) cannot read {layer}, and {path} is no volume of an active "
                        "storage pool libvirt could stream it from: put the image in a pool, or let the provider read it"
                    )
                log.info("reading %s through libvirt: this process cannot read %s", path, layer)
                return False
            vol = storage.at_path(conn, layer)
            if vol is None:
                return True  # a file outside any pool: qemu-img follows its chain itself
            layer = parse_xml(vol.XMLDesc(0)).findtext("backingStore/path") or ""
            if not layer:
                return True
        return True

    def _pick_disk(self, dom: libvirt.virDomain, disk_id: str) -> tuple[DomainDisk, str]:
        """The disk ``disk_id`` (target, path or volume name; "" = the
        primary disk) and the path of its image on the host."""
        disks = [d for d in self.session.domain_disks(dom) if d.device != "cdrom"]
        if not disk_id:
            if not disks:
                raise FailedPrecondition(f"VM {dom.name()} has no disk")
            disk = disks[0]
        else:
            found = [d for d in disks if disk_id in (d.target, d.path, Path(d.path).name) or d.path.endswith(f"/{disk_id}")]
            if not found:
                raise NotFound(f"VM {dom.name()} has no disk {disk_id!r} (its disks: {', '.join(d.target for d in disks)})")
            disk = found[0]
        if disk.source_type == "volume":
            pool_name, _, vol_name = disk.path.partition("/")
            return disk, str(self.session.pool(pool_name).storageVolLookupByName(vol_name).path())
        if disk.source_type not in ("file", "block") or not disk.path:
            raise Unimplemented(
                f"disk {disk.target} of VM {dom.name()} is a {disk.source_type} disk; only file and block disks export"
            )
        return disk, disk.path

    def _snapshot_source(self, dom: libvirt.virDomain, disk: DomainDisk, path: str, snapshot_id: str) -> tuple[str, str]:
        """(image to read, internal snapshot name) for a disk at a snapshot."""
        if not snapshot_id:
            return path, ""
        xml = parse_xml(dom.snapshotLookupByName(snapshot_id).getXMLDesc())
        for entry in xml.findall("disks/disk"):
            if entry.get("name") not in (disk.target, disk.path):
                continue
            mode = entry.get("snapshot", "internal")
            if mode == "no":
                raise FailedPrecondition(f"snapshot {snapshot_id!r} does not include disk {disk.target}")
            if mode == "external":
                overlay = entry.find("source")
                created = overlay.get("file", "") if overlay is not None else ""
                base = self._backing_of(created, self._reads_here(created)) if created else ""
                if not base:
                    raise FailedPrecondition(f"snapshot {snapshot_id!r} of disk {disk.target} has no readable base image")
                return base, ""
        return path, snapshot_id

    def _source_volume(self, image: VMImage, pool: libvirt.virStoragePool) -> libvirt.virStorageVol:
        if image.path.startswith("/"):
            found = self.session.volume_at(image.path)
        elif image.path:
            found = storage.lookup(pool, image.path)
        else:
            pool_name, _, vol_name = image.template_name.rpartition("/")
            found = storage.lookup(self.session.pool(pool_name) if pool_name else pool, vol_name)
        if found is None:
            field = "image_json.Path" if image.path else "image_json.TemplateName"
            raise NotFound(f"{field}: no volume {image.path or image.template_name!r}")
        return found

    def _existing(
        self, pool: libvirt.virStoragePool, name: str, checksum: str, algorithm: str, *, unverified: str = ""
    ) -> libvirt.virStorageVol | None:
        """The volume ``name`` if it exists and holds the image of
        ``checksum``: recorded so when it was stored
        (:func:`storage.record_source`; its bytes differ from the image's
        once converted or grown), or its bytes match. AlreadyExists when
        neither holds, or, with no checksum to compare, when ``unverified``
        says why that is not enough."""
        vol = storage.lookup(pool, name)
        if vol is None:
            return None
        if not checksum and unverified:
            raise AlreadyExists(f"volume {name!r} exists in pool {pool.name()!r}; {unverified}")
        if checksum and storage.has_source(pool, name, algorithm, checksum):
            return vol
        if checksum and self._digest(vol, algorithm) != checksum:
            raise AlreadyExists(f"volume {name!r} exists in pool {pool.name()!r} with other content")
        return vol

    def _one_store(self, pool: libvirt.virStoragePool, name: str) -> contextlib.AbstractContextManager[None]:
        """One download into volume ``name`` of ``pool`` at a time through
        this endpoint: a second one of the same image (two Creates from one
        checksummed URL) waits for the first, then finds its volume complete
        and recorded instead of taken meanwhile or half-written."""
        return self.stores.hold((pool.UUIDString(), name))

    def _import_result(self, disk_id: str, vol: libvirt.virStorageVol, checksum: str) -> ImportResult:
        return ImportResult(disk_id=disk_id, path=vol.path(), actual_size_bytes=vol.info()[2], checksum=checksum)

    # -- bytes in and out of the pool ------------------------------------------------

    def _store(
        self,
        file: Path,
        fmt: str,
        pool: libvirt.virStoragePool,
        name: str,
        capacity: int = 0,
        *,
        source: tuple[str, str] = ("", ""),
    ) -> libvirt.virStorageVol:
        """Verify a downloaded image and upload it into a new volume of at
        least ``capacity`` bytes, in a format the pool holds: a vmdk becomes
        qcow2 on a file pool, anything but raw becomes raw on a pool that
        holds raw only (logical, zfs, disk, ...), so that what the volume
        holds is what its disk will be read as. ``source`` (algorithm,
        checksum of the downloaded file) is recorded once the volume is
        complete (:func:`storage.record_source`)."""
        meta = images.inspect(file, fmt)
        fmt = str(meta["format"])
        if fmt != "raw":
            result = images.check(file, fmt)
            if not result.ok:
                raise InvalidArgument(
                    f"the {fmt} image is damaged: qemu-img check found {result.corruptions} corruption(s)"
                    f" and {result.check_errors} error(s)"
                )
        facts = storage.pool_info(pool)
        with contextlib.ExitStack() as stack:
            # vmdk is stored as qcow2: snapshots and linked clones need it.
            wanted = facts.volume_format("qcow2" if fmt == "vmdk" else fmt)
            if wanted != fmt:
                converted = stack.enter_context(self._scratch(f".{wanted}"))
                log.info("converting the %s image to %s for pool %s (a %s pool)", fmt, wanted, pool.name(), facts.type)
                images.convert(file, converted, wanted, src_fmt=fmt, force_share=False)
                file, fmt = converted, wanted
            vol = self._upload_volume(file, fmt, int(meta["virtual-size"]), pool, name, capacity=capacity)
        algorithm, checksum = source
        if checksum:
            try:
                storage.record_source(pool, name, algorithm, checksum)
            except BaseException:
                with errors.best_effort(f"remove volume {name!r} after its source could not be recorded"):
                    storage.delete(vol)
                raise
        return vol

    def _upload_volume(
        self, file: Path, fmt: str, image_size: int, pool: libvirt.virStoragePool, name: str, *, capacity: int = 0
    ) -> libvirt.virStorageVol:
        """A new volume holding the image ``file`` (of ``image_size``
        virtual bytes), of ``capacity`` bytes when that is more. A raw
        volume is made at its final size (the upload fills its start); a
        qcow2 image carries its own size, so that volume is grown after."""
        facts = storage.pool_info(pool)
        made_at = max(capacity, image_size, file.stat().st_size) if fmt == "raw" else image_size
        xml = storage.volume_xml(facts, name, made_at, fmt)
        vol = _new_volume(pool, name, lambda: pool.createXML(xml, 0))
        try:
            streams.upload_file(self.session.conn(), vol, file)
            vol = pool.storageVolLookupByName(name)
            if capacity > made_at:
                facts.need(f"growing volume {name!r}", "resize")
                vol.resize(capacity, 0)
        except BaseException:
            with errors.best_effort(f"remove volume {name!r} after a failed upload"):
                vol.delete(0)
            raise
        return vol

    def _copy_volume(self, source: libvirt.virStorageVol, pool: libvirt.virStoragePool, name: str, image: VMImage) -> None:
        if self._existing(pool, name, image.checksum, image.checksum_type.value) is not None:
            return
        info = storage.describe(source)  # its format as QEMU names it
        facts = storage.pool_info(pool)
        xml = storage.volume_xml(facts, name, info.capacity, facts.volume_format(info.format))
        _new_volume(pool, name, lambda: pool.createXMLFrom(xml, source, 0))

    def _digest(self, vol: libvirt.virStorageVol, algorithm: str) -> str:
        """Hex digest of a volume's bytes: read locally (remembered while the
        file's size and mtime stay the same), or streamed from the daemon."""
        digest = hashlib.new(algorithm)
        path = vol.path()
        if not self._reads_here(path):
            log.info("hashing volume %s through a libvirt stream", vol.name())
            streams.read_all(self.session.conn(), vol, digest.update)
            return digest.hexdigest()
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns, algorithm)
        with _digests_lock:
            known = _digests.get(key)
        if known:
            return known
        log.info("hashing volume %s", path)
        with open(path, "rb") as f:
            while chunk := f.read(transfer.CHUNK):
                digest.update(chunk)
        with _digests_lock:
            if len(_digests) >= 256:
                _digests.pop(next(iter(_digests)))
            _digests[key] = digest.hexdigest()
        return digest.hexdigest()

    def _fetch_chain(self, path: str, stack: contextlib.ExitStack) -> Path:
        """Copy a remote volume and its backing chain to scratch files, each
        copy pointing at the next; return the copy of the top image."""
        return streams.copy_chain(self.session.conn(), path, lambda: stack.enter_context(self._scratch(".img")))

    def _backing_of(self, path: str, local: bool) -> str:
        if local:
            meta = images.info(path)
            return str(meta.get("full-backing-filename") or meta.get("backing-filename") or "")
        xml = parse_xml(self.session.conn().storageVolLookupByPath(path).XMLDesc(0))
        return xml.findtext("backingStore/path", "")

    def _estimate(self, path: str, fmt: str, local: bool) -> int:
        """Bytes the export will about send: the virtual size for raw, the
        allocated size otherwise."""
        if local:
            meta = images.info(path)
            return int(meta["virtual-size"] if fmt == "raw" else meta.get("actual-size", 0))
        _, capacity, allocation = self.session.conn().storageVolLookupByPath(path).info()
        return int(capacity if fmt == "raw" else allocation)

    # -- scratch space and settings ------------------------------------------------------

    def _scratch(self, suffix: str) -> contextlib.AbstractContextManager[Path]:
        """A new scratch file (see :mod:`.scratch`)."""
        return scratch.file(self.settings.download_dir, suffix)

    def _check_space(self, needed: int) -> None:
        scratch.check_space(self.settings.download_dir, needed)

    def _transfer_settings(self) -> transfer.TransferSettings:
        s = self.settings
        return transfer.TransferSettings(
            ca_file=s.tls_ca_file,
            s3_endpoint_url=s.s3_endpoint_url,
            s3_region=s.s3_region,
            s3_access_key_id=s.s3_access_key_id,
            s3_secret_access_key=s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else "",
        )


def _new_volume(pool: libvirt.virStoragePool, name: str, create: Callable[[], libvirt.virStorageVol]) -> libvirt.virStorageVol:
    """``create()`` a volume; AlreadyExists when one of its name appeared
    since it was looked for. A record of the name's source left behind by a
    volume deleted outside the provider is dropped once the new volume is
    ours, so that it does not vouch for it; never before: the volume that
    appeared meanwhile (a concurrent download of the same image) keeps its
    record."""
    vol: libvirt.virStorageVol | None = None
    with errors.ignoring(errors.is_volume_taken):
        vol = create()
    if vol is None:
        raise AlreadyExists(f"volume {name!r} appeared in pool {pool.name()!r} meanwhile")
    try:
        storage.forget_source(pool, name)
    except BaseException:
        with errors.best_effort(f"remove volume {name!r} whose stale source record could not be dropped"):
            storage.delete(vol)
        raise
    return vol


def _volume_name(name: str, field: str) -> str:
    if not VOLUME_NAME_RE.match(name):
        raise InvalidArgument.field(field, "must be 1-255 letters, digits, '.', '_', '+' or '-', starting with a letter or digit")
    return name


__all__ = ["DiskTransfers"]
