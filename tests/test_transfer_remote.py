"""provider_core.transfer's presigned requests and pinned URLs (transfers
another host makes), against moto's S3 server on 127.0.0.1; the other host
is played by plain HTTP requests that carry no credentials."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests

from provider_core import errors, transfer, urls
from provider_core.conformance.servers import S3Server
from provider_core.transfer import TransferSettings

MiB = 1 << 20
BUCKET = "vmp-remote"
KEYS = {"access_key_id": "AKIAVMPREMOTE0001", "secret_access_key": "remote-secret-never-logged"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with S3Server(BUCKET) as server:
        yield server.url


@pytest.fixture
def s3(s3_url: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _settings(s3_url: str) -> TransferSettings:
    return TransferSettings(s3_endpoint_url=s3_url, s3_region="us-east-1", s3_part_size=5 * MiB)


def _data(size: int) -> bytes:
    return (hashlib.sha256(b"remote").digest() * (size // 32 + 1))[:size]


def _put(pinned: transfer.Pinned, body: bytes) -> str:
    """What the other host does: PUT to the pinned address, no redirects, no credentials."""
    assert pinned.address == "127.0.0.1"
    resp = requests.put(pinned.url, data=body, allow_redirects=False, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.headers["ETag"])


def test_multipart_upload_through_presigned_parts(s3_url: str, s3: Any, caplog: pytest.LogCaptureFixture) -> None:
    # each logger by name: the server's logging set-up, which other tests run
    # in this process, holds botocore at INFO
    for name in ("", "provider_core", "botocore", "boto3"):
        caplog.set_level(logging.DEBUG, logger=name)
    data = _data(12 * MiB + 7)
    with transfer.presigned_upload(f"s3://{BUCKET}/big.qcow2", len(data), KEYS, settings=_settings(s3_url)) as plan:
        assert [(p.number, p.offset, p.length) for p in plan.parts] == [
            (1, 0, 5 * MiB),
            (2, 5 * MiB, 5 * MiB),
            (3, 10 * MiB, 2 * MiB + 7),
        ]
        etags, signatures = {}, []
        for part in plan.parts:
            pinned = plan.url(part)
            signatures.append(pinned.url.rsplit("Signature=", 1)[1])
            assert "uploadId=" in pinned.url
            assert f"partNumber={part.number}" in pinned.url
            assert "Signature" not in pinned.shown  # the signature is never shown
            assert pinned.url not in repr(pinned)
            etags[part.number] = _put(pinned, data[part.offset : part.offset + part.length])
        plan.complete(etags)
    assert s3.get_object(Bucket=BUCKET, Key="big.qcow2")["Body"].read() == data
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("provider_core", "botocore", "boto3"))
    assert "big.qcow2" in ours
    assert KEYS["secret_access_key"] not in ours
    assert not [s for s in signatures if s in ours]


def test_a_small_object_is_one_presigned_put(s3_url: str, s3: Any) -> None:
    data = _data(1000)
    with transfer.presigned_upload(f"s3://{BUCKET}/small.raw", len(data), KEYS, settings=_settings(s3_url)) as plan:
        (part,) = plan.parts
        assert (part.offset, part.length) == (0, 1000)
        etag = _put(plan.url(part), data)
        plan.complete({1: etag})
    assert s3.get_object(Bucket=BUCKET, Key="small.raw")["Body"].read() == data


def test_a_failure_aborts_the_upload(s3_url: str, s3: Any) -> None:
    data = _data(11 * MiB)

    def fails_midway() -> None:
        with transfer.presigned_upload(f"s3://{BUCKET}/broken.qcow2", len(data), KEYS, settings=_settings(s3_url)) as plan:
            _put(plan.url(plan.parts[0]), data[: 5 * MiB])
            raise RuntimeError("the host's upload failed")

    with pytest.raises(RuntimeError):
        fails_midway()
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="broken")


def test_complete_checks_the_parts_and_the_size(s3_url: str, s3: Any) -> None:
    data = _data(11 * MiB)
    with transfer.presigned_upload(f"s3://{BUCKET}/short.qcow2", len(data), KEYS, settings=_settings(s3_url)) as plan:
        first = _put(plan.url(plan.parts[0]), data[: 5 * MiB])
        with pytest.raises(errors.Unavailable, match=r"no ETag for part\(s\) 2, 3"):
            plan.complete({1: first})
    with transfer.presigned_upload(f"s3://{BUCKET}/cut.raw", 1000, KEYS, settings=_settings(s3_url)) as plan:
        etag = _put(plan.url(plan.parts[0]), data[:999])
        with pytest.raises(errors.Unavailable, match="held 999 bytes, not the 1000 sent; removed"):
            plan.complete({1: etag})
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="cut")


def test_presigned_download(s3_url: str, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="image.qcow2", Body=b"image bytes")
    pinned = transfer.presigned_download(f"s3://{BUCKET}/image.qcow2", KEYS, settings=_settings(s3_url))
    assert (pinned.host, pinned.address, pinned.scheme) == ("127.0.0.1", "127.0.0.1", "http")
    assert requests.get(pinned.url, allow_redirects=False, timeout=30).content == b"image bytes"
    with pytest.raises(errors.NotFound, match=rf"download from s3://{BUCKET}/missing.qcow2"):
        transfer.presigned_download(f"s3://{BUCKET}/missing.qcow2", KEYS, settings=_settings(s3_url))


def test_pin_holds_urls_to_the_policy(s3_url: str) -> None:
    pinned = transfer.pin("http://localhost:8080/disk.qcow2?X-Amz-Signature=abc")
    assert (pinned.host, pinned.port) == ("localhost", 8080)
    assert pinned.address in urls.check_host("localhost", 8080)
    assert pinned.shown == "http://localhost:8080/disk.qcow2?<redacted>"
    assert transfer.pin("https://127.0.0.1/x").port == 443
    # quoted as requests sends it in relay: another host's curl refuses a space
    assert transfer.pin("http://127.0.0.1/my disk.raw?sig=a%2Fb").url == "http://127.0.0.1/my%20disk.raw?sig=a%2Fb"
    with pytest.raises(errors.InvalidArgument, match="source_url: must be an http or https URL"):
        transfer.pin(f"s3://{BUCKET}/x", url_field="source_url")
    with pytest.raises(errors.InvalidArgument, match="destination_url"):
        transfer.presigned_upload("http://127.0.0.1/x", 10)
    urls.allow([])
    with pytest.raises(errors.InvalidArgument, match="loopback"):
        transfer.pin("http://127.0.0.1:9/x")
    with pytest.raises(errors.InvalidArgument, match="loopback"):
        transfer.presigned_download(f"s3://{BUCKET}/image.qcow2", KEYS, settings=_settings(s3_url))
