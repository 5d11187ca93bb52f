"""The URL policy (provider_core.urls): schemes, refused address kinds,
names and redirects that lead to them, and what operators may allow."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest

from provider_core import errors, transfer, urls
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.3.4.5", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("fe80::1%eth0", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.122.10", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "private"),  # shared address space (carrier-grade NAT)
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "reserved"),
        ("8.8.8.8", "public"),
        ("2606:4700:4700::1111", "public"),
    ],
)
def test_address_kinds(address: str, kind: str) -> None:
    assert urls.kind(address) == kind


@pytest.mark.parametrize(
    ("url", "allowed", "problem"),
    [
        ("http://169.254.169.254/latest/meta-data/", [], "link-local address"),
        ("http://127.0.0.1:22/", [], "loopback address"),
        ("http://[::1]/x", [], "loopback address"),
        ("http://localhost/x", [], "loopback address"),
        ("http://[::ffff:7f00:1]/x", [], "loopback address"),
        ("https://10.0.0.5/x", ["loopback"], "private address"),
        ("http://0.0.0.0:8080/", [], "unspecified address"),
        # other spellings of loopback that resolvers accept
        ("http://2130706433/", [], "loopback address"),
        ("http://0x7f.1/", [], "loopback address"),
        ("http://0177.0.0.1/", [], "loopback address"),
        ("http://127.1/", [], "loopback address"),
        ("http://localhost./", [], "loopback address"),
        ("http://[2002:7f00:1::]/", [], "loopback address"),  # 6to4 of 127.0.0.1
        ("ftp://8.8.8.8/x", ["loopback", "private", "link-local"], "scheme"),
        ("http:///x", [], "no host"),
        ("http://8.8.8.8:99999/", [], "not a valid URL"),
    ],
)
def test_refused_urls(url: str, allowed: list[str], problem: str) -> None:
    urls.allow(allowed)
    with pytest.raises(ValueError, match=problem):
        urls.check_url(url)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cloud-images.example/noble.img", []),
        ("http://8.8.8.8/x", []),
        ("http://127.0.0.1:8080/x", ["loopback"]),
        ("http://0.0.0.0:8080/x", ["loopback"]),
        ("http://169.254.169.254/x", ["link-local"]),
        ("s3://bucket/key", []),
        ("http://192.168.1.10/x", ["private"]),
    ],
)
def test_allowed_urls(url: str, allowed: list[str]) -> None:
    urls.allow(allowed)
    assert urls.check_url(url) == url


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown address kind"):
        urls.allow(["intranet"])


def test_a_name_that_resolves_to_a_refused_address_is_refused() -> None:
    """The machine's own name resolves to a loopback address through
    /etc/hosts on Debian; nothing in the URL says "loopback"."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    if urls.kind(address) != "loopback":
        pytest.skip(f"this machine's name {name!r} resolves to {address}, not a loopback address")
    urls.allow([])
    assert urls.check_url(f"http://{name}:1/x")  # the name alone says nothing
    with pytest.raises(ValueError, match="loopback address"):
        urls.check_host(name, 1)
    with pytest.raises(errors.InvalidArgument, match="loopback address"):
        transfer.download(f"http://{name}:1/x", _Discard())


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


@pytest.fixture
def redirector() -> Iterator[Callable[[str], str]]:
    """An HTTP server on 127.0.0.1 that redirects every GET to a target."""
    target: dict[str, str] = {}

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target["url"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def to(url: str) -> str:
        target["url"] = url
        return f"http://127.0.0.1:{server.server_address[1]}/image.qcow2?X-Signature=s3cr3t"

    yield to
    server.shutdown()
    server.server_close()


def test_a_redirect_to_a_refused_address_is_not_followed(redirector: Callable[[str], str]) -> None:
    """Loopback is allowed (the redirecting server), link-local is not: the
    redirect to the metadata service is refused before any connection."""
    url = redirector("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    with pytest.raises(errors.InvalidArgument) as info:
        transfer.download(url, _Discard())
    assert "redirect to http://169.254.169.254/latest/meta-data/" in str(info.value)
    assert "link-local address" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_a_redirect_to_another_scheme_is_refused(redirector: Callable[[str], str]) -> None:
    with pytest.raises(errors.InvalidArgument, match="not an http"):
        transfer.download(redirector("file:///etc/passwd"), _Discard())


def test_requests_are_held_to_the_policy(harness: Callable[..., ProviderHarness]) -> None:
    """Through a server that allows nothing but public addresses: image
    URLs and export destinations are refused naming the field, before any
    backend call."""
    h = harness("memory-plus", allow_addresses=[])
    assert urls.allowed() == frozenset()
    before = sum(h.backend.calls.values())  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        h.stub.Create(pb.CreateRequest(name="vm", image_json='{"URL": "http://169.254.169.254/latest/user-data"}'))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("image_json.URL: ")
    assert "link-local address" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        h.stub.ExportDisk(pb.ExportDiskRequest(vm_id="vm", destination_url="http://127.0.0.1:22/x?sig=s3cr3t", format="qcow2"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("destination_url: ")
    assert "s3cr3t" not in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        h.stub.ImportDisk(
            pb.ImportDiskRequest(
                source_url="s3://bucket/disk.qcow2", target_name="d", credentials={"endpoint_url": "http://10.0.0.9:9000"}
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("credentials: endpoint_url ")
    assert "private address" in info.value.details()
    assert sum(h.backend.calls.values()) == before  # type: ignore[attr-defined]
