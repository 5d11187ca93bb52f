"""http and https: streamed PUT and GET with requests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

import requests

from ..errors import FailedPrecondition, InvalidArgument, ProviderError, Unavailable
from ..urls import redact
from ._common import CHUNK, Hasher, TransferSettings, http_error, reason
from ._urls import check_keys, reach

#: requests' exceptions, most specific first.
REQUESTS_ERRORS: list[tuple[type[Exception], type[ProviderError], str]] = [
    (requests.exceptions.SSLError, FailedPrecondition, "TLS handshake failed (is the server's CA in tls_ca_file?)"),
    (requests.exceptions.Timeout, Unavailable, "timed out"),
    (requests.exceptions.ConnectionError, Unavailable, "connection failed"),
    (requests.exceptions.ChunkedEncodingError, Unavailable, "connection broke during the transfer"),
    (requests.exceptions.ContentDecodingError, Unavailable, "response could not be decoded"),
    (requests.exceptions.InvalidURL, InvalidArgument, "invalid URL"),
    (requests.exceptions.InvalidHeader, InvalidArgument, "a credential cannot be sent as an HTTP header"),
    (requests.exceptions.RequestException, Unavailable, "request failed"),
]


def _error(exc: requests.exceptions.RequestException, what: str) -> ProviderError:
    for native, cls, text in REQUESTS_ERRORS:
        if isinstance(exc, native):
            return cls(f"{what}: {text} ({reason(exc)})")
    raise AssertionError("RequestException is the last row")  # pragma: no cover


class _SizedBody:
    """An upload body of known length: requests sends Content-Length."""

    def __init__(self, hasher: Hasher, size: int) -> None:
        self.hasher, self.size = hasher, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.hasher)


class _Session(requests.Session):
    """A session that follows a redirect only to where the URL policy allows."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target:
            parts = urlsplit(urljoin(resp.url, target))
            what = f"redirect to {redact(parts.geturl())}"
            if parts.scheme not in ("http", "https"):
                raise InvalidArgument(f"{what}: not an http(s) URL")
            reach(parts.hostname or "", parts.port, what)
        return target


def _session(parts: SplitResult, credentials: Mapping[str, str]) -> tuple[requests.Session, str]:
    """A session with the credentials set, and the URL without userinfo."""
    check_keys(credentials, parts.scheme)
    token = credentials.get("token") or credentials.get("bearer_token")
    user = credentials.get("username") or unquote(parts.username or "")
    password = credentials.get("password") or unquote(parts.password or "")
    if token and (credentials.get("username") or credentials.get("password")):
        raise InvalidArgument.field("credentials", "give token or username/password, not both")
    session = _Session()
    session.headers["Accept-Encoding"] = "identity"
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user or password:
        session.auth = (user, password)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return session, urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _options(settings: TransferSettings) -> dict[str, Any]:
    """Per-request options (``verify`` given here beats REQUESTS_CA_BUNDLE,
    which requests lets override a session's ``verify``)."""
    return {
        "verify": str(settings.ca_file) if settings.ca_file else True,
        "timeout": (settings.connect_timeout, settings.read_timeout),
    }


def upload(
    hasher: Hasher, parts: SplitResult, what: str, credentials: Mapping[str, str], *, settings: TransferSettings, size: int | None
) -> None:
    session, url = _session(parts, credentials)
    reach(parts.hostname or "", parts.port, what)
    body: Any = b"" if size == 0 else (_SizedBody(hasher, size) if size is not None else iter(hasher))
    with session:
        try:
            resp = session.put(url, data=body, allow_redirects=False, **_options(settings))
        except requests.exceptions.RequestException as exc:
            raise _error(exc, what) from None  # its text carries the URL
        with resp:
            if not 200 <= resp.status_code < 300:
                raise http_error(resp.status_code, what)
    if size is not None and hasher.size != size:
        raise Unavailable(f"{what}: the source ended after {hasher.size} of {size} bytes")


def download(parts: SplitResult, what: str, credentials: Mapping[str, str], settings: TransferSettings) -> Iterator[bytes]:
    session, url = _session(parts, credentials)
    reach(parts.hostname or "", parts.port, what)
    with session:
        try:
            resp = session.get(url, stream=True, **_options(settings))
            with resp:
                if resp.status_code != 200:
                    raise http_error(resp.status_code, what)
                yield from resp.iter_content(CHUNK)
        except requests.exceptions.RequestException as exc:
            raise _error(exc, what) from None  # its text carries the URL
