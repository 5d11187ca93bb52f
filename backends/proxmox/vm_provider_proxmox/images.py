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
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from provider_core import FailedPrecondition, ImagePrepareSpec, InvalidArgument, NotFound, Outcome
from provider_core.specs import VMImage

from . import placement
from .client import PveClient
from .inventory import Cluster
from .settings import ProxmoxSettings
from .versions import IMPORT_IMAGES

FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
VOLID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*:.+$")
#: Image format -> file extension Proxmox's import content accepts.
EXTENSIONS = {"qcow2": "qcow2", "raw": "raw", "img": "raw", "vmdk": "vmdk", "iso": "iso"}


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


def _format(image: VMImage, name: str, field: str) -> str:
    if image.format:
        return image.format
    ext = PurePosixPath(name).suffix.lstrip(".").lower()
    if ext in EXTENSIONS:
        return "raw" if ext == "img" else ext
    raise InvalidArgument.field(
        f"{field}.Format", f"cannot tell the image format from {name!r}; give Format (qcow2, raw, vmdk, iso)"
    )


def _storage(settings: ProxmoxSettings, hint: str) -> str:
    storage = hint or settings.import_storage
    if not storage:
        raise FailedPrecondition(
            "images by URL need a file storage with 'import' (disk images) or 'iso' content: "
            "set import_storage in [backends.proxmox] or give a storage hint"
        )
    return storage


def url_target(
    image: VMImage, settings: ProxmoxSettings, *, hint: str = "", filename: str = "", field: str = "image_json"
) -> ImageFile:
    """Where an image URL is downloaded to. Without ``filename`` the name is
    derived from the URL, so the same URL is downloaded once."""
    fmt = _format(image, urlsplit(image.url).path, field)
    ext = EXTENSIONS[fmt]
    if filename:
        if not FILENAME_RE.match(filename):
            raise InvalidArgument.field("target_name", "must be letters, digits, '.', '_' or '-' (a file name)")
        if PurePosixPath(filename).suffix.lstrip(".").lower() != ext:
            filename = f"{filename}.{ext}"
    else:
        filename = f"vm-provider-{hashlib.sha256(image.url.encode()).hexdigest()[:16]}.{ext}"
    return ImageFile(_storage(settings, hint), "iso" if fmt == "iso" else "import", filename)


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
    fmt = _format(image, path, field)
    return ImageFile(_storage(settings, ""), "iso" if fmt == "iso" else "import", path)


def present(client: PveClient, node: str, f: ImageFile) -> dict[str, Any] | None:
    """The storage content entry of an image file, or None."""
    entries: list[dict[str, Any]] = client.get(f"nodes/{node}/storage/{f.storage}/content", content=f.content) or []
    for e in entries:
        if e.get("volid") == f.volid:
            return e
    return None


def download(client: PveClient, node: str, f: ImageFile, image: VMImage) -> str:
    """Start the download task; return its UPID."""
    params: dict[str, Any] = {"content": f.content, "filename": f.filename, "url": image.url}
    if image.checksum:
        params["checksum"] = image.checksum
        params["checksum-algorithm"] = image.checksum_type.value
    upid: str = client.post(f"nodes/{node}/storage/{f.storage}/download-url", **params)
    return upid


def image_prepare(cluster: Cluster, spec: ImagePrepareSpec) -> Outcome[None]:
    """ImagePrepare: a URL is downloaded as one Proxmox task (native); an
    image already there (same file name) is not fetched again; a Path or
    TemplateName is checked to exist."""
    client, settings = cluster.client, cluster.settings
    image = spec.image
    listing = cluster.listing()
    if image.template_name:
        if not any(r.template and image.template_name in (r.name, r.id) for r in listing.vms):
            raise NotFound(f"template {image.template_name!r} does not exist")
        return Outcome.done(None)
    if image.path:
        f = path_volume(image, settings)
        node = placement.download_node(cluster, listing, f.storage, "image_json.Path", None)
        if present(client, node, f) is None:
            raise NotFound(f"image {f.volid} does not exist on node {node}")
        return Outcome.done(None)
    f = url_target(image, settings, hint=spec.storage_hint, filename=spec.target_name)
    origin = "storage_hint" if spec.storage_hint else "settings.import_storage"
    node = placement.download_node(cluster, listing, f.storage, origin, None if f.is_iso else IMPORT_IMAGES)
    if present(client, node, f) is not None:
        return Outcome.done(None)
    return Outcome.native(None, download(client, node, f, image))
