"""provider_core.transfer against real servers on 127.0.0.1: the HttpSink
(HTTP and HTTPS) and moto's S3 server."""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from provider_core import errors, transfer
from provider_core.conformance.servers import HttpSink, S3Server
from provider_core.transfer import TransferSettings

MiB = 1 << 20
BUCKET = "vmp-exports"
S3_KEYS = {"access_key_id": "AKIAVMPTESTKEY0001", "secret_access_key": "s3-secret-do-not-log-7f3a"}


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[HttpSink]:
    with HttpSink(tmp_path / "sink") as server:
        yield server


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with S3Server(BUCKET) as server:
        yield server.url


@pytest.fixture
def s3(s3_url: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _s3_settings(s3_url: str, **kw: Any) -> TransferSettings:
    return TransferSettings(s3_endpoint_url=s3_url, s3_region="us-east-1", **kw)


def _file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes; return their SHA256."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    sha = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            data = block[: min(left, len(block))]
            f.write(data)
            sha.update(data)
            left -= len(data)
    return sha.hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- http ----------------------------------------------------------------------------------


def test_http_round_trip_sends_length_and_hashes(tmp_path: Path, sink: HttpSink) -> None:
    src = tmp_path / "disk.img"
    want = _file(src, 3 * MiB + 17)
    with src.open("rb") as f:
        sent = transfer.upload(f, sink.url("exports/disk.img"))
    assert sent == transfer.UploadResult(3 * MiB + 17, want)
    assert hashlib.sha256((sink.root / "exports/disk.img").read_bytes()).hexdigest() == want
    assert sink.requests[-1].headers["Content-Length"] == str(3 * MiB + 17)

    back = io.BytesIO()
    got = transfer.download(sink.url("exports/disk.img"), back, expected=want)
    assert (got.size, got.sha256, got.digest) == (3 * MiB + 17, want, want)
    assert hashlib.sha256(back.getvalue()).hexdigest() == want


def test_http_upload_of_a_pipe_is_chunked(sink: HttpSink) -> None:
    payload = os.urandom(2 * MiB + 5)
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        sent = transfer.upload(pipe, sink.url("piped.raw"))
    writer.join()
    assert sent.sha256 == hashlib.sha256(payload).hexdigest()
    assert (sink.root / "piped.raw").read_bytes() == payload
    assert sink.requests[-1].headers.get("Transfer-Encoding") == "chunked"


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "md5"])
def test_download_verifies_any_supported_digest(tmp_path: Path, sink: HttpSink, algorithm: str) -> None:
    data = os.urandom(MiB)
    (sink.root).mkdir(parents=True, exist_ok=True)
    (sink.root / "image.qcow2").write_bytes(data)
    expected = hashlib.new(algorithm, data).hexdigest()
    got = transfer.download_to(tmp_path / "image.qcow2", sink.url("image.qcow2"), expected=expected.upper(), algorithm=algorithm)
    assert got.digest == expected
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "image.qcow2").read_bytes() == data


def test_wrong_checksum_is_invalid_argument_and_leaves_nothing(tmp_path: Path, sink: HttpSink) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    (sink.root / "image.qcow2").write_bytes(b"not what you think" * 1000)
    dest = tmp_path / "dl" / "image.qcow2"
    dest.parent.mkdir()
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.download_to(dest, sink.url("image.qcow2"), expected="0" * 64, checksum_field="image_json.Checksum")
    assert info.value.violations[0][0] == "image_json.Checksum"
    assert "not the expected " + "0" * 64 in str(info.value)
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, errors.InvalidArgument),
        (401, errors.Unauthenticated),
        (403, errors.PermissionDenied),
        (404, errors.NotFound),
        (409, errors.Aborted),
        (413, errors.ResourceExhausted),
        (429, errors.Unavailable),
        (500, errors.Unavailable),
        (503, errors.Unavailable),
        (507, errors.ResourceExhausted),
    ],
)
def test_http_status_maps_to_core_errors(sink: HttpSink, status: int, error: type[errors.ProviderError]) -> None:
    sink.fail("disk.qcow2", status, times=2)
    with pytest.raises(error, match=f"HTTP {status}"):
        transfer.upload(io.BytesIO(b"x" * MiB), sink.url("disk.qcow2"))
    with pytest.raises(error, match=f"HTTP {status}"):
        transfer.download(sink.url("disk.qcow2"), io.BytesIO())


def test_missing_file_is_not_found(sink: HttpSink) -> None:
    with pytest.raises(errors.NotFound, match=r"download from http://127\.0\.0\.1:\d+/absent\.img: HTTP 404"):
        transfer.download(sink.url("absent.img"), io.BytesIO())


def test_unreachable_server_is_unavailable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/disk.img"
    with pytest.raises(errors.Unavailable, match="connection failed"):
        transfer.upload(io.BytesIO(b"data"), url)
    with pytest.raises(errors.Unavailable, match="connection failed"):
        transfer.download(url, io.BytesIO())


def test_bearer_token(tmp_path: Path) -> None:
    with HttpSink(tmp_path, token="t0ken-abc") as sink:
        transfer.upload(io.BytesIO(b"ok"), sink.url("a"), {"token": "t0ken-abc"})
        with pytest.raises(errors.Unauthenticated):
            transfer.upload(io.BytesIO(b"no"), sink.url("a"), {"token": "wrong-token"})
        with pytest.raises(errors.Unauthenticated):
            transfer.download(sink.url("a"), io.BytesIO())
        assert (tmp_path / "a").read_bytes() == b"ok"


def test_basic_auth_from_credentials_or_url(tmp_path: Path) -> None:
    with HttpSink(tmp_path, basic=("backup", "p@ss:word")) as sink:
        transfer.upload(io.BytesIO(b"one"), sink.url("one"), {"username": "backup", "password": "p@ss:word"})
        transfer.upload(io.BytesIO(b"two"), sink.url("two").replace("://", "://backup:p%40ss%3Aword@"))
        with pytest.raises(errors.Unauthenticated):
            transfer.upload(io.BytesIO(b"three"), sink.url("three"), {"username": "backup", "password": "nope"})
    assert (tmp_path / "one").read_bytes() == b"one"
    assert (tmp_path / "two").read_bytes() == b"two"
    assert not (tmp_path / "three").exists()


def test_https_verifies_against_the_ca_file(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with HttpSink(tmp_path / "root", tls=(cert, key)) as sink:
        url = sink.url("disk.img")
        with pytest.raises(errors.FailedPrecondition, match="TLS"):
            transfer.upload(io.BytesIO(b"secret disk"), url)
        sent = transfer.upload(io.BytesIO(b"secret disk"), url, settings=TransferSettings(ca_file=cert))
        assert sent.sha256 == hashlib.sha256(b"secret disk").hexdigest()
        got = transfer.download(url, io.BytesIO(), settings=TransferSettings(ca_file=cert), expected=sent.sha256)
        assert got.size == len(b"secret disk")


def test_disk_full_is_resource_exhausted(sink: HttpSink) -> None:
    sink.root.mkdir(parents=True, exist_ok=True)
    (sink.root / "big.img").write_bytes(b"x" * MiB)
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(errors.ResourceExhausted, match="no space left"):
        transfer.download(sink.url("big.img"), full)


# -- URLs, credentials and secrets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://host.example/a/b.qcow2", "https://host.example/a/b.qcow2"),
        (
            "https://user:pw@host.example:8443/a?X-Amz-Signature=abc&X-Amz-Credential=k",
            "https://***@host.example:8443/a?<redacted>",
        ),
        ("http://token@[::1]:9000/x#frag", "http://***@[::1]:9000/x"),
        ("s3://bucket/key/disk.vmdk", "s3://bucket/key/disk.vmdk"),
        ("http://host:notaport/x", "<unparsable URL>"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert transfer.redact(url) == shown


@pytest.mark.parametrize(
    ("url", "credentials", "field", "problem"),
    [
        ("ftp://host/disk.img", {}, "destination_url", "scheme must be one of http, https, s3"),
        ("file:///etc/passwd", {}, "destination_url", "scheme must be one of"),
        ("http:///nohost", {}, "destination_url", "no host"),
        ("s3://bucket", {}, "destination_url", "names no object key"),
        ("http://127.0.0.1/x", {"secret_access_key": "k"}, "credentials", "unknown key(s) secret_access_key for http URLs"),
        ("s3://bucket/key", {"token": "t"}, "credentials", "unknown key(s) token for s3 URLs"),
        ("http://127.0.0.1/x", {"token": "t", "password": "p"}, "credentials", "not both"),
    ],
)
def test_bad_urls_and_credentials_are_invalid_arguments(url: str, credentials: dict[str, str], field: str, problem: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.upload(io.BytesIO(b"x"), url, credentials)
    assert info.value.violations[0][0] == field
    assert problem in str(info.value)
    for value in credentials.values():
        assert f"={value}" not in str(info.value)


def test_secrets_never_reach_errors_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture, s3_url: str) -> None:
    caplog.set_level(logging.DEBUG)
    token, password, signature = "tok-9f8e7d6c5b4a", "pw-1a2b3c4d5e", "sig0123456789abcdef"
    session = "session-token-6e5d4c3b2a19"
    messages = []
    with HttpSink(tmp_path, token=token) as sink:
        signed = sink.url("disk.img") + f"?X-Amz-Signature={signature}&X-Amz-Expires=600"
        transfer.upload(io.BytesIO(b"fine"), signed, {"token": token})
        sink.fail("disk.img", 503)
        for call in (
            lambda: transfer.upload(io.BytesIO(b"x"), signed, {"token": token}),
            lambda: transfer.upload(io.BytesIO(b"x"), signed, {"token": "wrong-" + token}),
            lambda: transfer.download(signed.replace("://", f"://admin:{password}@"), io.BytesIO()),
            lambda: transfer.download(f"http://admin:{password}@127.0.0.1:{_closed_port()}/x?sig={signature}", io.BytesIO()),
        ):
            with pytest.raises(errors.ProviderError) as info:
                call()
            messages.append(str(info.value))
    creds = {**S3_KEYS, "session_token": session}
    transfer.upload(io.BytesIO(b"s3 data"), f"s3://{BUCKET}/secret-test", creds, settings=_s3_settings(s3_url))
    with pytest.raises(errors.NotFound) as missing:
        transfer.download(f"s3://{BUCKET}/absent", io.BytesIO(), creds, settings=_s3_settings(s3_url))
    messages.append(str(missing.value))

    assert any("HTTP 503" in m for m in messages)
    assert any("HTTP 401" in m for m in messages)
    assert any("Connection refused" in m for m in messages)
    assert caplog.records, "the transfers logged nothing at all"
    logged = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    for secret in (token, password, signature, session, S3_KEYS["secret_access_key"], S3_KEYS["access_key_id"]):
        for text in [*messages, logged]:
            assert secret not in text


# -- s3 ----------------------------------------------------------------------------------------------


def test_s3_small_object_round_trip(tmp_path: Path, s3_url: str, s3: Any) -> None:
    data = os.urandom(100_000)
    settings = _s3_settings(s3_url)
    sent = transfer.upload(io.BytesIO(data), f"s3://{BUCKET}/small/disk.raw", S3_KEYS, settings=settings)
    assert sent.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket=BUCKET, Key="small/disk.raw")["Body"].read() == data
    md5 = hashlib.md5(data).hexdigest()
    got = transfer.download(
        f"s3://{BUCKET}/small/disk.raw", io.BytesIO(), S3_KEYS, settings=settings, expected=md5, algorithm="md5"
    )
    assert (got.sha256, got.digest) == (sent.sha256, md5)


def test_s3_multipart_upload_in_parts(tmp_path: Path, s3_url: str, s3: Any) -> None:
    src = tmp_path / "disk.qcow2"
    want = _file(src, 12 * MiB + 3)
    settings = _s3_settings(s3_url, s3_part_size=5 * MiB, s3_concurrency=2)
    with src.open("rb") as f:
        sent = transfer.upload(f, f"s3://{BUCKET}/multi/disk.qcow2", S3_KEYS, settings=settings)
    assert sent == transfer.UploadResult(12 * MiB + 3, want)
    head = s3.head_object(Bucket=BUCKET, Key="multi/disk.qcow2")
    assert head["ContentLength"] == 12 * MiB + 3
    assert head["ETag"].strip('"').endswith("-3"), "not a 3-part multipart upload"
    dest = tmp_path / "back.qcow2"
    got = transfer.download_to(dest, f"s3://{BUCKET}/multi/disk.qcow2", S3_KEYS, settings=settings, expected=want)
    assert got.sha256 == want == hashlib.sha256(dest.read_bytes()).hexdigest()


class _Breaks(io.RawIOBase):
    """A source that fails with EIO after ``good`` bytes."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        n = min(len(buf), self.left)
        buf[:n] = b"z" * n
        self.left -= n
        return n


def test_failed_multipart_upload_is_aborted(s3_url: str, s3: Any) -> None:
    settings = _s3_settings(s3_url, s3_part_size=5 * MiB)
    with pytest.raises(OSError, match="Input/output error"):
        transfer.upload(io.BufferedReader(_Breaks(11 * MiB)), f"s3://{BUCKET}/broken.qcow2", S3_KEYS, settings=settings)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="broken")


def test_s3_errors_map_to_core_errors(s3_url: str) -> None:
    settings = _s3_settings(s3_url)
    with pytest.raises(errors.NotFound, match="NoSuchBucket"):
        transfer.upload(io.BytesIO(b"x"), "s3://no-such-bucket/k", S3_KEYS, settings=settings)
    with pytest.raises(errors.NotFound, match="NoSuchKey"):
        transfer.download(f"s3://{BUCKET}/no/such/key", io.BytesIO(), S3_KEYS, settings=settings)
    down = _s3_settings(f"http://127.0.0.1:{_closed_port()}", connect_timeout=2)
    with pytest.raises(errors.Unavailable, match="connection failed"):
        transfer.upload(io.BytesIO(b"x"), f"s3://{BUCKET}/k", S3_KEYS, settings=down)


def test_request_credentials_override_settings(s3_url: str, s3: Any) -> None:
    settings = TransferSettings(s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}", s3_region="eu-west-1")
    creds = {**S3_KEYS, "endpoint_url": s3_url, "region": "us-east-1"}
    transfer.upload(io.BytesIO(b"via request"), f"s3://{BUCKET}/override", creds, settings=settings)
    assert s3.get_object(Bucket=BUCKET, Key="override")["Body"].read() == b"via request"


# -- memory --------------------------------------------------------------------------------------------


def _sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)
        f.write(b"head")
        f.seek(size // 2)
        f.write(b"middle")


def test_http_memory_stays_flat_for_a_64_mib_disk(tmp_path: Path, sink: HttpSink) -> None:
    size = 64 * MiB
    src = tmp_path / "sparse.raw"
    _sparse(src, size)
    tracemalloc.start()
    try:
        with src.open("rb") as f:
            up = transfer.upload(f, sink.url("sparse.raw"))
        with (tmp_path / "back.raw").open("wb") as out:
            down = transfer.download(sink.url("sparse.raw"), out, expected=up.sha256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert up.size == down.size == size
    # tracemalloc also counts the in-process sink's buffers, and both sides
    # may hold a few MiB chunks at once: a quarter of the disk still proves
    # that nothing holds the whole of it.
    assert peak < size / 4, f"HTTP transfers peaked at {peak / MiB:.1f} MiB"


@pytest.fixture(scope="module")
def s3_elsewhere() -> Iterator[str]:
    """moto's S3 in its own process, so that tracemalloc sees only the client."""
    port = _closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        for _ in range(200):
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except EndpointConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_s3_memory_stays_flat_for_a_64_mib_disk(tmp_path: Path, s3_elsewhere: str) -> None:
    size = 64 * MiB
    src = tmp_path / "sparse.raw"
    _sparse(src, size)
    settings = _s3_settings(s3_elsewhere, s3_part_size=5 * MiB, s3_concurrency=2)
    transfer.upload(io.BytesIO(b"warm up"), f"s3://{BUCKET}/warm", S3_KEYS, settings=settings)  # loads botocore's models
    tracemalloc.start()
    try:
        with src.open("rb") as f:
            up = transfer.upload(f, f"s3://{BUCKET}/sparse.raw", S3_KEYS, settings=settings)
        with (tmp_path / "back.raw").open("wb") as out:
            down = transfer.download(f"s3://{BUCKET}/sparse.raw", out, S3_KEYS, settings=settings, expected=up.sha256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert up.size == down.size == size
    # concurrency + 1 parts of 5 MiB (in flight, and the one being read, each
    # read into its own buffer without copies), and small signing buffers:
    # not the object's size
    assert peak < 17 * MiB, f"S3 transfers peaked at {peak / MiB:.1f} MiB"


# -- helpers ------------------------------------------------------------------------------------------------


def _self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmp-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    where.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = where / "cert.pem", where / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file
