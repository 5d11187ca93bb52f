"""The HTTPS client: proxmoxer, login, retries, and nothing else.

Every request of the backend goes through :meth:`PveClient.call`, which

- logs in with an API token, or with a user and password (ticket + CSRF);
  in password mode a 401 (ticket expired or revoked) or a failed ticket
  renewal makes it log in again once and repeat the request, so a
  long-running provider outlives Proxmox's two-hour tickets;
- verifies TLS by default (system CAs, or ``ca_file``); ``verify_tls =
  false`` is the explicit insecure switch;
- retries a request that hit a VM lock ("VM is locked (...)", "can't lock
  file ... got timeout") with backoff while the caller's deadline allows,
  then raises :class:`~vm_provider_proxmox.errors.Locked` (ABORTED) naming
  the lock; GETs are also retried on transient failures (connection errors,
  502/503/504, the proxy's 595-599);
- translates every failure through :mod:`vm_provider_proxmox.errors`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.core import AuthenticationError

from provider_core import ProviderError, deadline

from . import errors
from .errors import Locked
from .settings import ProxmoxSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds kept back from the caller's deadline to answer before it passes.
DEADLINE_MARGIN = 1.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 3.0
#: Tries for a GET that failed transiently (the first included).
TRANSIENT_TRIES = 4


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based), with jitter."""
    base: float = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt)
    return base * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not security


class PveClient:
    """A thread-safe client of one Proxmox VE cluster."""

    def __init__(self, settings: ProxmoxSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.endpoint)
        assert parts.hostname is not None
        self.host = parts.hostname
        self.port = parts.port or 8006
        self._api: ProxmoxAPI | None = None
        self._login_lock = threading.Lock()
        self._generation = 0

    # -- connection ----------------------------------------------------------

    @property
    def verify(self) -> bool | str:
        if self.settings.ca_file is not None:
            return str(self.settings.ca_file)
        return self.settings.verify_tls

    def _new_api(self) -> ProxmoxAPI:
        s = self.settings
        common: dict[str, Any] = {"port": self.port, "verify_ssl": self.verify, "timeout": s.request_timeout}
        if s.uses_token:
            user, name = s.token_id.split("!", 1)
            assert s.token_secret is not None
            return ProxmoxAPI(self.host, user=user, token_name=name, token_value=s.token_secret.get_secret_value(), **common)
        assert s.password is not None
        return ProxmoxAPI(self.host, user=s.username, password=s.password.get_secret_value(), **common)

    def connect(self) -> None:
        """Build the session (logging in when password auth is used)."""
        if not self.settings.verify_tls:
            log.warning("TLS verification of %s is switched off (verify_tls = false)", self.settings.endpoint)
        self._login(self._generation)

    def close(self) -> None:
        self._api = None

    def _login(self, seen_generation: int) -> ProxmoxAPI:
        """Log in again unless another thread did since ``seen_generation``."""
        with self._login_lock:
            if self._api is not None and self._generation != seen_generation:
                return self._api
            try:
                api = self._new_api()
            except (AuthenticationError, OSError) as exc:
                raise errors.translate(exc) from exc
            self._api = api
            self._generation += 1
            if not self.settings.uses_token and self._generation > 1:
                log.info("logged in to Proxmox again as %s (ticket expired or revoked)", self.settings.username)
            return api

    def _current(self) -> tuple[ProxmoxAPI, int]:
        api, gen = self._api, self._generation
        if api is None:
            api = self._login(gen)
            gen = self._generation
        return api, gen

    # -- requests ------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params)

    def post(self, path: str, **data: Any) -> Any:
        return self.call("POST", path, data)

    def put(self, path: str, **data: Any) -> Any:
        return self.call("PUT", path, data)

    def delete(self, path: str, **params: Any) -> Any:
        return self.call("DELETE", path, params)

    def call(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """One API call, with re-login, lock and transient retries."""
        clean = {k: int(v) if isinstance(v, bool) else v for k, v in (params or {}).items() if v is not None}

        def once() -> Any:
            return self._send(method, path, clean)

        return self.retry_locked(once, transient=method == "GET")

    def _send(self, method: str, path: str, params: dict[str, Any]) -> Any:
        relogged = False
        while True:
            api, gen = self._current()
            send = getattr(api(path), method.lower())
            try:
                return send(**params)
            except ResourceException as exc:
                if exc.status_code == 401 and not self.settings.uses_token and not relogged:
                    relogged = True
                    self._login(gen)
                    continue
                raise errors.translate(exc) from exc
            except AuthenticationError as exc:
                # proxmoxer renews a ticket by age; when that renewal is refused, log in anew
                if self.settings.uses_token or relogged:
                    raise errors.translate(exc) from exc
                relogged = True
                self._login(gen)
            except OSError as exc:  # requests' errors derive from OSError
                raise errors.translate(exc) from exc

    # -- retrying --------------------------------------------------------------

    def budget(self) -> float:
        """Seconds left for retries: the caller's deadline less a margin, or
        ``lock_retry_seconds`` for background work without a deadline."""
        left = deadline.remaining()
        if left is None:
            return self.settings.lock_retry_seconds
        return max(0.0, left - min(DEADLINE_MARGIN, left * 0.1))

    def retry_locked(self, fn: Callable[[], T], *, transient: bool = False) -> T:
        """Run ``fn``, retrying while it raises Locked (and, with
        ``transient``, a failure that may pass) within :meth:`budget`."""
        end = time.monotonic() + self.budget()
        attempt = 0
        transient_left = TRANSIENT_TRIES - 1
        while True:
            try:
                return fn()
            except Locked as exc:
                wait = backoff(attempt)
                if time.monotonic() + wait > end:
                    raise Locked(f"gave up waiting for the lock '{exc.lock}' to be released ({exc.message})", exc.lock) from exc
                log.debug("locked (%s), retrying in %.2fs", exc.lock, wait)
            except ProviderError as exc:
                passing = errors.is_transient(exc.__cause__ or exc)
                wait = backoff(attempt)
                if not (transient and passing and transient_left > 0) or time.monotonic() + wait > end:
                    raise
                transient_left -= 1
                log.debug("transient failure (%s), retrying in %.2fs", exc, wait)
            time.sleep(wait)
            attempt += 1
