"""Streaming transfers of disk-sized files to and from http(s) and s3 URLs and staging directories.

Install the extra ``vm-provider[transfer]`` (requests, boto3) to use it;
without it, importing this package raises ImportError naming the extra.

Any backend can use these to export or import disks: bytes flow in chunks of
:data:`CHUNK` between a file object and the network, the SHA256 is computed
on the way, and memory stays flat whatever the size.

- ``http``/``https``: PUT to upload, GET to download (``requests``, TLS
  verified, optionally against ``TransferSettings.ca_file``). Credentials:
  ``token`` (or ``bearer_token``) for ``Authorization: Bearer``, or
  ``username``/``password`` (or the URL's userinfo) for basic auth.
- ``s3://bucket/key`` (boto3): multipart upload in parts of at least
  ``s3_part_size`` (fewer than 10,000 parts), a few in flight at a time;
  streamed GetObject to download. Endpoint, region and keys come from
  :class:`TransferSettings`, overridden by the request's credentials
  (``access_key_id``, ``secret_access_key``, ``session_token``,
  ``endpoint_url``, ``region``; the ``aws_`` prefixed spellings too); with no
  keys at all boto3's usual chain (environment, instance profile) applies.

- ``pvc://<claim>/<path>`` and ``nfs://<server><export>/<path>``: files in
  staging directories mounted into the provider (``[server] pvc_root`` and
  ``nfs_root``), written atomically, never outside their root (see
  :mod:`._staging`).

Pass the request's :class:`~provider_core.ExportSpec` or
:class:`~provider_core.ImportSpec` instead of a URL and its staging backend
and ``storage_options_json`` apply too: for s3, the options' ``endpoint``
(held to the URL policy like every URL), ``region`` and ``usePathStyle``;
for nfs, its ``export``. Credentials also take VirtRigaud's spellings
``accessKeyID``, ``secretAccessKey``, ``sessionToken``.

For a transfer another host makes (a backend's ``direct`` mode), the
provider keeps the credentials: :func:`presigned_upload` opens an S3 upload
whose parts that host PUTs to URLs signed one at a time, completed or
aborted by the provider; :func:`presigned_download` signs a GetObject URL;
:func:`pin` checks a client's own http(s) URL. Every such URL comes with the
address the URL policy allowed (:class:`Pinned`): the host connects there
and follows no redirect.

Other schemes and unknown credential keys raise InvalidArgument. Failures
map to the core's errors through one table per library (``HTTP_STATUS``,
``REQUESTS_ERRORS``, ``S3_CODES``, ``BOTO_ERRORS``): unreachable or 5xx is
Unavailable, 401 Unauthenticated, 403 PermissionDenied, 404 NotFound, a full
local disk ResourceExhausted, a TLS verification failure FailedPrecondition.

A download whose digest differs from the expected one raises InvalidArgument
naming the checksum field: the data is not what the client said it is, and
repeating the same request cannot fix that (the client must correct the URL
or the checksum; FAILED_PRECONDITION would wrongly suggest that some state
could change). :func:`download_to` then removes the partial file; a failed
multipart upload is aborted, so no partial object remains.

Secrets never reach messages or logs: errors name the URL through
:func:`redact` and never quote the native exception (whose text holds the
whole URL); during a transfer the credential values and the URL's password
and query string are scrubbed from every record the HTTP and AWS libraries
log.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from .. import urls
from ..errors import InvalidArgument
from ..urls import redact
from . import _extra, _http, _s3, _staging  # _extra first: without the extra it says what to install
from ._common import (
    CHUNK,
    DIGESTS,
    HTTP_STATUS,
    SCHEMES,
    DownloadResult,
    Hasher,
    LocalIOError,
    TransferSettings,
    UploadResult,
    http_error,
    source_size,
)
from ._remote import PRESIGN_SECONDS, Part, Pinned, PresignedUpload, pin, presigned_download, presigned_upload
from ._urls import check_keys, parse, scrubber, secrets
from ._where import Target
from ._where import where as _where

log = logging.getLogger(__name__)

EXTRA = _extra.EXTRA
"""The extra that installs this package's dependencies (requests, boto3)."""


def validate(url: str, credentials: Mapping[str, str] | None = None, *, url_field: str = "destination_url") -> None:
    """Check a URL's scheme and shape and the credential keys, without any
    I/O: call it before accepting a transfer that runs in the background."""
    if urlsplit(url).scheme in urls.STAGING_SCHEMES:
        try:
            urls.check_staging_url(url)
        except ValueError as exc:
            raise InvalidArgument.field(url_field, str(exc)) from None
        check_keys(credentials or {}, urlsplit(url).scheme)
        return
    check_keys(credentials or {}, parse(url, url_field).scheme)


def upload(
    source: BinaryIO,
    target: Target,
    credentials: Mapping[str, str] | None = None,
    *,
    settings: TransferSettings | None = None,
    size: int | None = None,
    url_field: str = "destination_url",
) -> UploadResult:
    """Stream ``source`` to ``target`` (a URL or an ExportSpec: PUT, an S3
    object, a staging file), hashing on the way.

    ``size`` (default: what is left of a seekable source) lets HTTP send a
    Content-Length (else chunked) and S3 choose its part size. Returns the
    byte count and SHA256 of what was sent. Repeating an upload replaces the
    object. Raises the core errors of the module doc; ``url_field`` names the
    request field in InvalidArgument. ``credentials`` replace the spec's.
    """
    settings = settings or TransferSettings()
    where = _where(target, credentials)
    url, credentials = where.url, where.credentials
    size = source_size(source) if size is None else size
    hasher = Hasher(source)
    what = f"upload to {redact(url)}"
    start = time.monotonic()
    if where.scheme in urls.STAGING_SCHEMES:
        check_keys(credentials, where.scheme)
        with _staging.resolve(url, where.options.export, create=True, url_field=url_field) as place:
            log.info("%s started (%s bytes)", what, "?" if size is None else size)
            try:
                result = _staging.write(hasher, place, what)
            except LocalIOError as exc:
                raise exc.resolve(what) from None
        _log_done(what, result.size, start)
        return result
    parts = parse(url, url_field)
    log.info("%s started (%s bytes)", what, "?" if size is None else size)
    with scrubber.hiding(secrets(parts, credentials)):
        try:
            if parts.scheme == "s3":
                s3 = _s3.client(where.s3_credentials(), settings, path_style=where.options.use_path_style)
                try:
                    _s3.upload(hasher, s3, parts, settings, size)
                except _s3.NATIVE_ERRORS as exc:
                    raise _s3.error(exc, what) from None  # botocore's text may carry the URL
            else:
                _http.upload(hasher, parts, what, credentials, settings=settings, size=size)
        except LocalIOError as exc:
            raise exc.resolve(what) from None
    result = hasher.result()
    _log_done(what, result.size, start)
    return result


def download(
    target: Target,
    dest: BinaryIO,
    credentials: Mapping[str, str] | None = None,
    *,
    settings: TransferSettings | None = None,
    expected: str = "",
    algorithm: str = "sha256",
    url_field: str = "source_url",
    checksum_field: str = "expected_checksum",
) -> DownloadResult:
    """Stream ``target`` (a URL or an ImportSpec) into ``dest``, computing
    SHA256 (and ``algorithm``, one of sha256, sha512, md5) on the way. When
    ``expected`` is given, a different digest raises InvalidArgument on
    ``checksum_field`` after the last byte; the caller owns ``dest``
    (:func:`download_to` removes it). Errors as :func:`upload`."""
    settings = settings or TransferSettings()
    where = _where(target, credentials)
    url, credentials = where.url, where.credentials
    if algorithm not in DIGESTS:
        raise InvalidArgument.field(checksum_field, f"checksum type must be one of {', '.join(DIGESTS)}")
    what = f"download from {redact(url)}"
    staged = where.scheme in urls.STAGING_SCHEMES
    if staged:
        check_keys(credentials, where.scheme)
        with _staging.resolve(url, where.options.export, create=False, url_field=url_field) as place:
            staged_file = _staging.open_file(place, what)
        parts = urlsplit(url)
    else:
        parts = parse(url, url_field)
    sha = hashlib.sha256()
    other = None if algorithm == "sha256" else hashlib.new(algorithm)
    size = 0
    start = time.monotonic()
    log.info("%s started", what)
    with scrubber.hiding(secrets(parts, credentials)):
        try:
            chunks: Iterator[bytes]
            if staged:
                chunks = _staging.read(staged_file, what)
            elif parts.scheme == "s3":
                s3 = _s3.client(where.s3_credentials(), settings, path_style=where.options.use_path_style)
                chunks = _s3.download(parts, s3)
            else:
                chunks = _http.download(parts, what, credentials, settings)
            try:
                for chunk in chunks:
                    sha.update(chunk)
                    if other is not None:
                        other.update(chunk)
                    try:
                        dest.write(chunk)
                    except OSError as exc:
                        raise LocalIOError(exc) from exc
                    size += len(chunk)
            except _s3.NATIVE_ERRORS as exc:
                raise _s3.error(exc, what) from None  # botocore's text may carry the URL
        except LocalIOError as exc:
            raise exc.resolve(what) from None
    digest = sha.hexdigest() if other is None else other.hexdigest()
    _log_done(what, size, start)
    want = expected.strip().lower()
    if want and digest != want:
        raise InvalidArgument.field(
            checksum_field, f"{algorithm} of the {size} bytes from {redact(url)} is {digest}, not the expected {want}"
        )
    return DownloadResult(size, sha.hexdigest(), digest)


def download_to(path: Path, url: Target, credentials: Mapping[str, str] | None = None, **kwargs: Any) -> DownloadResult:
    """:func:`download` into ``path``, which appears only complete and
    verified: the bytes go to a hidden neighbour renamed at the end, and
    removed on any failure."""
    part = path.with_name(f".{path.name}.part")
    try:
        with part.open("wb") as dest:
            result = download(url, dest, credentials, **kwargs)
        part.replace(path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return result


def _log_done(what: str, size: int, start: float) -> None:
    seconds = max(time.monotonic() - start, 1e-6)
    log.info("%s done: %d bytes in %.1fs (%.0f MiB/s)", what, size, seconds, size / seconds / 2**20)


BOTO_ERRORS = _s3.BOTO_ERRORS
REQUESTS_ERRORS = _http.REQUESTS_ERRORS
S3_CODES = _s3.S3_CODES
STAGING_ERRNO = _staging.ERRNO

__all__ = [
    "BOTO_ERRORS",
    "CHUNK",
    "DIGESTS",
    "EXTRA",
    "HTTP_STATUS",
    "PRESIGN_SECONDS",
    "REQUESTS_ERRORS",
    "S3_CODES",
    "SCHEMES",
    "STAGING_ERRNO",
    "DownloadResult",
    "Part",
    "Pinned",
    "PresignedUpload",
    "Target",
    "TransferSettings",
    "UploadResult",
    "download",
    "download_to",
    "http_error",
    "pin",
    "presigned_download",
    "presigned_upload",
    "redact",
    "upload",
    "validate",
]
