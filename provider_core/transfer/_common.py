"""What every protocol of the transfer package shares: settings, results,
the hashing reader, local I/O failures and the HTTP status table."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

CHUNK = 1 << 20
"""Bytes read, hashed and sent at a time."""

SCHEMES = ("http", "https", "s3")
DIGESTS = ("sha256", "sha512", "md5")


@dataclass(frozen=True)
class TransferSettings:
    """Defaults a backend passes from its own settings."""

    ca_file: Path | None = None
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = field(default="", repr=False)
    connect_timeout: float = 15.0
    read_timeout: float = 300.0
    s3_part_size: int = 8 << 20
    """Smallest multipart part (S3's minimum is 5 MiB); larger when the size
    would need more than 9,000 parts."""
    s3_concurrency: int = 4
    """Parts uploaded at once. An upload holds about concurrency + 1 parts
    in memory, whatever the object's size."""


@dataclass(frozen=True)
class UploadResult:
    size: int
    sha256: str


@dataclass(frozen=True)
class DownloadResult:
    size: int
    sha256: str
    digest: str
    """Hex digest in the algorithm asked for (equal to sha256 for sha256)."""


class LocalIOError(Exception):
    """A local read or write failed (not the network): carries the OSError
    through the HTTP and AWS libraries, which take any OSError for their own."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error

    def resolve(self, what: str) -> BaseException:
        """ResourceExhausted for a full disk, else the OSError itself."""
        if self.error.errno in (errno.ENOSPC, errno.EDQUOT):
            return ResourceExhausted(f"{what}: no space left on local storage")
        return self.error


class Hasher:
    """Reads a source in chunks, hashing and counting what passes."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int) -> bytes:
        try:
            data = self.source.read(n)
        except OSError as exc:
            raise LocalIOError(exc) from exc
        self.sha.update(data)
        self.size += len(data)
        return data

    def read_full(self, n: int) -> bytearray:
        """Up to ``n`` bytes, fewer only at the end (pipes give short reads),
        read into one buffer of that size: no growing copies on the way, and
        none at the end, so a part in memory is just its bytes."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        with view:
            while got < n:
                k = self._read_into(view[got:])
                if not k:
                    break
                self.sha.update(view[got : got + k])
                got += k
        self.size += got
        if got < n:
            del buf[got:]
        return buf

    def _read_into(self, view: memoryview) -> int:
        try:
            readinto = getattr(self.source, "readinto", None)
            if readinto is not None:
                return int(readinto(view) or 0)
            data = self.source.read(len(view))
        except OSError as exc:
            raise LocalIOError(exc) from exc
        view[: len(data)] = data
        return len(data)

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            yield data

    def result(self) -> UploadResult:
        return UploadResult(self.size, self.sha.hexdigest())


def source_size(source: BinaryIO) -> int | None:
    """Bytes left in a seekable source (a file, BytesIO), else None."""
    try:
        if not source.seekable():
            return None
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
    except (OSError, ValueError, AttributeError):
        return None
    return end - here


#: HTTP statuses -> core errors; other 5xx are Unavailable, other 4xx
#: InvalidArgument. S3 errors without a code of their own fall back to it.
HTTP_STATUS: dict[int, type[ProviderError]] = {
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    407: Unauthenticated,
    408: Unavailable,
    409: Aborted,
    410: NotFound,
    412: FailedPrecondition,
    413: ResourceExhausted,
    429: Unavailable,
    507: ResourceExhausted,
}


def http_error(status: int, what: str) -> ProviderError:
    cls = HTTP_STATUS.get(status) or (Unavailable if status >= 500 else InvalidArgument)
    return cls(f"{what}: HTTP {status}")


def reason(exc: BaseException) -> str:
    """The OS-level reason in an exception chain (``Connection refused``);
    native exception texts are never used, as they embed the whole URL."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        todo += [e.__cause__, e.__context__, *(a for a in e.args if isinstance(a, BaseException))]
        cause = getattr(e, "reason", None)
        if isinstance(cause, BaseException):
            todo.append(cause)
    return type(exc).__name__
