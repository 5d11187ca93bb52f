"""``download-url`` as pve-storage runs it.

pve-storage src/PVE/API2/Storage/Status.pm (``download_url``):

- ``content`` takes ``import`` from libpve-storage-perl 8.2.8 (OVA files
  only); qcow2, raw and vmdk files from 8.3.6 (``UPLOAD_IMPORT_EXT_RE_1``;
  debian/changelog). Older versions answer HTTP 400 naming the parameter.
- The file's format is its extension: an import volume's format is parsed
  from its name (src/PVE/Storage/Plugin.pm:831-833); the downloaded file is
  checked as that format (Status.pm ``assert_file_validity`` and
  Plugin.pm ``file_size_info`` with ``untrusted``), which a qcow2 file
  named ``.raw`` passes (read as raw, any file is valid).
- The task (pve-common src/PVE/Tools.pm:1486-1590,
  ``download_file_from_url``): when the file is already there, with a
  checksum it hashes that file: "OK, got correct file already, no need to
  download", else "checksum mismatch ... aborting"; without one it refuses
  ("refusing to override existing file"). A download whose checksum does
  not match fails and leaves nothing.

fakepve never verifies checksums and overwrites existing files. Here URLs on
127.0.0.1 are really fetched (the tests serve their images there) and
checked; other URLs are left to fakepve's pretence, taking the checksum
given as the file's.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse

from aiohttp import web

from .packages import Packages
from .placement import Placement
from .proxy import Call, Layer

IMPORT_SINCE = (8, 2, 8)
IMPORT_IMAGES_SINCE = (8, 3, 6)
FILE_STORAGES = ("dir", "nfs", "cifs", "cephfs", "btrfs")
SUBDIR = {"import": "import", "iso": "template/iso", "vztmpl": "template/cache"}


def magic(data: bytes) -> str:
    """What a file is, by its first bytes (as qemu-img probes it)."""
    if data[:4] == b"QFI\xfb":
        return "qcow2"
    if data[:4] == b"KDMV":
        return "vmdk"
    if data[0x8001:0x8006] == b"CD001":
        return "iso"
    return "raw"


class Downloads:
    def __init__(self, layer: Layer, packages: Packages, placement: Placement) -> None:
        self.layer = layer
        self.packages = packages
        self.placement = placement
        #: What each volume downloaded here holds (volid -> bytes).
        self.stored: dict[str, bytes] = {}
        #: Checksums taken on trust for volumes fakepve pretended to download.
        self.claimed: dict[str, tuple[str, str]] = {}
        layer.route("POST", r"/nodes/(?P<node>[^/]+)/storage/(?P<storage>[^/]+)/download-url", self.download)

    def put(self, storage: str, content: str, filename: str, data: bytes) -> str:
        """A file already on storage (as if downloaded before); its volid."""
        self.layer.pve.store_file(storage, filename, len(data), content=content)
        volid = f"{storage}:{content}/{filename}"
        self.stored[volid] = data
        return volid

    def format_of(self, volid: str) -> str:
        """What the volume really holds (not what its name says)."""
        return magic(self.stored[volid])

    def _digest(self, volid: str, algorithm: str) -> str:
        if volid in self.stored:
            return hashlib.new(algorithm, self.stored[volid]).hexdigest()
        taken = self.claimed.get(volid)
        if taken and taken[0] == algorithm:
            return taken[1]
        return hashlib.new(algorithm, b"").hexdigest()

    def _param_error(self, node: str, content: str, filename: str) -> web.Response | None:
        if content == "import" and not self.packages.has(node, "libpve-storage-perl", IMPORT_SINCE):
            return self.layer.error(
                400,
                "Parameter verification failed.",
                {"content": "value 'import' does not have a value in the enumeration 'iso, vztmpl'"},
            )
        if content == "import":
            images = self.packages.has(node, "libpve-storage-perl", IMPORT_IMAGES_SINCE)
            if not re.search(r"\.(ova|qcow2|raw|vmdk)$" if images else r"\.ova$", filename):
                return self.layer.error(
                    400, "Parameter verification failed.", {"filename": "invalid filename or wrong extension"}
                )
        if content == "iso" and not re.search(r"\.(iso|img)$", filename, re.IGNORECASE):
            return self.layer.error(400, "Parameter verification failed.", {"filename": "wrong file extension"})
        return None

    def _exists(self, storage: str, content: str, filename: str) -> bool:
        store = self.layer.pve.storages[storage]
        return f"{content}/{filename}" in store.get("volumes", {}) or (content == "iso" and filename in store["files"])

    async def download(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        node, storage = m["node"], m["storage"]
        content, filename, url = call.params.get("content", ""), call.params.get("filename", ""), call.params.get("url", "")
        store = self.layer.pve.storages.get(storage)
        if store is None or self.placement.unavailable(storage, node) or store.get("type") not in FILE_STORAGES:
            return None  # fakepve's own 500s
        if content not in _split(store.get("content")):
            return None
        refused = self._param_error(node, content, filename)
        if refused is not None:
            return refused
        algorithm, checksum = call.params.get("checksum-algorithm", ""), call.params.get("checksum", "").lower()
        volid = f"{storage}:{content}/{filename}"
        dest = f"{store.get('path') or '/mnt/pve/' + storage}/{SUBDIR.get(content, content)}/{filename}"
        if self._exists(storage, content, filename):
            if not checksum:
                return await self._task(call, node, storage, f"refusing to override existing file '{dest}'")
            got = self._digest(volid, algorithm)
            if got != checksum:
                return await self._task(call, node, storage, f"checksum mismatch: got '{got}' != expect '{checksum}', aborting")
            return await self._task(call, node, storage, "OK", "OK, got correct file already, no need to download")
        if urllib.parse.urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
            up = await self.layer.forward(call)
            if up.status == 200 and checksum:
                self.claimed[volid] = (algorithm, checksum)
            return self.layer.relay(up)
        data = await self.layer.fetch(url)
        if data is None:
            return await self._task(call, node, storage, "download failed: wget: server returned error")
        if checksum and hashlib.new(algorithm, data).hexdigest() != checksum:
            got = hashlib.new(algorithm, data).hexdigest()
            return await self._task(call, node, storage, f"checksum mismatch: got '{got}' != expect '{checksum}'")
        claimed = filename.rsplit(".", 1)[-1].lower()
        if content == "import" and claimed in ("qcow2", "vmdk") and magic(data) != claimed:
            return await self._task(call, node, storage, "failed to verify file: failed to query file information with qemu-img")
        up = await self.layer.forward(call, {**call.params, "size": str(len(data))})
        if up.status == 200:
            self.stored[volid] = data
        return self.layer.relay(up)

    async def _task(self, call: Call, node: str, storage: str, outcome: str, note: str = "") -> web.Response:
        log = (f"downloading {call.params.get('url')} to {call.params.get('filename')}",) + ((note,) if note else ())
        return self.layer.answer(await self.layer.task(node, "download", storage, call.user, outcome, log))


def _split(text: object) -> list[str]:
    return [item for item in re.split(r"[\s,;]+", str(text or "")) if item]
