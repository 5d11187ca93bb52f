"""Images on Proxmox storage: download by URL (ImagePrepare, Create from a
URL) and references to images already there (Create from a Path).

Downloads use the storage's ``download-url`` call, which Proxmox runs as a
task and which verifies the checksum itself (``checksum`` plus
``checksum-algorithm``). Disk images go to ``import`` content (Create then
attaches them with ``import-from``), ISO images to ``iso`` content. Both need
a file-based storage with that content type: ``import_storage``, or the
request's storage hint. Disk images in ``import`` content need
libpve-storage-perl 8.3.6 on the node that downloads them
(:data:`~vm_provider_proxmox.versions.IMPORT_IMAGES`).

The format: Proxmox takes it from the file's name, so the name must say
what the image is. The format is the request's ``Format``, else the URL's
extension when that is an unambiguous one (qcow2, vmdk, iso: Proxmox checks
a download against them); a raw or unnamed one (``.img``, ``.raw``, none) is
read from the image's first bytes (:mod:`.probe`), and a ``Format: raw``
that the image contradicts is refused.

An image already on storage is used again only once verified:

- with a ``Checksum``, its file name carries that checksum and
  ``download-url`` is called anyway: Proxmox hashes the file it has ("OK, got
  correct file already") or fails the task on a mismatch (pve-common
  src/PVE/Tools.pm:1486-1520, ``download_file_from_url``);
- without one, the provider's file name carries the validators the image's
  server gives (ETag, Last-Modified, size), so a changed image is a new
  download; without validators nothing is reused. A target name chosen by
  the client (ImagePrepare) that exists already is taken as it is.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from provider_core import FailedPrecondition, ImagePrepareSpec, InvalidArgument, NotFound, Outcome, PreparedImage
from provider_core.specs import VMImage

from . import placement
from .client import PveClient
from .inventory import Cluster
from .probe import SUPPORTED, ProbeFailed, ProbeRefused, probe
from .settings import ProxmoxSettings
from .versions import IMPORT_IMAGES

FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
VOLID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*:.+$")
#: Image format -> file extension Proxmox's import and iso content accept.
EXTENSIONS = {"qcow2": "qcow2", "raw": "raw", "vmdk": "vmdk", "iso": "iso"}
#: URL extensions that name their format (Proxmox checks downloads against them).
TRUSTED = {"qcow2": "qcow2", "vmdk": "vmdk", "iso": "iso"}


@dataclass(frozen=True)
class ImageFile:
    storage: str
    content: str
    filename: str

    @property
    def volid(self) -> str:
        return f"{self.storage}:{self.content}/{self.filename}"

    @property
    def is_iso(self) -> bool:
        return self.content == "iso"


def storage_of(settings: ProxmoxSettings, hint: str) -> str:
    """The storage a request's hint names: the hint, else ``import_storage``
    ("" when neither is set)."""
    return hint or settings.import_storage


def import_storage(settings: ProxmoxSettings, hint: str) -> str:
    storage = storage_of(settings, hint)
    if not storage:
        raise FailedPrecondition(
            "images by URL need a file storage with 'import' (disk images) or 'iso' content: "
            "set import_storage in [backends.proxmox] or give a storage hint"
        )
    return storage


def _format(image: VMImage, settings: ProxmoxSettings, field: str, *, named: bool) -> tuple[str, str]:
    """(format, validators) of a URL image; probes the image when its name
    does not tell, or when validators are needed (a provider-named file
    without a checksum)."""
    ext = PurePosixPath(urlsplit(image.url).path).suffix.lstrip(".").lower()
    fmt = image.format or TRUSTED.get(ext, "")
    if fmt and fmt != "raw" and (image.checksum or named):
        return fmt, ""
    try:
        found = probe(image.url, settings.request_timeout)
    except ProbeRefused as exc:
        raise InvalidArgument.field(f"{field}.URL", str(exc)) from None
    except ProbeFailed as exc:
        if fmt:  # the request's Format, or an extension Proxmox checks the download against
            return fmt, ""
        raise InvalidArgument.field(
            f"{field}.Format",
            f"cannot tell the image's format: reading its first bytes failed ({exc}); give Format (qcow2, raw, vmdk, iso)",
        ) from None
    if found.format not in SUPPORTED:
        raise InvalidArgument.field(
            f"{field}.URL", f"the image is {found.format}, which Proxmox cannot import (qcow2, raw, vmdk or iso)"
        )
    if image.format and image.format != found.format:
        raise InvalidArgument.field(f"{field}.Format", f"says {image.format} but the image at the URL is {found.format}")
    return found.format, found.validators


def url_target(
    image: VMImage, settings: ProxmoxSettings, *, hint: str = "", filename: str = "", field: str = "image_json"
) -> ImageFile:
    """Where an image URL is downloaded to. A provider-chosen name (no
    ``filename``) is derived from the URL and its checksum (or validators),
    so the same image is downloaded once."""
    storage = import_storage(settings, hint)
    fmt, validators = _format(image, settings, field, named=bool(filename))
    ext = EXTENSIONS[fmt]
    if filename:
        if not FILENAME_RE.match(filename):
            raise InvalidArgument.field("target_name", "must be letters, digits, '.', '_' or '-' (a file name)")
        if PurePosixPath(filename).suffix.lstrip(".").lower() != ext:
            filename = f"{filename}.{ext}"
    else:
        # without a checksum or validators nothing tells a changed image from the old one: never reused
        key = f"{image.checksum_type.value}:{image.checksum}" if image.checksum else validators or uuid.uuid4().hex
        seed = image.url + "\n" + key
        filename = f"vm-provider-{hashlib.sha256(seed.encode()).hexdigest()[:16]}.{ext}"
    return ImageFile(storage, "iso" if fmt == "iso" else "import", filename)


def path_volume(image: VMImage, settings: ProxmoxSettings, field: str = "image_json") -> ImageFile:
    """The volume an image Path names: a volume id (``storage:import/x.qcow2``,
    ``storage:iso/x.iso``) or a file name on ``import_storage``."""
    path = image.path.strip()
    if VOLID_RE.match(path):
        storage, _, rest = path.partition(":")
        content, _, name = rest.partition("/")
        if content not in ("import", "iso") or not name:
            raise InvalidArgument.field(f"{field}.Path", "must name an import or iso volume, e.g. local:import/disk.qcow2")
        return ImageFile(storage, content, name)
    if not FILENAME_RE.match(path):
        raise InvalidArgument.field(f"{field}.Path", "must be a volume id (storage:import/file) or a file name on import_storage")
    ext = PurePosixPath(path).suffix.lstrip(".").lower()
    fmt = image.format or {"img": "raw"}.get(ext, ext)
    if fmt not in EXTENSIONS:
        raise InvalidArgument.field(
            f"{field}.Format", f"cannot tell the image format from {path!r}; give Format (qcow2, raw, vmdk, iso)"
        )
    return ImageFile(import_storage(settings, ""), "iso" if fmt == "iso" else "import", path)


def present(client: PveClient, node: str, f: ImageFile) -> dict[str, Any] | None:
    """The storage content entry of an image file, or None."""
    entries: list[dict[str, Any]] = client.get(f"nodes/{node}/storage/{f.storage}/content", content=f.content) or []
    for e in entries:
        if e.get("volid") == f.volid:
            return e
    return None


def download(client: PveClient, node: str, f: ImageFile, image: VMImage) -> str:
    """Start the download task (with a checksum, Proxmox verifies a file it
    already has instead); return its UPID."""
    params: dict[str, Any] = {"content": f.content, "filename": f.filename, "url": image.url}
    if image.checksum:
        params["checksum"] = image.checksum
        params["checksum-algorithm"] = image.checksum_type.value
    upid: str = client.post(f"nodes/{node}/storage/{f.storage}/download-url", **params)
    return upid


def image_prepare(cluster: Cluster, spec: ImagePrepareSpec) -> Outcome[PreparedImage]:
    """ImagePrepare: a URL is downloaded (or, already there with a checksum,
    verified) as one Proxmox task (native); a Path or TemplateName is
    checked to exist. The answer names the image for Create at once: a
    template by its VMID, an image file by its volume id (as id and path;
    Create takes it as TemplateName or Path)."""
    client, settings = cluster.client, cluster.settings
    image = spec.image
    listing = cluster.listing()
    if image.template_name:
        found = [r for r in listing.vms if r.template and image.template_name in (r.name, r.id)]
        if not found:
            raise NotFound(f"template {image.template_name!r} does not exist")
        return Outcome.done(PreparedImage(id=found[0].id))
    if image.path:
        f = path_volume(image, settings)
        node = placement.download_node(cluster, listing, f.storage, "image_json.Path", None)
        if present(client, node, f) is None:
            raise NotFound(f"image {f.volid} does not exist on node {node}")
        return Outcome.done(PreparedImage(id=f.volid, path=f.volid))
    f = url_target(image, settings, hint=spec.storage_hint, filename=spec.target_name)
    prepared = PreparedImage(id=f.volid, path=f.volid)
    origin = "storage_hint" if spec.storage_hint else "settings.import_storage"
    node = placement.download_node(cluster, listing, f.storage, origin, None if f.is_iso else IMPORT_IMAGES)
    if not image.checksum and present(client, node, f) is not None:
        return Outcome.done(prepared)
    return Outcome.native(prepared, download(client, node, f, image))
