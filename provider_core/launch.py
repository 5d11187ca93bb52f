"""How the process was launched: VirtRigaud's variables, and the credentials directory.

VirtRigaud's manager runs a provider container with ``--port``,
``--health-port`` and variables of its own names. ``PROVIDER_TYPE`` (the
backend) marks that launch; only then are the others read:

=============================  ==============================================
``PROVIDER_ENDPOINT``          the backend's one endpoint setting (libvirt
                               ``uri``, Proxmox ``endpoint``)
``TLS_INSECURE_SKIP_VERIFY``   ``true``: the backend's ``verify_tls`` false
                               (the hypervisor's TLS, not ours)
``TLS_ENABLED``                ``true``: the start is refused unless the
                               server serves TLS
``LOG_LEVEL``, ``LOG_FORMAT``  ``[server] log_level``, ``log_format``
``PROVIDER_NAMESPACE``,        the Provider object's name, logged at the start
``PROVIDER_NAME``
=============================  ==============================================

They sit in the environment layer, next to the ``VM_PROVIDER_*`` variable
of the same setting; both set with different values is refused. Launched
so, some defaults change (:data:`LAUNCHED_DEFAULTS`).

A credentials directory holds one file per key (a mounted Kubernetes
Secret). Each backend's settings declare the keys they take
(``credential_keys``: key -> field). A field typed ``Path`` gets the
file's path, any other its content without the trailing newline. The
directory is a layer below the environment and plugins.toml, above the
defaults. Other files are ignored (a Secret may hold more keys), with a
debug line.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from .config import DEFAULT, PROVIDER_TYPE_ENV, VIRTRIGAUD_TLS_DIR, endpoint_fields
from .errors import ConfigError

log = logging.getLogger(__name__)

ENDPOINT_ENV = "PROVIDER_ENDPOINT"
SKIP_VERIFY_ENV = "TLS_INSECURE_SKIP_VERIFY"
TLS_ENABLED_ENV = "TLS_ENABLED"
NAMESPACE_ENV = "PROVIDER_NAMESPACE"
NAME_ENV = "PROVIDER_NAME"
#: ``[server]`` settings read from VirtRigaud's variables.
SERVER_VARIABLES = {"log_level": "LOG_LEVEL", "log_format": "LOG_FORMAT"}
#: The setting ``TLS_INSECURE_SKIP_VERIFY`` turns off, in backends that have it.
VERIFY_TLS = "verify_tls"
#: ``[server]`` defaults when launched by VirtRigaud, as its SDK's providers have them.
LAUNCHED_DEFAULTS: dict[str, Any] = {
    "listen": "[::]:9443",
    "health_port": 8080,
    "credentials_dir": Path("/etc/virtrigaud/credentials"),
    "tls_dir": VIRTRIGAUD_TLS_DIR,
    "require_tls": True,  # VIRTRIGAUD_PROVIDER_INSECURE=true lifts it, as the manager sets when TLS is off
}
LAUNCHED_ORIGIN = f"{DEFAULT} when launched by VirtRigaud ({PROVIDER_TYPE_ENV} is set)"


@dataclass(frozen=True)
class Launch:
    """VirtRigaud's variables, read from an environment."""

    environ: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Launch:
        env = os.environ if environ is None else environ
        launch = cls(env)
        if not launch.active and launch.get(ENDPOINT_ENV):
            raise ConfigError(f"{ENDPOINT_ENV} is set but {PROVIDER_TYPE_ENV} is not: name the backend in {PROVIDER_TYPE_ENV}")
        return launch

    def get(self, name: str) -> str:
        return self.environ.get(name, "").strip()

    @property
    def active(self) -> bool:
        """Launched by VirtRigaud: PROVIDER_TYPE is set."""
        return bool(self.get(PROVIDER_TYPE_ENV))

    @property
    def provider(self) -> str:
        """``NAMESPACE/NAME`` of the Provider object, if given."""
        return "/".join(v for v in (self.get(NAMESPACE_ENV), self.get(NAME_ENV)) if v)

    def server_defaults(self) -> dict[str, tuple[Any, str]]:
        """The layer of ``[server]`` defaults that differ when launched."""
        if not self.active:
            return {}
        return {name: (value, LAUNCHED_ORIGIN) for name, value in LAUNCHED_DEFAULTS.items()}

    def server_aliases(self) -> dict[str, tuple[Any, str]]:
        if not self.active:
            return {}
        return {name: (self.get(var), var) for name, var in SERVER_VARIABLES.items() if self.get(var)}

    def backend_aliases(self, backend: str, model: type[BaseModel]) -> dict[str, tuple[Any, str]]:
        """The backend's settings VirtRigaud's variables give."""
        if not self.active:
            return {}
        found: dict[str, tuple[Any, str]] = {}
        if self.get(ENDPOINT_ENV):
            fields = endpoint_fields(model)
            if len(fields) != 1:
                named = f"names it with {', '.join(fields)}" if fields else "has no endpoint setting"
                raise ConfigError(f"{ENDPOINT_ENV} is set but backend {backend} {named}: set those settings instead")
            found[fields[0]] = (self.get(ENDPOINT_ENV), ENDPOINT_ENV)
        if self.flag(SKIP_VERIFY_ENV):
            if VERIFY_TLS not in model.model_fields:
                raise ConfigError(
                    f"{SKIP_VERIFY_ENV}=true but backend {backend} has no {VERIFY_TLS} setting; "
                    "it verifies the hypervisor as its endpoint says: drop the variable"
                )
            found[VERIFY_TLS] = (False, f"{SKIP_VERIFY_ENV}=true")
        return found

    def flag(self, name: str) -> bool:
        """A ``true``/``false`` variable (unset or empty: false)."""
        raw = self.get(name)
        if not raw:
            return False
        try:
            return bool(TypeAdapter(bool).validate_python(raw))
        except ValidationError:
            raise ConfigError(f"{name}={raw!r}: must be true or false") from None

    def check_tls(self, serving_tls: bool) -> None:
        """``TLS_ENABLED=true`` and a server without TLS is refused."""
        if self.active and self.flag(TLS_ENABLED_ENV) and not serving_tls:
            raise ConfigError(
                f"{TLS_ENABLED_ENV}=true but the server has no TLS certificate: set tls_cert and tls_key "
                "(VM_PROVIDER_SERVER_TLS_CERT, VM_PROVIDER_SERVER_TLS_KEY)"
            )


# -- the credentials directory -----------------------------------------------------


def credentials(directory: Path, model: type[BaseModel], backend: str, *, required: bool) -> dict[str, tuple[Any, str]]:
    """The settings the files of ``directory`` give (field -> value and
    ``credentials PATH``) for the keys ``model.credential_keys`` declares.
    A missing directory is refused when ``required``, else it gives nothing."""
    keys: Mapping[str, str] = getattr(model, "credential_keys", {})
    if not directory.exists():
        if required:
            raise ConfigError(f"credentials_dir {directory} does not exist; create it, or drop the setting")
        log.debug("no credentials directory at %s", directory)
        return {}
    if not directory.is_dir():
        raise ConfigError(f"credentials_dir {directory} is not a directory")
    found: dict[str, tuple[Any, str]] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise ConfigError(f"credentials_dir {directory}: cannot list it: {exc.strerror}") from None
    for path in entries:
        if path.name.startswith(".") or path.is_dir():
            continue  # a mounted Secret's own ..data and timestamped directories
        name = keys.get(path.name)
        if name is None:
            takes = ", ".join(sorted(keys)) or "none"
            log.debug("credentials: ignoring %s: backend %s takes no such key (it takes: %s)", path, backend, takes)
            continue
        origin = f"credentials {path}"
        if _is_path(model.model_fields[name].annotation):
            found[name] = (path, origin)
            continue
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read it: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{origin}: is not UTF-8 text") from None
        found[name] = (text.removesuffix("\n").removesuffix("\r"), origin)
    return found


def _is_path(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_path(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_is_path(a) for a in get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, Path)
