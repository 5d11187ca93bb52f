"""plugins.toml, environment overrides and secrets from files.

One rule for every backend, built-in or third-party: the table
``[backends.NAME]`` holds the backend's settings; ``VM_PROVIDER_NAME_SETTING``
overrides one; ``setting_file = "/path"`` in the table or
``VM_PROVIDER_NAME_SETTING_FILE`` in the environment reads it from a file (for
secrets that must not sit in the TOML). The server's own settings follow the
same rule under ``[server]`` and ``VM_PROVIDER_SERVER_...``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError

ENV_PREFIX = "VM_PROVIDER_"
#: Settings that name a backend's endpoint, when its settings model does not
#: say (``endpoint_settings``, a class attribute naming its fields).
ENDPOINT_FIELDS = ("uri", "endpoint", "url", "host", "hosts", "address")
M = TypeVar("M", bound=BaseModel)


class ServerSettings(BaseModel):
    """``[server]``: how vm-provider listens and runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "127.0.0.1:50051"
    reuse_port: bool = Field(
        False, description="let other processes listen on the same port (SO_REUSEPORT); off, a port in use refuses the start"
    )
    tls_cert: Path | None = Field(None, description="PEM server certificate chain; enables TLS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle; clients must present a certificate it signed (mutual TLS)"
    )
    auth_token: SecretStr | None = Field(None, description="bearer token clients must send; health checks are exempt")
    grace_seconds: float = Field(30.0, ge=0, description="how long SIGTERM waits for in-flight calls and tasks")
    state_dir: Path | None = Field(
        None, description="where task records are kept (default: ~/.local/state/vm-provider/BACKEND-HASH)"
    )
    workers: int = Field(64, ge=1, le=1024, description="threads for backend calls")
    task_workers: int = Field(32, ge=1, le=1024, description="threads for background tasks")
    health_interval: float = Field(5.0, gt=0, description="seconds between backend liveness checks")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the event loop to serve on: uvloop (less CPU per call), or asyncio's own"
    )
    allow_addresses: list[Literal["loopback", "link-local", "private"]] = Field(
        [],
        description="address kinds URLs in requests may point at (images, exports, imports); public addresses always",
    )
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("auth_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: an empty token would turn authentication off; give the token, or drop the setting")
        return value


class Config(BaseModel):
    """The whole of plugins.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = ""
    server: dict[str, Any] = {}
    backends: dict[str, dict[str, Any]] = {}
    conformance: dict[str, dict[str, Any]] = {}
    """``[conformance.NAME]``: fixtures of the conformance kit (provider_core.conformance)."""


def load_file(path: Path | None) -> Config:
    """Read plugins.toml (or nothing: every default)."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    provider = data.pop("provider", {})
    if not isinstance(provider, dict):
        raise ConfigError(f"{path}: [provider] must be a table")
    try:
        return Config(backend=provider.get("backend", ""), **data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, '')}") from None


def _describe(exc: ValidationError, table: str) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{table}.{loc}" if table else loc
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _env_name(section: str) -> str:
    return ENV_PREFIX + section.upper().replace("-", "_") + "_"


def settings_values(
    model: type[BaseModel], section: str, table: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Merge a TOML table, the environment and ``*_file`` indirections for
    ``model``'s fields. The environment wins over the file."""
    env = os.environ if environ is None else environ
    prefix = _env_name(section)
    fields = set(model.model_fields)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key.endswith("_file") and key.removesuffix("_file") in fields and key not in fields:
            values[key.removesuffix("_file")] = _read_secret(Path(str(value)), f"{section}.{key}")
        else:
            values[key] = value
    for field in fields:
        name = prefix + field.upper()
        if name in env:
            values[field] = env[name]
        elif name + "_FILE" in env and field + "_file" not in fields:
            values[field] = _read_secret(Path(env[name + "_FILE"]), name + "_FILE")
    return values


def _read_secret(path: Path, origin: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {path}: {exc.strerror}") from None


def build(model: type[M], section: str, table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> M:
    """Validate ``model`` from TOML + environment; a clear ConfigError otherwise.

    Values from the environment are strings; pydantic converts them (lax mode)."""
    values = settings_values(model, section, table, environ)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        kind = "server" if section == "server" else f"backends.{section}"
        raise ConfigError(f"invalid settings [{kind}]: {_describe(exc, '')}") from None


def default_config_path() -> Path | None:
    """$VM_PROVIDER_CONFIG, else ./plugins.toml when present, else None."""
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env)
    here = Path("plugins.toml")
    return here if here.is_file() else None


def endpoint_fields(settings: BaseModel) -> tuple[str, ...]:
    """The settings that name the endpoint a backend serves: those its model
    lists in ``endpoint_settings``, else the conventional names it has."""
    declared = getattr(type(settings), "endpoint_settings", None)
    if declared is not None:
        return tuple(declared)
    return tuple(f for f in ENDPOINT_FIELDS if f in type(settings).model_fields)


def endpoint(settings: BaseModel) -> str:
    """The endpoint, credentials masked, for logs (empty when the backend names none)."""
    return ", ".join(mask_url(str(getattr(settings, f))) for f in endpoint_fields(settings))


def endpoint_id(settings: BaseModel) -> str:
    """Eight hex digits that tell endpoints apart: a hash of the endpoint
    settings, or of every setting but secrets when the backend names none."""
    names = endpoint_fields(settings) or tuple(type(settings).model_fields)
    identity = {n: getattr(settings, n) for n in names if not isinstance(getattr(settings, n), SecretStr)}
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_state_dir(backend: str, settings: BaseModel, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/vm-provider/BACKEND-HASH`` (``~/.local/state`` without
    XDG_STATE_HOME): one directory per backend and endpoint."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vm-provider" / f"{backend}-{endpoint_id(settings)}"


def mask_url(text: str) -> str:
    """``text`` with a URL's password and query values replaced by ``***``."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or (not parts.netloc and not parts.query):
        return text
    netloc = parts.netloc
    if parts.password is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{parts.username or ''}:***@{host}"
    query = "&".join(f"{p.partition('=')[0]}=***" if "=" in p else "***" for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
