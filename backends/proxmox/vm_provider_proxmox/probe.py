"""What an image URL holds, read from its first bytes as qemu-img probes a
file, and the validators its server gives (ETag, Last-Modified, size).

Proxmox takes an imported image's format from its file name (pve-storage
src/PVE/Storage/Plugin.pm:831-833) and checks a download against that
format only as far as qemu-img can tell (a qcow2 file read as raw is a valid
raw file), so the provider looks at the image itself before it names the
file: Ubuntu's ``.img`` cloud images are qcow2. One ranged GET of
:data:`PROBE_BYTES` bytes, from the provider's host, under the core's URL
policy (:mod:`provider_core.urls`): each address a name resolves to, and
each redirect, is checked before connecting.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from provider_core import urls

#: Bytes read: enough for an ISO 9660 volume descriptor (at 0x8001).
PROBE_BYTES = 65536
#: Redirects followed (each one checked against the URL policy).
MAX_REDIRECTS = 5
#: Formats Proxmox imports (a disk) or attaches (an ISO).
SUPPORTED = frozenset({"qcow2", "raw", "vmdk", "iso"})


class ProbeFailed(Exception):
    """The URL could not be read."""


class ProbeRefused(ValueError):
    """The URL (or a redirect) points where the URL policy does not reach."""


@dataclass(frozen=True)
class Probe:
    format: str
    validators: str
    """The server's ETag, Last-Modified and size ("" when it gives none):
    they change when the image at the URL does."""


#: (first bytes, format), as qemu-img's probes and the compressors' magic numbers.
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"conectix", "vhd"),
    (b"vhdxfile", "vhdx"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"BZh", "bzip2-compressed"),
)


def sniff(head: bytes) -> str:
    """The format of a file from its first bytes."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return "iso" if head[0x8001:0x8006] == b"CD001" else "raw"


def _checked(url: str) -> None:
    parts = urlsplit(url)
    try:
        urls.check_url(url, ("http", "https"))
        urls.check_host(parts.hostname or "", parts.port)
    except ValueError as exc:
        raise ProbeRefused(str(exc)) from None
    except OSError as exc:  # the name does not resolve
        raise ProbeFailed(type(exc).__name__) from None


def probe(url: str, timeout: float) -> Probe:
    """Read the start of the image at ``url``; ProbeFailed when it cannot,
    ProbeRefused when the URL policy forbids where it points."""
    try:
        for _ in range(MAX_REDIRECTS + 1):
            _checked(url)
            headers = {"Range": f"bytes=0-{PROBE_BYTES - 1}"}
            with requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=False) as resp:
                if resp.is_redirect and resp.headers.get("Location"):
                    url = urljoin(url, resp.headers["Location"])
                    continue
                if resp.status_code not in (200, 206):
                    raise ProbeFailed(f"HTTP {resp.status_code}")
                head = b""
                for chunk in resp.iter_content(chunk_size=16384):
                    head += chunk
                    if len(head) >= PROBE_BYTES:
                        break
                total = resp.headers.get("Content-Range", "").rpartition("/")[2] or resp.headers.get("Content-Length", "")
                tags = [resp.headers.get("ETag", ""), resp.headers.get("Last-Modified", "")]
                validators = "|".join([*tags, total]) if any(tags) else ""
                return Probe(sniff(head[:PROBE_BYTES]), validators)
    except requests.RequestException as exc:
        raise ProbeFailed(type(exc).__name__) from None
    raise ProbeFailed(f"more than {MAX_REDIRECTS} redirects")
