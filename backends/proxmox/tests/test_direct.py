"""ExportDisk and ImportDisk in transfer mode ``direct``: the node's curl
moves the bytes to and from S3 (moto, on 127.0.0.1) and HTTP servers
itself, through URLs the provider presigns and pins.

Real: sshd playing the node (pvenode), curl, dd, qemu-img, sha256sum, the
S3 and HTTP servers. ``curl`` on the node's PATH is a wrapper that records
how it was called (its arguments and its parent's command line, what
``ps`` shows) before it runs the real one; told to, it fails like a node
that cannot connect, to break an upload midway.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from pvenode import PveNode
from test_datapath import BUCKET, export, fails, import_, make_disk, same_content, sha256
from vm_provider_proxmox import direct
from vm_provider_proxmox.settings import ProxmoxSettings
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.sshd import skip_without_sshd

from provider_core.conformance.servers import HttpSink, S3Server
from provider_core.pb import provider_pb2 as pb
from provider_core.transfer import Pinned

WRAPPER = """#!/bin/sh
# curl, recording how it is called; exits 7 once the count in %(fail)s is used up;
# a call that goes on first sleeps the seconds in %(slow)s
{ printf 'argv:'; printf ' %%s' "$@"; printf '\\nparent: '; tr '\\000' ' ' < /proc/$PPID/cmdline; printf '\\n'; } >> %(log)s
if [ -e %(fail)s ]; then
    exec 9< %(fail)s
    flock 9  # parts are sent side by side: count one at a time
    n=$(cat %(fail)s)
    if [ "$n" -le 0 ]; then echo "curl: (7) Failed to connect to the object store" >&2; exit 7; fi
    echo $((n - 1)) > %(fail)s
    exec 9<&-
fi
if [ -e %(slow)s ]; then sleep "$(cat %(slow)s)"; fi
exec %(curl)s "$@"
"""


class Node(PveNode):
    @property
    def calls(self) -> str:
        log = self.tmp.parent / "curl.log"
        return log.read_text() if log.exists() else ""

    def fail_after(self, calls: int) -> None:
        (self.tmp.parent / "curl.fail").write_text(f"{calls}\n")

    def slow(self, seconds: float) -> None:
        (self.tmp.parent / "curl.slow").write_text(f"{seconds}\n")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    skip_without_sshd()
    real = shutil.which("curl")
    if real is None:
        skip_missing("curl (testbed/install.sh installs it)")
    n = Node(tmp_path / "node")
    curl = n.bin / "curl"
    files = {name: n.tmp.parent / f"curl.{name}" for name in ("log", "fail", "slow")}
    curl.write_text(WRAPPER % {**files, "curl": real})
    curl.chmod(0o755)
    with n.running():
        yield n


@pytest.fixture
def dp(provider: Any, settings: dict[str, Any], node: Node, tmp_path: Path) -> Any:
    (tmp_path / "claims/mig").mkdir(parents=True)
    return provider({**settings, **node.settings(), "direct_transfers": True}, pvc_root=tmp_path / "claims")


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server(BUCKET) as server:
        yield server


def creds(s3: S3Server) -> dict[str, str]:
    return {"access_key_id": "AKIADIRECT", "secret_access_key": "direct-s3-secret", "endpoint_url": s3.url, "region": "us-east-1"}


def no_secrets_on_the_node(node: Node, sshd_log: str = "") -> None:
    """The node ran curl (so there is something to check), and no command
    line there held a presigned URL's signature or a credential."""
    seen = node.calls + sshd_log
    assert "argv: -q -K" in node.calls
    for secret in ("Signature", "X-Amz-Credential", "AKIADIRECT", "direct-s3-secret", "token=", "http://"):
        assert secret not in seen


def test_validate_finds_curl_on_the_nodes(provider: Any, settings: dict[str, Any], node: Node) -> None:
    configured = {**settings, **node.settings(), "direct_transfers": True}
    report = provider(configured).stub.Validate(pb.ValidateRequest(), timeout=60)
    assert report.ok, report.message
    assert "SSH data path (pvesm, qemu-img, curl) on: pve1, pve2" in report.message
    (node.bin / "pvesm").unlink()
    report = provider(configured).stub.Validate(pb.ValidateRequest(), timeout=60)
    assert not report.ok
    assert "node pve1 lacks pvesm" in report.message


def test_direct_is_offered_only_when_configured(provider: Any, settings: dict[str, Any], node: Node) -> None:
    caps = provider({**settings, **node.settings()}).stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert list(caps.supported_transfer_modes) == ["relay"]
    caps = provider({**settings, "direct_transfers": True}).stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert list(caps.supported_transfer_modes) == []  # no SSH data path: no export, no import
    configured = {**settings, **node.settings(), "direct_transfers": True}
    caps = provider(configured).stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert list(caps.supported_transfer_modes) == ["relay", "direct"]


def test_export_to_s3_and_import_back_directly(
    dp: Any, pve: Any, node: Node, s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 64 MiB raw image goes up in 8 parts of 8 MiB from the node; the
    relay path's export of the same disk has the same checksum."""
    caplog.set_level("DEBUG")
    disk = make_disk(node, pve)
    relayed = export(dp, f"s3://{BUCKET}/relayed.raw", "raw", credentials=creds(s3), transfer_mode="relay")
    assert node.calls == ""
    resp = export(dp, f"s3://{BUCKET}/vm/disk.raw", "raw", credentials=creds(s3), transfer_mode="direct")
    assert node.calls.count("argv:") == 8
    received = tmp_path / "received.raw"
    s3.client().download_file(BUCKET, "vm/disk.raw", str(received))
    assert resp.checksum == relayed.checksum == sha256(received)
    assert resp.estimated_size_bytes == received.stat().st_size == 64 << 20
    assert same_content(disk, received)
    assert list(node.tmp.iterdir()) == []
    assert s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []

    back = import_(
        dp,
        f"s3://{BUCKET}/vm/disk.raw",
        "back",
        "raw",
        credentials=creds(s3),
        transfer_mode="direct",
        verify_checksum=True,
        expected_checksum=resp.checksum,
    )
    assert back.checksum == resp.checksum
    assert back.actual_size_bytes == 64 << 20
    assert sha256(node.path(back.disk_id)) == resp.checksum
    assert sorted(p.name for p in node.path(back.disk_id).parent.iterdir()) == ["back.raw"]
    no_secrets_on_the_node(node, node.sshd.log.read_text())
    ours = [r.getMessage() for r in caplog.records if r.name.split(".")[0] not in ("werkzeug", "moto")]  # not the S3 server's
    assert [m for m in ours if "sent 67108864 bytes directly" in m]
    assert not [m for m in ours if "X-Amz-Signature" in m or "direct-s3-secret" in m]


def test_export_to_an_http_put_url_and_import_from_it(dp: Any, pve: Any, node: Node, tmp_path: Path) -> None:
    disk = make_disk(node, pve)
    with HttpSink(tmp_path / "web") as sink:
        url = sink.url("up/disk.qcow2") + "?X-Amz-Signature=client-presigned"
        resp = export(dp, url, compress=True, transfer_mode="direct")
        put = tmp_path / "web/up/disk.qcow2"
        assert resp.checksum == sha256(put)
        assert same_content(disk, put)
        assert [r.method for r in sink.requests] == ["PUT"]
        got = import_(dp, url, "web", transfer_mode="direct", verify_checksum=True, expected_checksum=resp.checksum)
    assert got.checksum == resp.checksum
    assert same_content(disk, node.path(got.disk_id))
    no_secrets_on_the_node(node)
    assert "client-presigned" not in node.calls


def test_a_failure_midway_aborts_the_multipart_upload(dp: Any, pve: Any, node: Node, s3: S3Server) -> None:
    make_disk(node, pve)
    node.fail_after(3)
    code, message = fails(lambda: export(dp, f"s3://{BUCKET}/broken.raw", "raw", credentials=creds(s3), transfer_mode="direct"))
    assert code is grpc.StatusCode.UNAVAILABLE, message
    assert f"upload to s3://{BUCKET}/broken.raw from node pve1" in message
    assert "could not connect" in message
    assert "Failed to connect to the object store" in message
    assert node.calls.count("argv:") >= 4  # some parts went up before
    client = s3.client()
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []  # aborted: no parts stay
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix="broken")
    assert list(node.tmp.iterdir()) == []


def test_no_part_starts_after_one_failed(dp: Any, pve: Any, node: Node, s3: S3Server) -> None:
    """Of the first four parts, one goes on slowly and three fail at once:
    the other four parts are never sent (their bytes would be thrown away
    with the upload), and the upload is aborted once the slow one ended."""
    make_disk(node, pve)
    node.fail_after(1)
    node.slow(2)
    code, message = fails(lambda: export(dp, f"s3://{BUCKET}/broken.raw", "raw", credentials=creds(s3), transfer_mode="direct"))
    assert code is grpc.StatusCode.UNAVAILABLE, message
    assert node.calls.count("argv:") == direct.CONCURRENCY
    assert s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert list(node.tmp.iterdir()) == []


def test_an_import_that_fails_leaves_nothing(dp: Any, pve: Any, node: Node, s3: S3Server, tmp_path: Path) -> None:
    image = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    s3.client().upload_file(str(image), BUCKET, "golden.qcow2")
    url = f"s3://{BUCKET}/golden.qcow2"
    wrong = {"verify_checksum": True, "expected_checksum": "ab" * 32}
    code, message = fails(lambda: import_(dp, url, "g", credentials=creds(s3), transfer_mode="direct", **wrong))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, message
    assert "expected_checksum" in message
    assert hashlib.sha256(image.read_bytes()).hexdigest() in message
    code, message = fails(lambda: import_(dp, f"s3://{BUCKET}/none.qcow2", "g", credentials=creds(s3), transfer_mode="direct"))
    assert code is grpc.StatusCode.NOT_FOUND, message
    with HttpSink(tmp_path / "web") as sink:
        code, message = fails(lambda: import_(dp, sink.url("gone.qcow2") + "?sig=s3cr3t", "g", transfer_mode="direct"))
    assert code is grpc.StatusCode.NOT_FOUND, message
    assert "gone.qcow2?<redacted>" in message
    assert "s3cr3t" not in message
    imports = node.root / "cloud/import"
    assert not imports.exists() or list(imports.iterdir()) == []


def test_direct_refused_where_the_node_cannot_serve_it(
    provider: Any, settings: dict[str, Any], dp: Any, pve: Any, node: Node
) -> None:
    make_disk(node, pve)
    for backend in ("pvc",):
        code, message = fails(lambda b=backend: export(dp, f"{b}://mig/x.qcow2", backend_type=b, transfer_mode="direct"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "transfer_mode" in message
        assert f"direct is not possible with {backend}" in message
        code, message = fails(lambda b=backend: import_(dp, f"{b}://mig/x.qcow2", "x", backend_type=b, transfer_mode="direct"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "transfer_mode" in message
    code, message = fails(
        lambda: export(dp, "http://127.0.0.1:9/x.qcow2", credentials={"token": "t0ken"}, transfer_mode="direct")
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "would hand the URL's credentials to the node" in message
    code, message = fails(lambda: export(dp, "http://user:pw@127.0.0.1:9/x.qcow2", transfer_mode="direct"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "would hand the URL's credentials to the node" in message
    relay_only = provider({**settings, **node.settings()})
    code, message = fails(lambda: export(relay_only, "http://127.0.0.1:9/x.qcow2", transfer_mode="direct"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "transfer_mode" in message
    assert "offered: relay" in message
    assert node.calls == ""
    assert node.sshd.logins() == 0


def test_curl_is_pinned_and_told_no_more(settings: dict[str, Any]) -> None:
    """The config the node's curl reads: the URL (quoted in curl's syntax),
    only the checked address, no redirects (no ``location``), http(s) only,
    no proxy, the limits."""
    url = 'https://s3.example.com/b/k?X-Amz-Signature=ab"c\\d'
    pinned = Pinned(url, "s3.example.com", 443, "2001:db8::5")
    got = direct._config(pinned, ProxmoxSettings(**{**settings, "task_timeout_seconds": 600})).decode()
    lines = got.splitlines()
    assert lines[:5] == [
        'url = "https://s3.example.com/b/k?X-Amz-Signature=ab\\"c\\\\d"',
        'connect-to = "::[2001:db8::5]:443"',
        'proto = "=http,https"',
        "globoff",
        'noproxy = "*"',
    ]
    assert "silent" not in lines  # the progress meter keeps the node's channel alive
    assert 'speed-time = "600"' in lines
    assert 'write-out = "\\nvmp-status=%{http_code}\\n"' in lines
    assert not [line for line in lines if line.startswith(("location", "proxy", "netrc", "config"))]


class Hello(BaseHTTPRequestHandler):
    """Answers every GET with a short body."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: Any) -> None:
        pass


class Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("vmp-pin.invalid", "127.0.0.1"),
        ("VMP-Pin.invalid.", "127.0.0.1"),
        ("vmp-pïn.invalid", "127.0.0.1"),
        ("vmp-pin.invalid", "::1"),
        ("[::1]", "::1"),  # an address in brackets, not a pattern
    ],
)
def test_curl_connects_to_the_checked_address_whatever_the_host_looks_like(
    settings: dict[str, Any], host: str, address: str
) -> None:
    """curl reaches the address the provider checked without a lookup of
    its own (which could answer another address: DNS rebinding), also where
    curl spells the host otherwise than Python does (an IDN name curl turns
    into its xn-- form). ``.invalid`` names resolve nowhere: a lookup by
    curl fails the transfer."""
    real = shutil.which("curl")
    if real is None:
        skip_missing("curl (testbed/install.sh installs it)")
    server = (Server6 if ":" in address else ThreadingHTTPServer)((address, 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        url = f"http://{host}:{port}/x"
        pinned = Pinned(url, urlsplit(url).hostname or "", port, address)
        config = direct._config(pinned, ProxmoxSettings(**settings))
        done = subprocess.run([real, "-q", "-K", "-"], input=config, capture_output=True, timeout=60, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(b"hello")


class Recorder(BaseHTTPRequestHandler):
    """Serves 1 MiB for any path, recording the paths asked for in
    ``self.server.paths``."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.write(b"\x5a" * (1 << 20))

    def log_message(self, *args: Any) -> None:
        pass


def test_a_url_is_fetched_as_written_not_as_a_pattern(dp: Any, pve: Any, node: Node) -> None:
    """curl takes brackets and braces in a URL for a pattern of many URLs
    (globbing), each further one written to its standard output, which the
    provider would read whole: one request, for the URL as written."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/disk[1-3]{{a,b}}.raw"
        got = import_(dp, url, "globbed", "raw", transfer_mode="direct")
    finally:
        server.shutdown()
        server.server_close()
    assert server.paths == ["/disk[1-3]%7Ba,b%7D.raw"]  # type: ignore[attr-defined]  # braces quoted as relay sends them
    assert got.actual_size_bytes == 1 << 20


def test_a_url_with_a_space_is_sent_as_relay_sends_it(dp: Any, pve: Any, node: Node) -> None:
    """curl refuses a space in a URL, which requests (relay) sends as %20:
    direct sends the URL as relay does rather than fail (UNAVAILABLE, which
    a client retries) on a URL relay serves."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/my disk.raw"
        import_(dp, url, "spaced-relay", "raw", transfer_mode="relay")
        import_(dp, url, "spaced-direct", "raw", transfer_mode="direct")
    finally:
        server.shutdown()
        server.server_close()
    assert server.paths == ["/my%20disk.raw", "/my%20disk.raw"]  # type: ignore[attr-defined]


class Trickle(BaseHTTPRequestHandler):
    """Serves a raw image slowly: 64 KiB a second for 4 seconds."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(4 * 64 * 1024))
        self.end_headers()
        for _ in range(4):
            time.sleep(1)
            self.wfile.write(b"\x5a" * 64 * 1024)
            self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_long_download_keeps_the_node_channel_alive(
    provider: Any, settings: dict[str, Any], pve: Any, node: Node, tmp_path: Path
) -> None:
    """A download longer than task_timeout_seconds (the longest silence of a
    command on the node) goes on while bytes flow: curl's progress meter
    speaks every second."""
    configured = {**settings, **node.settings(), "direct_transfers": True, "task_timeout_seconds": 2}
    h = provider(configured, pvc_root=tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.raw"
        started = time.monotonic()
        got = import_(h, url, "slow", "raw", transfer_mode="direct")
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started > 4
    assert got.actual_size_bytes == 4 * 64 * 1024
    assert node.path(got.disk_id).read_bytes() == b"\x5a" * 4 * 64 * 1024


class SlowSink(BaseHTTPRequestHandler):
    """Takes a PUT's body slowly (256 KiB every quarter second) into
    ``self.server.got``."""

    def do_PUT(self) -> None:
        left = int(self.headers["Content-Length"])
        got = bytearray()
        while left:
            time.sleep(0.25)
            chunk = self.rfile.read(min(left, 256 << 10))
            got += chunk
            left -= len(chunk)
        self.server.got = bytes(got)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_long_upload_keeps_the_node_channel_alive(
    provider: Any, settings: dict[str, Any], pve: Any, node: Node, tmp_path: Path
) -> None:
    """An upload longer than task_timeout_seconds (the longest silence of a
    command on the node) goes on while bytes flow, as a long download does."""
    configured = {**settings, **node.settings(), "direct_transfers": True, "task_timeout_seconds": 2}
    h = provider(configured, pvc_root=tmp_path)
    disk = make_disk(node, pve)
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        resp = export(h, f"http://127.0.0.1:{server.server_address[1]}/slow.qcow2", transfer_mode="direct")
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started > 4
    received = tmp_path / "received.qcow2"
    received.write_bytes(server.got)  # type: ignore[attr-defined]
    assert resp.checksum == sha256(received)
    assert same_content(disk, received)


class Moved(BaseHTTPRequestHandler):
    """Sends every request elsewhere."""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_redirect_is_not_followed(dp: Any, pve: Any, node: Node) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/moved.raw"
        code, message = fails(lambda: import_(dp, url, "moved", "raw", transfer_mode="direct"))
    finally:
        server.shutdown()
        server.server_close()
    assert code is grpc.StatusCode.INVALID_ARGUMENT, message
    assert "HTTP 302" in message
    assert "redirects are not followed" in message
    imports = node.root / "cloud/import"
    assert not imports.exists() or list(imports.iterdir()) == []
