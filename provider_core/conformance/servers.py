"""The kit's file servers on 127.0.0.1, for it and for tests and benchmarks
of transfers: an HTTP(S) sink, and moto's S3 server.

    with HttpSink(tmp_path, token="s3cret") as sink:
        upload(f, sink.url("disk.qcow2"), {"token": "s3cret"})
        assert (tmp_path / "disk.qcow2").exists()

PUT streams the request body (Content-Length or chunked) into a file under
``root``; GET streams a file back. Requests can be made to fail: a bearer
token or basic credentials are checked when set, and :meth:`HttpSink.fail`
answers the next requests for a path with a given status. Bodies are drained
before an error answer, as well-behaved servers do, so the client reads the
status instead of a reset connection. ``tls=(cert, key)`` serves HTTPS.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int


class HttpSink:
    """Threaded PUT/GET file server on 127.0.0.1, port chosen by the OS."""

    def __init__(
        self,
        root: Path,
        *,
        token: str = "",
        basic: tuple[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.root = Path(root)
        self.token = token
        self.basic = basic
        self.requests: list[SeenRequest] = []
        self.delay = 0.0
        """Seconds to wait before answering each request (a slow server)."""
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-sink", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}/{path.lstrip('/')}"

    def fail(self, path: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``path`` with ``status``."""
        with self._lock:
            self._failures.setdefault("/" + path.lstrip("/"), []).extend([status] * times)

    def _next_failure(self, path: str) -> int:
        with self._lock:
            queue = self._failures.get(path)
            return queue.pop(0) if queue else 0

    def start(self) -> HttpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HttpSink:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()


def _handler(sink: HttpSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: tests read ``sink.requests`` instead."""

        # -- helpers ---------------------------------------------------------------

        def _target(self) -> tuple[str, str, Path | None]:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            file = (sink.root / path.lstrip("/")).resolve()
            inside = file.is_relative_to(sink.root.resolve()) and file != sink.root.resolve()
            return path, parts.query, file if inside else None

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            if sink.token:
                return given == f"Bearer {sink.token}"
            if sink.basic:
                want = base64.b64encode(f"{sink.basic[0]}:{sink.basic[1]}".encode()).decode()
                return given == f"Basic {want}"
            return True

        def _copy_body(self, out: BinaryIO | None) -> int:
            """Read the request body (Content-Length or chunked) into ``out``
            (or nowhere); return its size."""
            total = 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return total
                    total += self._copy(size, out)
                    self.rfile.readline()
            return self._copy(int(self.headers.get("Content-Length") or 0), out)

        def _copy(self, size: int, out: BinaryIO | None) -> int:
            left = size
            while left:
                data = self.rfile.read(min(CHUNK, left))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                if out is not None:
                    out.write(data)
                left -= len(data)
            return size

        def _answer(self, status: int, body: bytes = b"", *, record: tuple[str, str] = ("", "")) -> None:
            time.sleep(sink.delay)
            sink.requests.append(SeenRequest(self.command, record[0], record[1], dict(self.headers.items()), status))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _refused(self, path: str) -> int:
            """The status to refuse this request with, or 0."""
            if not self._authorized():
                return HTTPStatus.UNAUTHORIZED
            return sink._next_failure(path)

        # -- methods --------------------------------------------------------------

        def do_PUT(self) -> None:
            path, query, file = self._target()
            status = self._refused(path) or (0 if file else HTTPStatus.FORBIDDEN)
            if status or file is None:
                self._copy_body(None)
                self._answer(status, record=(path, query))
                return
            file.parent.mkdir(parents=True, exist_ok=True)
            part = file.with_name(f".{file.name}.upload")
            with part.open("wb") as out:
                self._copy_body(out)
            part.replace(file)
            self._answer(HTTPStatus.CREATED, record=(path, query))

        def do_GET(self) -> None:
            path, query, file = self._target()
            status = self._refused(path) or (0 if file and file.is_file() else HTTPStatus.NOT_FOUND)
            if status or file is None:
                self._answer(status, record=(path, query))
                return
            sink.requests.append(SeenRequest("GET", path, query, dict(self.headers.items()), 200))
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Length", str(file.stat().st_size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            with file.open("rb") as src:
                shutil.copyfileobj(src, self.wfile, CHUNK)

    return Handler


class S3Server:
    """A real S3-compatible server (moto's: the ``conformance`` extra, ``pip install './[conformance]'`` from a clone)
    on 127.0.0.1 with the given buckets:

        with S3Server("exports") as s3:
            upload(f, "s3://exports/disk.qcow2", {"endpoint_url": s3.url, ...})
    """

    REGION = "us-east-1"

    def __init__(self, *buckets: str) -> None:
        from moto.server import ThreadedMotoServer

        self.buckets = buckets
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def client(self) -> Any:
        """A boto3 S3 client for this server (any keys are accepted)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.REGION,
            aws_access_key_id="x",
            aws_secret_access_key="x",  # noqa: S106 - moto accepts any key
        )

    def __enter__(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        for bucket in self.buckets:
            self.client().create_bucket(Bucket=bucket)
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._server.stop()


__all__ = ["HttpSink", "S3Server", "SeenRequest"]
