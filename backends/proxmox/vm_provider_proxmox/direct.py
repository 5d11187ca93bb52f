"""The ``direct`` transfer mode of ExportDisk and ImportDisk: the node's
``curl`` moves the bytes to or from the object store (or the client's
http(s) URL) itself, and the provider handles only URLs, never disk bytes.

No credential of the client's reaches the node. For S3 the provider keeps
them and works through :mod:`provider_core.transfer`: it creates the
multipart upload, signs one short-lived URL per part just before the node
sends it, and completes the upload, or aborts it on any failure, so that no
object and no parts stay; an import gets a presigned GetObject URL. An
http(s) URL is the client's own (presigned by the client, say): direct
refuses one that needs the request's credentials (or carries user-info),
which would have to be handed over.

What the node runs, and what it never sees:

- Each URL reaches curl as its config on standard input (``curl -q -K``),
  never on a command line (``ps`` on the node, the SSH server's logs), and
  errors name it redacted.
- The provider resolves the URL's host and holds every address to its URL
  policy (:func:`provider_core.transfer.pin`); curl connects to that address
  only (``--connect-to ::<address>:<port>``, for whatever host: curl looks
  no name up), follows no redirect (one is an error naming its HTTP
  status), requests the URL as written (quoted as relay sends it; no
  globbing of ``[]`` and ``{}`` into many URLs), speaks http and https
  only, and ignores proxies and ``~/.curlrc``. It gives up after
  ``request_timeout`` seconds connecting and when slower than 1 byte/s for
  ``task_timeout_seconds``; TLS is verified against the node's own CA
  certificates.
- curl's progress meter (once a second) keeps each command's SSH channel
  from falling silent for ``task_timeout_seconds`` while a long upload or
  download goes on.
- Export: the image ``qemu-img convert`` wrote into ``node_tmp_dir`` (as for
  relay) is hashed there (``sha256sum``), then each part is cut from it by
  ``dd`` and piped into curl with its Content-Length, a few parts at a time;
  curl reports each part's ETag, which the provider completes the upload
  with. An http(s) destination gets the whole file in one PUT.
- Import: curl writes into the hidden ``.part`` file, which is then hashed
  (checked against ``expected_checksum`` when given) and verified like a
  relayed one before it is renamed into place.

The node needs curl and a route to the object store; ``direct_transfers``
says the operator made sure of both (a provider cannot know the nodes'
network). pvc and nfs staging directories are mounted into the provider,
which no node reaches: direct to or from them is refused
(``transfer_mode``).
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from urllib.parse import urlsplit

from provider_core import ExportSpec, ImportSpec, InvalidArgument, Unavailable, transfer
from provider_core.transfer import DownloadResult, Pinned, UploadResult

from .errors import from_curl
from .node import Session
from .settings import ProxmoxSettings

log = logging.getLogger(__name__)

#: Parts sent at once (each its own curl on the node).
CONCURRENCY = 4
#: PUT bytes ``$2`` to ``$2 + $3`` of file ``$1``: dd cuts them, curl reads
#: its config (the URL) on fd 3, the command's standard input.
PUT_RANGE = (
    '{ dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none'
    ' | curl -q -K /dev/fd/3 2>&1; echo "vmp-exit=$?"; } 3<&0'
)
#: GET into file ``$1``, the config on standard input.
GET_FILE = 'curl -q -K - -o "$1" 2>&1; echo "vmp-exit=$?"'
_STATUS = re.compile(r"^vmp-status=(\d+)$", re.MULTILINE)
_EXIT = re.compile(r"^vmp-exit=(\d+)$", re.MULTILINE)
_QUERY = re.compile(r"\?\S*")
#: What curl writes once done (``--write-out``), each on a line of its own;
#: the progress meter's updates end no line, and header lines could follow
#: one on the same line, so the ETag comes this way too (curl 7.84 or later).
WRITE_OUT = "\nvmp-status=%{http_code}\n"
WRITE_ETAG = WRITE_OUT + "vmp-etag=%header{etag}\n"
_ETAG = re.compile(r"^vmp-etag=(\S+)$", re.MULTILINE)


def check(spec: ExportSpec | ImportSpec) -> None:
    """Refuse, before any work, a ``direct`` request the node cannot serve
    without the provider's mounts or the client's credentials."""
    if spec.transfer_mode != "direct":
        return
    url = spec.destination_url if isinstance(spec, ExportSpec) else spec.source_url
    if spec.backend_type in ("pvc", "nfs"):
        raise InvalidArgument.field(
            "transfer_mode",
            f"direct is not possible with {spec.backend_type}: the staging directory is mounted into the provider, "
            "not on the node; use relay (or auto)",
        )
    if spec.backend_type == "" and (spec.credentials or urlsplit(url).username is not None):
        raise InvalidArgument.field(
            "transfer_mode",
            "direct would hand the URL's credentials to the node; give a presigned URL without credentials, or use relay",
        )


def upload(node: Session, path: str, size: int, spec: ExportSpec, settings: ProxmoxSettings) -> UploadResult:
    """Send the file ``path`` of ``size`` bytes on the node to the request's
    destination from the node; its size and SHA256."""
    sha256 = node.sha256(path)
    if spec.backend_type == "s3":
        with transfer.presigned_upload(spec, size) as plan:
            etags = _parts(node, path, plan, settings, f"{plan.what} from {node.where}")
            plan.complete(etags)
    else:
        target = transfer.pin(spec.destination_url)
        what = f"upload to {target.shown} from {node.where}"
        _put(node, target, path, transfer.Part(1, 0, size), settings=settings, what=what)
    log.info("%s sent %d bytes directly", node.where, size)
    return UploadResult(size, sha256)


def _parts(node: Session, path: str, plan: transfer.PresignedUpload, settings: ProxmoxSettings, what: str) -> dict[int, str]:
    def send(part: transfer.Part) -> str:
        return _put(node, plan.url(part), path, part, settings=settings, what=f"{what} (part {part.number})")

    todo = iter(plan.parts)
    etags: dict[int, str] = {}
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="pve-part") as pool:
        running: dict[Future[str], int] = {pool.submit(send, p): p.number for p in islice(todo, CONCURRENCY)}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:  # a failure raises here: no part starts after it, those running end
                etags[running.pop(future)] = future.result()
            running.update({pool.submit(send, p): p.number for p in islice(todo, len(done))})
    return etags


def _put(node: Session, target: Pinned, path: str, part: transfer.Part, *, settings: ProxmoxSettings, what: str) -> str:
    """PUT ``part`` of the file ``path``; the answer's ETag."""
    upload: dict[str, str | list[str]] = {
        "upload-file": "-",
        "header": [f"Content-Length: {part.length}", "Transfer-Encoding:", "Expect:"],
        "output": "/dev/null",
        "write-out": WRITE_ETAG,
    }
    argv = ["sh", "-c", PUT_RANGE, "sh", path, str(part.offset), str(part.length)]
    out = _curl(node, argv, _config(target, settings, upload), what)
    found = _ETAG.findall(out)
    return found[-1] if found else ""


def fetch(node: Session, spec: ImportSpec, part: str, expected: str, settings: ProxmoxSettings) -> DownloadResult:
    """Fetch the request's source into ``part`` on the node, from the node;
    its size and SHA256, which must be ``expected`` when given
    (InvalidArgument naming expected_checksum). The caller removes ``part``
    on failure."""
    if spec.backend_type == "s3":
        source = transfer.presigned_download(spec)
    else:
        source = transfer.pin(spec.source_url, url_field="source_url")
    what = f"download from {transfer.redact(spec.source_url)} to {node.where}"
    _curl(node, ["sh", "-c", GET_FILE, "sh", part], _config(source, settings), what)
    size = node.size(part)
    sha256 = node.sha256(part)
    if expected and sha256 != expected:
        raise InvalidArgument.field(
            "expected_checksum",
            f"sha256 of the {size} bytes from {transfer.redact(spec.source_url)} is {sha256}, not the expected {expected}",
        )
    log.info("%s fetched %d bytes directly", node.where, size)
    return DownloadResult(size, sha256, sha256)


def _config(target: Pinned, settings: ProxmoxSettings, extra: dict[str, str | list[str]] | None = None) -> bytes:
    """curl's config (``-K``): the URL, pinned, the limits, and ``extra``;
    with the progress meter (once a second), which keeps the command's SSH
    channel from falling silent for ``task_timeout_seconds``."""
    address = f"[{target.address}]" if ":" in target.address else target.address
    options: dict[str, str | list[str] | None] = {
        "url": target.url,
        # every host and port (the empty first two fields) to the checked
        # address: curl looks no name up, however it spells the host
        # (``--resolve`` would miss an IDN name, which curl turns into xn--)
        "connect-to": f"::{address}:{target.port}",
        "proto": "=http,https",
        "globoff": None,  # [] and {} are the URL's own characters, not a pattern of many URLs
        "noproxy": "*",
        "show-error": None,
        "fail": None,
        "connect-timeout": f"{settings.request_timeout:g}",
        "speed-limit": "1",
        "speed-time": str(max(1, int(settings.task_timeout_seconds))),
        "write-out": WRITE_OUT,
        **(extra or {}),
    }
    lines = []
    for name, value in options.items():
        for one in value if isinstance(value, list) else [value]:
            lines.append(name if one is None else f"{name} = {_quoted(one)}")
    return ("\n".join(lines) + "\n").encode()


_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _quoted(value: str) -> str:
    """A value in curl's config syntax: double-quoted, with its escapes."""
    if "\0" in value:
        raise InvalidArgument("a URL for the node holds a NUL character")
    return '"' + value.translate(_ESCAPES) + '"'


def _curl(node: Session, argv: list[str], config: bytes, what: str) -> str:
    """Run curl on the node (``argv``: a script that reports its exit status);
    its output (headers, status), or the core's error for its failure."""
    out = node.run(argv, stdin=config)
    found = _EXIT.findall(out)
    if not found:
        raise Unavailable(f"{what}: the node reported no result")
    status = int(found[-1])
    http = _STATUS.findall(out)
    code = int(http[-1]) if http else 0
    if status != 0:
        said = [line for line in out.splitlines() if line.startswith("curl: (")]
        detail = _QUERY.sub("?<redacted>", said[-1])[:300] if said else ""
        raise from_curl(status, code, what, detail)
    if not 200 <= code < 300:  # a redirect: curl does not follow it
        raise transfer.http_error(code, f"{what} (redirects are not followed)")
    return out
