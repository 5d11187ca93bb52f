"""URLs, credential keys, and keeping their secrets out of logs."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from .. import urls
from ..errors import InvalidArgument, Unavailable
from ._common import SCHEMES

_PUBLIC_KEYS = frozenset({"username", "endpoint_url", "region", "region_name"})


def parse(url: str, url_field: str) -> SplitResult:
    """Split a URL the URL policy accepts (:func:`provider_core.urls.check_url`:
    scheme, host, address); InvalidArgument on ``url_field`` otherwise."""
    try:
        urls.check_url(url, SCHEMES)
    except ValueError as exc:
        raise InvalidArgument.field(url_field, str(exc)) from None
    parts = urlsplit(url)
    if parts.scheme == "s3" and not parts.path.lstrip("/"):
        raise InvalidArgument.field(url_field, "s3 URL names no object key (s3://bucket/key)")
    return parts


def reach(host: str, port: int | None, what: str) -> str:
    """Just before connecting: every address ``host`` resolves to must be
    one the URL policy allows (InvalidArgument), and it must resolve
    (Unavailable). Returns the first of them."""
    try:
        return urls.check_host(host, port)[0]
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    except OSError:
        raise Unavailable(f"{what}: host {host!r} does not resolve") from None


def check_keys(credentials: Mapping[str, str], scheme: str) -> None:
    """Refuse credential keys the scheme does not use (naming keys, never values)."""
    problem = urls.credential_problem(credentials, scheme)
    if problem:
        raise InvalidArgument.field("credentials", problem)


def secrets(parts: SplitResult, credentials: Mapping[str, str]) -> list[str]:
    """Everything of a transfer that must not be logged."""
    values = [v for k, v in credentials.items() if k not in _PUBLIC_KEYS]
    if parts.password:
        values += [parts.password, unquote(parts.password)]
    if parts.query:
        values.append(parts.query)
        values += [v for _, v in parse_qsl(parts.query, keep_blank_values=True)]
    return [v for v in values if len(v) >= 4]


class Scrubber(logging.Filter):
    """Replaces the secrets of running transfers in log records of the HTTP
    and AWS libraries (urllib3 logs request lines with their query string,
    botocore logs headers at DEBUG level)."""

    PREFIXES = ("urllib3", "requests", "botocore", "boto3", "s3transfer")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: Counter[str] = Counter()

    def install(self) -> None:
        """Attach to every logger of those libraries created so far (a
        logger's filter applies to the records it emits itself)."""
        for name in list(logging.Logger.manager.loggerDict):
            if name.split(".")[0] in self.PREFIXES:
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)

    @contextmanager
    def hiding(self, values: list[str]) -> Iterator[None]:
        self.install()
        with self._lock:
            self._secrets.update(values)
        try:
            yield
        finally:
            with self._lock:
                self._secrets.subtract(values)
                self._secrets = +self._secrets

    def _scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        with self._lock:
            message = record.getMessage()
            clean = self._scrub(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self._scrub(record.exc_text)
        return True


scrubber = Scrubber()
