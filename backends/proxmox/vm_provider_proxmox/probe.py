"""What an image URL holds, read from its first bytes as qemu-img probes a
file, and the validators its server gives (ETag, Last-Modified, size).

Proxmox takes an imported image's format from its file name (pve-storage
src/PVE/Storage/Plugin.pm:831-833) and checks a download against that
format only as far as qemu-img can tell (a qcow2 file read as raw is a valid
raw file), so the provider looks at the image itself before it names the
file: Ubuntu's ``.img`` cloud images are qcow2. One ranged GET of
:data:`PROBE_BYTES` bytes, from the provider's host.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

#: Bytes read: enough for an ISO 9660 volume descriptor (at 0x8001).
PROBE_BYTES = 65536
#: Formats Proxmox imports (a disk) or attaches (an ISO).
SUPPORTED = frozenset({"qcow2", "raw", "vmdk", "iso"})


class ProbeFailed(Exception):
    """The URL could not be read."""


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


def probe(url: str, timeout: float) -> Probe:
    """Read the start of the image at ``url``; ProbeFailed when it cannot."""
    try:
        with requests.get(url, headers={"Range": f"bytes=0-{PROBE_BYTES - 1}"}, stream=True, timeout=timeout) as resp:
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
    except requests.RequestException as exc:
        raise ProbeFailed(type(exc).__name__) from None
    return Probe(sniff(head[:PROBE_BYTES]), validators)
