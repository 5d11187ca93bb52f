"""Staging backends (pvc, nfs, s3 with VirtRigaud's storage options) and
transfer modes: the transfer package on real directories and moto's S3
server, and ExportDisk/ImportDisk/GetCapabilities through a real server on
the sim backend."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest

from provider_core import ExportSpec, ImportSpec, errors, transfer, urls
from provider_core.conformance.servers import S3Server
from provider_core.models import StorageOptions
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

CLAIM = "vmm-staging"
KEY = "vmmigrations/ns1/move-web/export.qcow2"
PVC_URL = f"pvc://{CLAIM}/{KEY}"
BUCKET = "vmp-staging"
#: VirtRigaud's spellings of the S3 keys (internal/storage/migration/options.go).
UPSTREAM_KEYS = {"accessKeyID": "AKIAUPSTREAM0001", "secretAccessKey": "upstream-secret-never-logged-9c1e"}


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A pvc root with one mounted claim and an nfs root, set for this process."""
    pvc, nfs = tmp_path / "pvc", tmp_path / "nfs"
    (pvc / CLAIM).mkdir(parents=True)
    nfs.mkdir()
    urls.set_roots(pvc, nfs)
    yield pvc, nfs
    urls.set_roots()


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with S3Server(BUCKET) as server:
        yield server.url


def _export(url: str, **kw: Any) -> ExportSpec:
    return ExportSpec.model_validate({"vm_id": "vm", "destination_url": url, **kw})


def _import(url: str, **kw: Any) -> ImportSpec:
    return ImportSpec.model_validate({"target_name": "disk", "source_url": url, **kw})


# -- pvc and nfs: files under the roots -------------------------------------------------------


def test_pvc_round_trip_writes_under_the_claim_and_verifies_on_read(roots: tuple[Path, Path]) -> None:
    pvc, _ = roots
    data = os.urandom(3 * transfer.CHUNK + 11)
    sent = transfer.upload(io.BytesIO(data), _export(PVC_URL))
    assert (sent.size, sent.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    written = pvc / CLAIM / KEY
    assert written.read_bytes() == data
    assert [p.name for p in written.parent.iterdir()] == ["export.qcow2"], "no temporary file is left"
    back = io.BytesIO()
    got = transfer.download(_import(PVC_URL), back, expected=sent.sha256)
    assert back.getvalue() == data
    assert got.sha256 == sent.sha256
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.download(_import(PVC_URL), io.BytesIO(), expected="0" * 64)
    assert info.value.violations[0][0] == "expected_checksum"


def test_a_failed_write_leaves_neither_the_file_nor_a_part(roots: tuple[Path, Path]) -> None:
    pvc, _ = roots

    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 3

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            self.left -= 1
            if not self.left:
                raise OSError(5, "Input/output error")
            b[:4] = b"data"
            return 4

    with pytest.raises(OSError, match="Input/output"):
        transfer.upload(io.BufferedReader(Broken()), _export(PVC_URL))
    assert list((pvc / CLAIM / KEY).parent.iterdir()) == []


def test_a_rewrite_replaces_the_file_whole(roots: tuple[Path, Path]) -> None:
    pvc, _ = roots
    transfer.upload(io.BytesIO(b"first, longer content"), _export(PVC_URL))
    transfer.upload(io.BytesIO(b"second"), _export(PVC_URL))
    assert (pvc / CLAIM / KEY).read_bytes() == b"second"


def test_nfs_url_is_the_path_below_the_export_under_nfs_root(roots: tuple[Path, Path]) -> None:
    _, nfs = roots
    options = json.dumps({"backend": "nfs", "server": "filer", "export": "/export/migrations", "path": "web", "uid": 1000})
    spec = _export("nfs://filer/export/migrations/web/vmmigrations/ns1/m/export.qcow2", storage_options_json=options)
    assert spec.backend_type == "nfs"
    transfer.upload(io.BytesIO(b"nfs bytes"), spec)
    assert (nfs / "web/vmmigrations/ns1/m/export.qcow2").read_bytes() == b"nfs bytes"
    back = io.BytesIO()
    transfer.download(_import(spec.destination_url, storage_options_json=options), back)
    assert back.getvalue() == b"nfs bytes"


def test_a_symbolic_link_out_of_the_root_is_refused(roots: tuple[Path, Path], tmp_path: Path) -> None:
    pvc, _ = roots
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    os.symlink(outside, pvc / CLAIM / "vmmigrations")
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.upload(io.BytesIO(b"x"), _export(PVC_URL))
    assert info.value.violations[0][0] == "destination_url"
    assert "symbolic link" in str(info.value)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"], "nothing was made outside the root"
    os.symlink(outside / "secret", pvc / CLAIM / "disk.qcow2")
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.download(_import(f"pvc://{CLAIM}/disk.qcow2"), io.BytesIO())
    assert info.value.violations[0][0] == "source_url"


def test_a_link_inside_the_root_is_refused_too(roots: tuple[Path, Path]) -> None:
    # others write into the claim: a link is checked and then swapped, so none is followed
    pvc, _ = roots
    (pvc / CLAIM / "real").mkdir()
    os.symlink(pvc / CLAIM / "real", pvc / CLAIM / "vmmigrations")
    with pytest.raises(errors.InvalidArgument, match="symbolic link"):
        transfer.upload(io.BytesIO(b"x"), _export(PVC_URL))
    assert list((pvc / CLAIM / "real").iterdir()) == []


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    return outside


def _untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret"], "nothing was made outside the root"
    assert (outside / "secret").read_bytes() == b"not yours"


def test_a_claim_directory_that_is_a_link_is_refused(roots: tuple[Path, Path], tmp_path: Path) -> None:
    pvc, _ = roots
    outside = _outside(tmp_path)
    os.symlink(outside, pvc / "linked-claim")
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.upload(io.BytesIO(b"x"), _export("pvc://linked-claim/a/disk.qcow2"))
    assert info.value.violations[0][0] == "destination_url"
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.download(_import("pvc://linked-claim/secret"), io.BytesIO())
    assert info.value.violations[0][0] == "source_url"
    _untouched(outside)


def test_a_final_name_that_is_a_link_is_neither_read_nor_written(roots: tuple[Path, Path], tmp_path: Path) -> None:
    pvc, _ = roots
    outside = _outside(tmp_path)
    os.symlink(outside / "secret", pvc / CLAIM / "disk.qcow2")
    os.symlink(pvc / CLAIM / "inside.qcow2", pvc / CLAIM / "inner-link.qcow2")
    (pvc / CLAIM / "inside.qcow2").write_bytes(b"inside")
    for name in ("disk.qcow2", "inner-link.qcow2"):
        with pytest.raises(errors.InvalidArgument) as info:
            transfer.download(_import(f"pvc://{CLAIM}/{name}"), io.BytesIO())
        assert info.value.violations[0][0] == "source_url"
        with pytest.raises(errors.InvalidArgument) as info:
            transfer.upload(io.BytesIO(b"overwrite"), _export(f"pvc://{CLAIM}/{name}"))
        assert info.value.violations[0][0] == "destination_url"
    _untouched(outside)
    assert (pvc / CLAIM / "disk.qcow2").is_symlink()
    assert (pvc / CLAIM / "inside.qcow2").read_bytes() == b"inside"


def test_a_fifo_is_refused_without_blocking(roots: tuple[Path, Path]) -> None:
    pvc, _ = roots
    fifo = pvc / CLAIM / "disk.qcow2"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            transfer.download(_import(f"pvc://{CLAIM}/disk.qcow2"), io.BytesIO())
        except BaseException as exc:
            outcome.append(exc)
        try:
            transfer.upload(io.BytesIO(b"x"), _export(f"pvc://{CLAIM}/disk.qcow2"))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # release the reader blocked on the FIFO before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("reading a FIFO blocked")
    assert [type(e) for e in outcome] == [errors.InvalidArgument, errors.InvalidArgument]
    assert [e.violations[0][0] for e in outcome if isinstance(e, errors.InvalidArgument)] == ["source_url", "destination_url"]
    assert fifo.is_fifo()


def test_a_directory_swapped_for_a_link_after_resolving_is_not_followed(roots: tuple[Path, Path], tmp_path: Path) -> None:
    from provider_core.transfer import _staging

    pvc, _ = roots
    outside = _outside(tmp_path)
    with _staging.resolve(PVC_URL, "", create=True, url_field="destination_url") as place:
        moved = pvc / CLAIM / "moved"
        (pvc / CLAIM / "vmmigrations").rename(moved)
        os.symlink(outside, pvc / CLAIM / "vmmigrations")
        _staging.write(transfer.Hasher(io.BytesIO(b"stays inside")), place, "test")
    _untouched(outside)
    assert (moved / "ns1/move-web/export.qcow2").read_bytes() == b"stays inside"


@pytest.mark.parametrize(
    "url",
    [
        f"pvc://{CLAIM}/vmmigrations/../../etc/passwd",
        f"pvc://{CLAIM}//etc/passwd",
        f"pvc://{CLAIM}/a/%2e%2e/%2e%2e/etc/passwd",
        f"pvc://{CLAIM}/a%2F..%2F..%2Fetc",
        "pvc://../etc/passwd",
        f"pvc://{CLAIM}/disk.qcow2?x=1",
        f"pvc://{CLAIM}/",
    ],
)
def test_urls_that_climb_out_are_refused(roots: tuple[Path, Path], url: str) -> None:
    with pytest.raises((errors.InvalidArgument, ValueError)):
        transfer.upload(io.BytesIO(b"x"), url)
    assert sorted(p.name for p in roots[0].iterdir()) == [CLAIM]


def test_a_claim_that_is_not_mounted_is_failed_precondition(roots: tuple[Path, Path]) -> None:
    with pytest.raises(errors.FailedPrecondition, match="not mounted"):
        transfer.upload(io.BytesIO(b"x"), _export("pvc://other-claim/a.qcow2"))
    assert not (roots[0] / "other-claim").exists()


def test_a_missing_file_is_not_found(roots: tuple[Path, Path]) -> None:
    with pytest.raises(errors.NotFound):
        transfer.download(_import(f"pvc://{CLAIM}/no/such.qcow2"), io.BytesIO())
    with pytest.raises(errors.NotFound):
        transfer.download(_import(f"pvc://{CLAIM}/none.qcow2"), io.BytesIO())


def test_without_a_root_the_backend_is_unimplemented() -> None:
    urls.set_roots(None, None)
    try:
        with pytest.raises(errors.Unimplemented, match="nfs_root"):
            transfer.upload(io.BytesIO(b"x"), _export("nfs://f/e/a", storage_options_json='{"export": "/e"}'))
        with pytest.raises(errors.Unimplemented, match="pvc_root"):
            transfer.upload(io.BytesIO(b"x"), _export(PVC_URL))
    finally:
        urls.set_roots()


# -- s3 with storage options ------------------------------------------------------------------


def test_s3_with_upstream_options_and_credential_spellings(s3_url: str) -> None:
    options = json.dumps(
        {"backend": "s3", "bucket": BUCKET, "endpoint": s3_url, "region": "us-east-1", "prefix": "team", "usePathStyle": True}
    )
    url = f"s3://{BUCKET}/team/vmmigrations/ns1/m/export.vmdk"
    data = os.urandom(100_000)
    spec = _export(url, backend_type="s3", storage_options_json=options, credentials=UPSTREAM_KEYS)
    sent = transfer.upload(io.BytesIO(data), spec)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    assert s3.get_object(Bucket=BUCKET, Key="team/vmmigrations/ns1/m/export.vmdk")["Body"].read() == data
    back = io.BytesIO()
    transfer.download(_import(url, storage_options_json=options, credentials=UPSTREAM_KEYS), back, expected=sent.sha256)
    assert back.getvalue() == data


def test_the_options_endpoint_is_held_to_the_url_policy(s3_url: str) -> None:
    options = json.dumps({"endpoint": s3_url})
    spec = _export(f"s3://{BUCKET}/k", storage_options_json=options)
    urls.allow([])
    with pytest.raises(errors.InvalidArgument, match="loopback"):
        transfer.upload(io.BytesIO(b"x"), spec)
    with pytest.raises(ValueError, match="loopback"):
        _export(f"s3://{BUCKET}/k", storage_options_json=options)


# -- what a request may say ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"backend_type": "s3"}, "backend_type", "contradicts the pvc:// URL"),
        ({"backend_type": "ceph"}, "backend_type", "must be one of pvc, nfs, s3"),
        ({"transfer_mode": "teleport"}, "transfer_mode", "must be one of auto, relay, direct"),
        ({"storage_options_json": "{"}, "storage_options_json", "malformed JSON"),
        ({"storage_options_json": '{"backend": "nfs"}'}, "storage_options_json", "contradicts backend_type 'pvc'"),
        ({"storage_options_json": '{"uid": -1}'}, "storage_options_json.uid", "greater than or equal to 0"),
        ({"storage_options_json": '{"colour": "red"}'}, "storage_options_json.colour", "Extra inputs"),
        ({"storage_options_json": '{"path": "../up"}'}, "storage_options_json.path", "'..'"),
        ({"credentials": {"token": "abcd"}}, "credentials", "take no credentials"),
        ({"destination_url": "https://example.test/x", "backend_type": "pvc"}, "backend_type", "contradicts the https:// URL"),
        ({"destination_url": "https://example.test/x", "storage_options_json": '{"region": "eu"}'}, "storage_options_json", ""),
        ({"destination_url": "s3://bucket/k", "storage_options_json": '{"bucket": "other"}'}, "storage_options_json", "bucket"),
        ({"destination_url": "nfs://filer/export/a/b"}, "storage_options_json", "export is required"),
        (
            {"destination_url": "nfs://filer/export/a/b", "storage_options_json": '{"export": "/elsewhere"}'},
            "storage_options_json",
            "not where the URL's path starts",
        ),
        (
            {"destination_url": "nfs://filer/export/a/b", "storage_options_json": '{"export": "/export", "server": "other"}'},
            "storage_options_json",
            "server",
        ),
        (
            {"destination_url": "s3://bucket/other/k", "storage_options_json": '{"prefix": "team"}'},
            "storage_options_json",
            "prefix 'team'",
        ),
        (
            {"destination_url": "nfs://filer/export/a/b", "storage_options_json": '{"export": "/export", "path": "web"}'},
            "storage_options_json",
            "path 'web'",
        ),
        ({"destination_url": "pvc://Bad_Claim/x"}, "destination_url", "claim name"),
        ({"destination_url": "ftp://host/x"}, "destination_url", "pvc, nfs"),
    ],
)
def test_bad_staging_fields_are_invalid_argument_naming_the_field(
    server: ProviderHarness,
    violations: Callable[[grpc.RpcError], dict[str, str]],
    fields: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    request = pb.ExportDiskRequest(vm_id="vm", destination_url=PVC_URL, format="qcow2")
    for key, value in fields.items():
        if key == "credentials":
            request.credentials.update(value)
        else:
            setattr(request, key, value)
    with pytest.raises(grpc.RpcError) as info:
        server.stub.ExportDisk(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(info.value)
    assert field in found, found
    assert problem in found[field]


def test_an_empty_backend_type_comes_from_the_url() -> None:
    assert _export(PVC_URL).backend_type == "pvc"
    assert _export("s3://b/k").backend_type == "s3"
    assert _export("https://example.test/k").backend_type == ""
    assert _export(PVC_URL, backend_type=" PVC ").backend_type == "pvc"


# -- through a server on the sim backend ---------------------------------------------------


@pytest.fixture
def server(roots: tuple[Path, Path]) -> Iterator[ProviderHarness]:
    pvc, nfs = roots
    with ProviderHarness.for_backend("sim", {"task_seconds": 0}, pvc_root=pvc, nfs_root=nfs) as h:
        yield h
    urls.set_roots()


def _caps(h: ProviderHarness) -> tuple[list[str], list[str], list[str]]:
    caps = h.stub.GetCapabilities(pb.GetCapabilitiesRequest())
    return list(caps.supported_export_backends), list(caps.supported_import_backends), list(caps.supported_transfer_modes)


def test_get_capabilities_lists_the_backends_the_roots_serve(server: ProviderHarness, tmp_path: Path) -> None:
    assert _caps(server) == (["pvc", "nfs", "s3"], ["pvc", "nfs", "s3"], ["relay"])
    with ProviderHarness.for_backend("sim", pvc_root=tmp_path / "not-mounted") as h:
        assert _caps(h) == (["s3"], ["s3"], ["relay"])


def test_export_then_import_through_a_claim(server: ProviderHarness, roots: tuple[Path, Path]) -> None:
    stub = server.stub
    made = stub.Create(pb.CreateRequest(name="move-web", class_json='{"CPU": 1, "MemoryMiB": 512}'))
    server.wait(made.task)
    resp = stub.ExportDisk(
        pb.ExportDiskRequest(vm_id=made.id, destination_url=PVC_URL, format="qcow2", backend_type="pvc", transfer_mode="auto")
    )
    server.wait(resp.task)
    staged = roots[0] / CLAIM / KEY
    sha = hashlib.sha256(staged.read_bytes()).hexdigest()
    assert json.loads(staged.read_bytes())["vm"] == "move-web"
    back = stub.ImportDisk(
        pb.ImportDiskRequest(
            source_url=PVC_URL, format="qcow2", target_name="web-copy", verify_checksum=True, expected_checksum=sha
        )
    )
    server.wait(back.task)
    clone = stub.Create(pb.CreateRequest(name="web-2", image_json='{"TemplateName": "web-copy"}'))
    server.wait(clone.task)
    assert json.loads(stub.Describe(pb.DescribeRequest(id=clone.id)).provider_raw_json)["image"].endswith("/web-copy.qcow2")
    again = stub.ImportDisk(
        pb.ImportDiskRequest(
            source_url=PVC_URL, format="qcow2", target_name="web-copy", verify_checksum=True, expected_checksum=sha
        )
    )
    assert (again.disk_id, again.checksum, again.task.id) == ("web-copy", sha, ""), "a repeated import is done at once"


def test_a_backend_not_offered_is_unimplemented_naming_it(tmp_path: Path) -> None:
    with ProviderHarness.for_backend("sim", pvc_root=tmp_path / "absent") as h, pytest.raises(grpc.RpcError) as info:
        h.stub.ExportDisk(pb.ExportDiskRequest(vm_id="vm", destination_url=PVC_URL, format="qcow2"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "'pvc'" in (info.value.details() or "")
    assert "s3" in (info.value.details() or "")
    urls.set_roots()


@pytest.mark.parametrize("rpc", ["ExportDisk", "ImportDisk"])
def test_direct_is_invalid_argument_naming_the_offered_modes(
    server: ProviderHarness, violations: Callable[[grpc.RpcError], dict[str, str]], rpc: str
) -> None:
    if rpc == "ExportDisk":
        request: Any = pb.ExportDiskRequest(vm_id="vm", destination_url=PVC_URL, format="qcow2", transfer_mode="direct")
    else:
        request = pb.ImportDiskRequest(source_url=PVC_URL, format="qcow2", target_name="t", transfer_mode="direct")
    with pytest.raises(grpc.RpcError) as info:
        getattr(server.stub, rpc)(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "offered: relay" in violations(info.value)["transfer_mode"]


@pytest.mark.parametrize("mode", ["", "auto", "relay"])
def test_relay_and_auto_reach_the_backend_as_relay(server: ProviderHarness, mode: str) -> None:
    made = server.stub.Create(pb.CreateRequest(name=f"m-{mode or 'none'}"))
    server.wait(made.task)
    url = f"pvc://{CLAIM}/{mode or 'none'}.raw"
    resp = server.stub.ExportDisk(pb.ExportDiskRequest(vm_id=made.id, destination_url=url, format="raw", transfer_mode=mode))
    server.wait(resp.task)
    assert resp.export_id


def test_every_documented_storage_option_is_accepted_in_three_spellings() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs/spec/json-payloads.md").read_text()
    section = text[text.index("## Storage options") :]
    keys = [k for k in re.findall(r"^\| (\w+) \|", section, flags=re.M) if k != "key"]
    assert len(keys) == 11
    probe = {"bool": True, "int?": 7, "str": ""}
    types = dict(re.findall(r"^\| (\w+) \| ([\w?]+) \|", section, flags=re.M))
    for key in keys:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        pascal = key.upper() if key in ("uid", "gid") else key[0].upper() + key[1:]  # the Go field names UID, GID
        for name in {key, pascal, snake}:
            options = StorageOptions.model_validate_json(json.dumps({name: probe[types[key]]}))
            assert getattr(options, snake) == probe[types[key]], name


def test_upstream_secrets_stay_out_of_the_logs(s3_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # The provider's log set-up holds botocore at INFO; the scrubber must hold
    # when someone lets its DEBUG lines through all the same.
    caplog.set_level(logging.DEBUG, logger="botocore")
    options = json.dumps({"endpoint": s3_url, "usePathStyle": True})
    spec = _export(f"s3://{BUCKET}/logged.bin", storage_options_json=options, credentials=UPSTREAM_KEYS)
    transfer.upload(io.BytesIO(b"bytes"), spec)
    assert "Credential=***" in caplog.text, "botocore logged its signed headers, the key id scrubbed"
    assert UPSTREAM_KEYS["accessKeyID"] not in caplog.text
    assert UPSTREAM_KEYS["secretAccessKey"] not in caplog.text
    with pytest.raises(errors.ProviderError) as info:
        transfer.upload(
            io.BytesIO(b"x"), _export("s3://no-such-bucket/k", storage_options_json=options, credentials=UPSTREAM_KEYS)
        )
    assert UPSTREAM_KEYS["secretAccessKey"] not in str(info.value)
