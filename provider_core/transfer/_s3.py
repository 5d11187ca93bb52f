"""s3://bucket/key with boto3: multipart upload, streamed GetObject."""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import SplitResult, urlsplit

from botocore import exceptions as bx

from .. import urls
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
from ..urls import S3_KEYS, redact
from ._common import CHUNK, Hasher, TransferSettings, http_error, reason
from ._urls import check_keys, reach, scrubber

log = logging.getLogger("provider_core.transfer")

MAX_PARTS = 9_000
"""S3 allows 10,000 parts; the margin covers a source that grows while read."""

#: S3 error codes -> core errors; other codes go by their HTTP status.
S3_CODES: dict[str, type[ProviderError]] = {
    "NoSuchBucket": NotFound,
    "NoSuchKey": NotFound,
    "NoSuchUpload": Aborted,
    "AccessDenied": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "AccountProblem": PermissionDenied,
    "InvalidAccessKeyId": Unauthenticated,
    "SignatureDoesNotMatch": Unauthenticated,
    "ExpiredToken": Unauthenticated,
    "InvalidToken": Unauthenticated,
    "TokenRefreshRequired": Unauthenticated,
    "EntityTooLarge": ResourceExhausted,
    "QuotaExceeded": ResourceExhausted,
    "SlowDown": Unavailable,
    "ServiceUnavailable": Unavailable,
    "InternalError": Unavailable,
    "RequestTimeout": Unavailable,
    "InvalidBucketName": InvalidArgument,
    "KeyTooLongError": InvalidArgument,
}

#: botocore's exceptions, most specific first (several also derive from
#: OSError, which is why local failures travel as LocalIOError).
BOTO_ERRORS: list[tuple[type[Exception], type[ProviderError], str]] = [
    (bx.SSLError, FailedPrecondition, "TLS handshake failed (is the server's CA in tls_ca_file?)"),
    (bx.NoCredentialsError, Unauthenticated, "no S3 credentials (give access_key_id and secret_access_key)"),
    (bx.PartialCredentialsError, Unauthenticated, "incomplete S3 credentials"),
    (bx.ParamValidationError, InvalidArgument, "invalid S3 request"),
    (bx.ConnectTimeoutError, Unavailable, "timed out connecting"),
    (bx.ReadTimeoutError, Unavailable, "timed out"),
    (bx.EndpointConnectionError, Unavailable, "connection failed"),
    (bx.HTTPClientError, Unavailable, "connection broke"),
    (bx.IncompleteReadError, Unavailable, "connection broke during the transfer"),
    (bx.BotoCoreError, Unavailable, "S3 request failed"),
]

NATIVE_ERRORS = (bx.BotoCoreError, bx.ClientError)


def error(exc: bx.BotoCoreError | bx.ClientError, what: str) -> ProviderError:
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        cls = S3_CODES.get(code)
        if cls is None:
            return http_error(status, f"{what}: {code or 'error'}")
        return cls(f"{what}: {code} (HTTP {status})")
    for native, cls, text in BOTO_ERRORS:
        if isinstance(exc, native):
            return cls(f"{what}: {text} ({reason(exc)})")
    raise AssertionError("BotoCoreError is the last row")  # pragma: no cover


def client(credentials: Mapping[str, str], settings: TransferSettings, *, path_style: bool = False) -> Any:
    """A boto3 S3 client for these credentials (typed Any: the S3 stubs are
    an optional extra). Clients are cached: building one loads botocore's
    service models, which costs more time and memory than a transfer's
    buffers. ``path_style`` asks for path-style addressing (bucket in the
    path), which it also is with any endpoint but AWS's default."""
    check_keys(credentials, "s3")
    creds = {S3_KEYS[k]: v for k, v in credentials.items()}
    asked = creds.get("endpoint_url", "")
    if asked:  # a client's endpoint is held to the URL policy (the operator's setting is not)
        try:
            urls.check_url(asked, ("http", "https"))
        except ValueError as exc:
            raise InvalidArgument.field("credentials", f"endpoint_url {exc}") from None
        endpoint = urlsplit(asked)
        reach(endpoint.hostname or "", endpoint.port, f"S3 endpoint {redact(asked)}")
    key_id = creds.get("access_key_id") or settings.s3_access_key_id
    # the settings' secret goes only with the settings' key id
    secret = creds.get("secret_access_key") or (settings.s3_secret_access_key if key_id == settings.s3_access_key_id else "")
    made = _cached_client(
        endpoint=creds.get("endpoint_url") or settings.s3_endpoint_url,
        region=creds.get("region") or settings.s3_region,
        key_id=key_id,
        secret=secret,
        token=creds.get("session_token", ""),
        ca_file=str(settings.ca_file or ""),
        tuning=(settings.connect_timeout, settings.read_timeout, settings.s3_concurrency),
        path_style=path_style,
    )
    scrubber.install()  # botocore created more loggers while building the client
    return made


_client_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _cached_client(
    *,
    endpoint: str,
    region: str,
    key_id: str,
    secret: str,
    token: str,
    ca_file: str,
    tuning: tuple[float, float, int],
    path_style: bool,
) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=tuning[0],
        read_timeout=tuning[1],
        max_pool_connections=max(10, tuning[2] + 1),
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint or path_style else "auto"},
        signature_version="s3v4",  # presigned URLs too (botocore would sign those with SigV2)
    )
    with _client_lock:  # a boto3 Session is not thread-safe; its clients are
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            aws_access_key_id=key_id or None,
            aws_secret_access_key=secret or None,
            aws_session_token=token or None,
            verify=ca_file or None,
            config=config,
        )


def part_size(size: int | None, settings: TransferSettings) -> int:
    if size is None:
        return max(settings.s3_part_size, 64 << 20)  # up to ~560 GiB in 9,000 parts
    return max(settings.s3_part_size, math.ceil(size / MAX_PARTS / CHUNK) * CHUNK)


def upload(hasher: Hasher, s3: Any, parts: SplitResult, settings: TransferSettings, size: int | None) -> None:
    """One PutObject when the data fits a part, else a multipart upload with
    up to ``s3_concurrency`` parts in flight, aborted on any failure."""
    bucket, key = parts.hostname or "", parts.path.lstrip("/")
    chunk = part_size(size, settings)
    data = hasher.read_full(chunk)
    if len(data) < chunk:
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        return
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def send(number: int, body: bytearray) -> dict[str, Any]:
        resp = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    try:
        done: list[dict[str, Any]] = []
        inflight: deque[Future[dict[str, Any]]] = deque()
        with ThreadPoolExecutor(settings.s3_concurrency, thread_name_prefix="s3-part") as pool:
            number = 1
            while data:
                if len(inflight) >= settings.s3_concurrency:
                    done.append(inflight.popleft().result())
                inflight.append(pool.submit(send, number, data))
                number += 1
                data = hasher.read_full(chunk)
            while inflight:
                done.append(inflight.popleft().result())
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done})
    except BaseException:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            log.warning("could not abort the multipart upload to s3://%s/%s: %s", bucket, key, type(exc).__name__)
        raise


def download(parts: SplitResult, s3: Any) -> Iterator[bytes]:
    resp = s3.get_object(Bucket=parts.hostname, Key=parts.path.lstrip("/"))
    body = resp["Body"]
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()
