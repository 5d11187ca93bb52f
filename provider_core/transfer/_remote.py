"""Transfers another host makes: presigned S3 requests and pinned URLs.

A backend whose hypervisor host moves the bytes itself (``direct``) keeps
the client's credentials in the provider: the provider opens the multipart
upload, signs a short-lived URL for each request the host makes, and
completes the upload, or aborts it on any failure. The host only ever holds
URLs signed for one object. Each URL comes :class:`Pinned` to the address
the URL policy allowed, which the host must connect to (and follow no
redirect), so that it reaches nothing the provider itself would not.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult, urlsplit

from requests.utils import requote_uri

from ..errors import InvalidArgument, Unavailable
from ..urls import redact
from . import _s3
from ._common import TransferSettings
from ._urls import parse, reach, scrubber, secrets
from ._where import Target, Where, where

log = logging.getLogger("provider_core.transfer")

PRESIGN_SECONDS = 900
"""How long a presigned URL stays valid. Each part's URL is signed just
before it is handed out, so a long upload never runs past it."""


class _Quiet(logging.Filter):
    """Drops what botocore's signer logs while this thread presigns: its
    DEBUG records carry the signature, which with the rest of the URL is the
    whole permission."""

    def __init__(self) -> None:
        super().__init__()
        self.here = threading.local()

    @contextmanager
    def signing(self) -> Iterator[None]:
        logger = logging.getLogger("botocore.auth")
        if self not in logger.filters:
            logger.addFilter(self)
        self.here.on = True
        try:
            yield
        finally:
            self.here.on = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.here, "on", False)


_quiet = _Quiet()


def _presign(s3: Any, method: str, params: dict[str, Any], expires: int) -> str:
    with _quiet.signing():
        return str(s3.generate_presigned_url(method, Params=params, ExpiresIn=expires))


@dataclass(frozen=True)
class Pinned:
    """An http(s) URL and the address its host must be reached at."""

    url: str = field(repr=False)
    """The URL itself: may carry a signature; never log it (:attr:`shown`)."""
    host: str
    port: int
    address: str
    """Checked against the URL policy: connect here, not where a new lookup
    of ``host`` leads."""

    @property
    def shown(self) -> str:
        return redact(self.url)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme


def pin(url: str, *, url_field: str = "destination_url") -> Pinned:
    """``url`` (http or https) with the address its host resolves to, every
    address checked against the URL policy: InvalidArgument naming
    ``url_field`` for another scheme or a refused address, Unavailable when
    it does not resolve. The URL is quoted as the provider's own transfers
    send it (requests' ``requote_uri``: a space becomes ``%20``), so that
    another host's client (curl refuses a space) requests the same."""
    parts = parse(url, url_field)
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument.field(url_field, "must be an http or https URL here")
    sent = requote_uri(url)
    return _pinned(sent, urlsplit(sent))


def _pinned(url: str, parts: SplitResult) -> Pinned:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return Pinned(url, host, port, reach(host, port, redact(url)))


@dataclass(frozen=True)
class Part:
    """Bytes ``offset`` to ``offset + length`` of the object, sent as part ``number``."""

    number: int
    offset: int
    length: int


class PresignedUpload:
    """An upload of ``size`` bytes to an S3 object that another host sends in
    :attr:`parts`, each to the URL :meth:`url` signs for it. An object that
    fits one part is a single presigned PutObject; larger ones a multipart
    upload the provider created. Use it as a context manager: leaving the
    block by an exception, or without :meth:`complete`, aborts it."""

    def __init__(self, place: Where, size: int, settings: TransferSettings, expires: int, url_field: str) -> None:
        self._parts = parse(place.url, url_field)
        if self._parts.scheme != "s3":
            raise InvalidArgument.field(url_field, "a presigned upload goes to an s3 URL")
        self.bucket, self.key = self._parts.hostname or "", self._parts.path.lstrip("/")
        self.size = size
        self.expires = expires
        self.what = f"upload to {redact(place.url)}"
        self._secrets = secrets(self._parts, place.credentials)
        self.upload_id = ""
        self.done = False
        chunk = _s3.part_size(size, settings)
        count = max(1, math.ceil(size / chunk))
        self.parts = tuple(Part(n + 1, n * chunk, min(chunk, size - n * chunk)) for n in range(count))
        with self._calls():
            self._s3 = _s3.client(place.s3_credentials(), settings, path_style=place.options.use_path_style)
            if count > 1:
                self.upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]

    @contextmanager
    def _calls(self) -> Iterator[None]:
        with scrubber.hiding(self._secrets):
            try:
                yield
            except _s3.NATIVE_ERRORS as exc:
                raise _s3.error(exc, self.what) from None  # botocore's text may carry the URL

    def url(self, part: Part) -> Pinned:
        """A URL to PUT ``part``'s bytes to (with Content-Length), signed now."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.upload_id:
            method = "upload_part"
            params.update(UploadId=self.upload_id, PartNumber=part.number)
        else:
            method = "put_object"
        with self._calls():
            signed = _presign(self._s3, method, params, self.expires)
            return _pinned(signed, urlsplit(signed))

    def complete(self, etags: Mapping[int, str]) -> None:
        """Join the parts (their ETags by part number, as each PUT answered)
        and check the object holds ``size`` bytes (else it is removed)."""
        missing = [p.number for p in self.parts if not etags.get(p.number)]
        if self.upload_id and missing:
            raise Unavailable(f"{self.what}: no ETag for part(s) {', '.join(map(str, missing[:5]))}")
        with self._calls():
            if self.upload_id:
                done = [{"PartNumber": p.number, "ETag": etags[p.number]} for p in self.parts]
                self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": done}
                )
            stored = int(self._s3.head_object(Bucket=self.bucket, Key=self.key)["ContentLength"])
            self.done = True
            if stored != self.size:  # no partial object stays
                self._s3.delete_object(Bucket=self.bucket, Key=self.key)
                raise Unavailable(f"{self.what}: the object held {stored} bytes, not the {self.size} sent; removed")

    def abort(self) -> None:
        """Drop the parts sent so far (a multipart upload); never raises."""
        if not self.upload_id or self.done:
            return
        try:
            with self._calls():
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # noqa: BLE001 - the failure that led here matters more
            log.warning("could not abort the multipart upload to s3://%s/%s: %s", self.bucket, self.key, exc)
        self.done = True

    def __enter__(self) -> PresignedUpload:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.abort()


def presigned_upload(
    target: Target,
    size: int,
    credentials: Mapping[str, str] | None = None,
    *,
    settings: TransferSettings | None = None,
    expires: int = PRESIGN_SECONDS,
    url_field: str = "destination_url",
) -> PresignedUpload:
    """Open an upload of ``size`` bytes to ``target`` (an s3 URL or an
    ExportSpec naming one) for another host to send through presigned URLs,
    with the provider's S3 client (credentials, endpoint and its URL policy
    as :func:`provider_core.transfer.upload`). Errors as there."""
    return PresignedUpload(where(target, credentials), size, settings or TransferSettings(), expires, url_field)


def presigned_download(
    target: Target,
    credentials: Mapping[str, str] | None = None,
    *,
    settings: TransferSettings | None = None,
    expires: int = PRESIGN_SECONDS,
    url_field: str = "source_url",
) -> Pinned:
    """A URL another host GETs ``target`` (an s3 URL or an ImportSpec naming
    one) from, signed now; the object must exist (NotFound otherwise)."""
    place = where(target, credentials)
    parts = parse(place.url, url_field)
    if parts.scheme != "s3":
        raise InvalidArgument.field(url_field, "a presigned download comes from an s3 URL")
    bucket, key = parts.hostname or "", parts.path.lstrip("/")
    what = f"download from {redact(place.url)}"
    with scrubber.hiding(secrets(parts, place.credentials)):
        try:
            s3 = _s3.client(place.s3_credentials(), settings or TransferSettings(), path_style=place.options.use_path_style)
            s3.head_object(Bucket=bucket, Key=key)
            signed = _presign(s3, "get_object", {"Bucket": bucket, "Key": key}, expires)
        except _s3.NATIVE_ERRORS as exc:
            raise _s3.error(exc, what) from None
    return _pinned(signed, urlsplit(signed))
