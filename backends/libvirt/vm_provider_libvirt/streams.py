"""Volume bytes through libvirt streams (``vol.upload`` / ``vol.download``).

Streams carry a volume's bytes over the libvirt connection itself, so they
work the same for a local and a remote daemon. File transfers are sparse
(``VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM`` and its download twin): holes
travel as lengths, not zeros, and stay holes on the other side. A stream
that fails is aborted, so the daemon does not wait for the rest.
:func:`copy_chain` brings a remote disk here with its whole backing chain,
for ``qemu-img`` to read.

libvirt's test driver keeps no volume bytes and has no streams. Every
function raises ``libvirt.libvirtError`` for the caller to translate,
except where noted.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import libvirt

from . import errors, images

log = logging.getLogger(__name__)

#: Bytes per ``stream.send`` of an in-memory upload.
UPLOAD_CHUNK = 4 * 2**20


def upload_bytes(conn: libvirt.virConnect, vol: libvirt.virStorageVol, data: bytes) -> None:
    """Write ``data`` into the volume."""
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, len(data), 0)
        view = memoryview(data)
        for offset in range(0, len(data), UPLOAD_CHUNK):
            chunk = view[offset : offset + UPLOAD_CHUNK]
            sent = 0
            while sent < len(chunk):
                sent += stream.send(bytes(chunk[sent:]))
        stream.finish()
    except BaseException:
        _abort(stream)
        raise


def upload_file(conn: libvirt.virConnect, vol: libvirt.virStorageVol, file: Path) -> None:
    """Write a local file into the volume, preserving its holes."""
    size = file.stat().st_size
    stream = conn.newStream(0)
    fd = os.open(file, os.O_RDONLY)
    try:
        vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        stream.sparseSendAll(_read, _section, _skip, fd)
        stream.finish()
    except BaseException:
        _abort(stream)
        raise
    finally:
        os.close(fd)


def download_file(conn: libvirt.virConnect, vol: libvirt.virStorageVol, f: BinaryIO) -> None:
    """Copy the volume's bytes into an open file, holes as holes."""
    stream = conn.newStream(0)
    try:
        vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        stream.sparseRecvAll(_write, _hole, f)
        stream.finish()
    except BaseException:
        _abort(stream)
        raise


def copy_chain(conn: libvirt.virConnect, path: str, new_file: Callable[[], Path]) -> Path:
    """Copy the volume at ``path`` and its backing chain into local files
    (``new_file`` makes each), each copy pointing at the next; return the
    copy of the top image. qemu-img failures raise the core's errors."""
    vol = conn.storageVolLookupByPath(path)
    copy = new_file()
    log.info("copying %s from libvirtd through a stream", path)
    with copy.open("wb") as f:
        download_file(conn, vol, f)
    meta = images.info(copy, force_share=False)
    backing = meta.get("full-backing-filename") or meta.get("backing-filename")
    if backing:
        base = copy_chain(conn, str(backing), new_file)
        images.rebase_unsafe(copy, base, str(meta.get("backing-filename-format", "")))
    return copy


def read_all(conn: libvirt.virConnect, vol: libvirt.virStorageVol, sink: Callable[[bytes], object]) -> None:
    """Feed every byte of the volume, holes as zeros, to ``sink`` (a
    digest's ``update``)."""
    stream = conn.newStream(0)
    try:
        vol.download(stream, 0, 0, 0)
        stream.recvAll(lambda _s, data, _o: sink(data), None)
        stream.finish()
    except BaseException:
        _abort(stream)
        raise


def _abort(stream: libvirt.virStream) -> None:
    with errors.ignoring(errors.any_error):  # the stream failed already
        stream.abort()


# -- sparse stream callbacks (the opaque value is a file descriptor or object) -------------


def _read(_stream: Any, nbytes: int, fd: int) -> bytes:
    return os.read(fd, nbytes)


def _section(_stream: Any, fd: int) -> tuple[bool, int]:
    """(in data?, bytes to the end of this data or hole section)."""
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        data = os.lseek(fd, here, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        data = -1  # only a hole up to the end
    try:
        if data < 0:
            return False, os.fstat(fd).st_size - here
        if data > here:
            return False, data - here
        return True, os.lseek(fd, here, os.SEEK_HOLE) - here
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def _skip(_stream: Any, length: int, fd: int) -> int:
    return os.lseek(fd, length, os.SEEK_CUR)


def _write(_stream: Any, data: bytes, f: BinaryIO) -> int:
    return f.write(data)


def _hole(_stream: Any, length: int, f: BinaryIO) -> int:
    f.seek(length, os.SEEK_CUR)
    f.truncate()
    return 0


__all__ = ["UPLOAD_CHUNK", "copy_chain", "download_file", "read_all", "upload_bytes", "upload_file"]
