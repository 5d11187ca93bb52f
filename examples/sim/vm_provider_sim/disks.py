"""ExportDisk and ImportDisk: the simulated disks' bytes.

A simulated disk has no data, so an export writes a small stand-in: a JSON
document that names the disk and its size (:func:`image_bytes`). An import
reads any file, and registers an image of the size its bytes say (a sim
export's recorded size, else the file's size), usable by Create as
``TemplateName`` or ``Path``. Both go through the core's transfer code with
the request itself, so every destination the core serves works here: http,
https, s3 (with VirtRigaud's storage options) and the staging directories
pvc and nfs.
"""

from __future__ import annotations

import json
import math

HEAD = 64 * 1024
"""What an import keeps of a file to read a sim export's header."""


def image_bytes(vm: str, disk: str, size_gib: int, fmt: str, snapshot: str = "") -> bytes:
    """The stand-in of a disk's image."""
    record = {"sim-disk": 1, "vm": vm, "disk": disk, "size_gib": size_gib, "format": fmt, "snapshot": snapshot}
    return json.dumps(record, sort_keys=True).encode() + b"\n"


class HeadSink:
    """A write-only file that counts everything and keeps the first bytes."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.size = 0

    def write(self, data: bytes) -> int:
        if len(self.head) < HEAD:
            self.head += data[: HEAD - len(self.head)]
        self.size += len(data)
        return len(data)


def size_of(head: bytes, size: int) -> int:
    """GiB of an imported image: what a sim export records, else its size."""
    try:
        record = json.loads(head)
    except ValueError:
        record = None
    recorded = record.get("size_gib") if isinstance(record, dict) and record.get("sim-disk") == 1 else None
    if isinstance(recorded, int):
        return max(1, recorded)
    return max(1, math.ceil(size / 2**30))


__all__ = ["HEAD", "HeadSink", "image_bytes", "size_of"]
