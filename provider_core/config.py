"""plugins.toml, the environment, flags and secrets from files.

One rule for every backend, built-in or third-party: the table
``[backends.NAME]`` holds the backend's settings; ``VM_PROVIDER_NAME_SETTING``
overrides one; ``setting_file = "/path"`` in the table or
``VM_PROVIDER_NAME_SETTING_FILE`` in the environment reads it from a file (for
secrets that must not sit in the TOML). The server's own settings follow the
same rule under ``[server]`` and ``VM_PROVIDER_SERVER_...``.

Precedence, for every setting: flag > environment > file > default. Lists
and tables come from the environment (and from ``*_file`` files) as JSON.
Anything unknown (a table, a key, a ``VM_PROVIDER_*`` variable) and any
ambiguous pair (``x`` with ``x_file``) is refused, naming the nearest valid
name: a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tomllib
import types
from collections import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .logs import level_name
from .urls import redact

ENV_PREFIX = "VM_PROVIDER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
BACKEND_ENV = ENV_PREFIX + "BACKEND"
ALLOWED_SANS_ENV = "VIRTRIGAUD_PROVIDER_ALLOWED_SANS"
"""VirtRigaud's name for ``allowed_sans``: a comma-separated list."""
INSECURE_ENV = "VIRTRIGAUD_PROVIDER_INSECURE"
"""VirtRigaud's escape hatch: ``true`` lifts ``require_tls``."""
VIRTRIGAUD_TLS_DIR = Path("/etc/virtrigaud/tls")
"""Where VirtRigaud's manager mounts a provider's TLS Secret (a ``tls_dir``)."""
DEFAULT_BACKEND = "libvirt"
#: Set by VirtRigaud's manager to the backend's name: see provider_core.launch.
PROVIDER_TYPE_ENV = "PROVIDER_TYPE"
TABLES = ("provider", "server", "backends", "conformance")
PROVIDER_KEYS = ("backend",)
#: Settings that name a backend's endpoint, when its settings model does not
#: say (``BackendSettings.endpoint_settings``).
ENDPOINT_FIELDS = ("uri", "endpoint", "url", "host", "hosts", "address")
DEFAULT = "default"
QUOTED = "'{}'"
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
    tls_dir: Path | None = Field(
        None,
        description="directory holding tls.crt, tls.key and ca.crt (a Kubernetes Secret mount): mutual TLS, "
        "reloaded when the files change; instead of tls_cert, tls_key and tls_client_ca",
    )
    tls_min_version: Literal["1.2", "1.3"] = Field("1.3", description="the oldest TLS version a client may speak")
    allowed_sans: list[str] = Field(
        [],
        description="client certificates accepted: one of these must be a DNS or URI SAN or the CN "
        f"(empty: any the CA signed); also ${ALLOWED_SANS_ENV}, comma-separated",
    )
    require_tls: bool = Field(
        False, description=f"refuse to start without TLS files (${INSECURE_ENV}=true lifts it, with a warning)"
    )
    auth_token: SecretStr | None = Field(None, description="bearer token clients must send; health checks are exempt")
    grace_seconds: float = Field(30.0, ge=0, description="on SIGTERM, how long the whole stop may take")
    drain_delay: float = Field(
        5.0, ge=0, description="on SIGTERM, seconds health says NOT_SERVING while calls are still served (part of grace_seconds)"
    )
    state_dir: Path | None = Field(
        None, description="where task records are kept (default: ~/.local/state/vm-provider/BACKEND-HASH)"
    )
    state_url: SecretStr | None = Field(
        None,
        description="postgresql://USER:PASSWORD@HOST:PORT/DB: task records and per-VM locks shared by every replica"
        " naming the same database (default: a SQLite file in state_dir, for one process)",
    )
    state_lease: float = Field(
        15.0,
        gt=0,
        le=30,
        description="with state_url: seconds after a replica's last heartbeat that its running tasks are reported interrupted",
    )
    state_pool_size: int = Field(
        40,
        ge=2,
        le=1000,
        description="with state_url: most connections to the database at once; each running mutation or task holds one",
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
    pvc_root: Path | None = Field(
        Path("/mnt/migration-storage"),
        description="where migration claims are mounted, each at <pvc_root>/<claim> (pvc:// URLs); pvc is offered when it exists",
    )
    nfs_root: Path | None = Field(
        None, description="where the NFS staging export is mounted (nfs:// URLs); nfs is offered only when set"
    )
    log_level: str = Field("INFO", description="debug, info, warn (warning), error or critical")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one object per line")
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve HTTP /healthz, /readyz and /metrics on this port, all interfaces (off when unset)",
    )
    metrics: bool = Field(True, description="keep Prometheus metrics and serve them at /metrics on the health port")
    access_log: bool = Field(True, description="log one line per call: method, peer, code, duration, task, VM, request id")
    credentials_dir: Path | None = Field(
        None, description="a directory of one file per credential (a mounted Secret); fills the backend's credential_keys"
    )
    power_states: Literal["on-off", "detailed"] = Field(
        "on-off",
        description="power_state words of Describe and ListVMs: on-off (On, else Off: what VirtRigaud accepts),"
        " or detailed (On, Off, Suspended, Unknown)",
    )
    manage_foreign_vms: bool = Field(
        False,
        description="let Power, Reconfigure, snapshots, Clone, Delete and HardwareUpgrade change VMs this provider"
        " did not make (adopted VMs); off, they answer FAILED_PRECONDITION",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        return level_name(value)

    @field_validator("auth_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: an empty token would turn authentication off; give the token, or drop the setting")
        return value

    @field_validator("state_url")
    @classmethod
    def _state_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        scheme = value.get_secret_value().strip().partition("://")[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"has scheme {scheme!r}: give a postgresql://... URL, or drop the setting for the local SQLite file"
                if "://" in value.get_secret_value()
                else "is no URL: give postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            )
        return value

    @field_validator("allowed_sans")
    @classmethod
    def _sans(cls, value: list[str]) -> list[str]:
        names = [name.strip() for name in value]
        if not all(names):
            raise ValueError("holds an empty name; give DNS names, URIs or CNs")
        return names

    @model_validator(mode="after")
    def _tls(self) -> ServerSettings:
        if self.tls_dir is not None and (self.tls_cert or self.tls_key or self.tls_client_ca):
            raise ValueError("tls_dir and tls_cert/tls_key/tls_client_ca are both set: give the directory or the files, not both")
        if self.allowed_sans and self.tls_dir is None and self.tls_client_ca is None:
            raise ValueError("allowed_sans needs client certificates: set tls_dir, or tls_client_ca with tls_cert and tls_key")
        return self


def virtrigaud_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """``[server]`` settings from VirtRigaud's own variables, at the
    environment's level (a ``VM_PROVIDER_SERVER_*`` variable saying otherwise
    is refused): ``$VIRTRIGAUD_PROVIDER_ALLOWED_SANS`` (comma-separated;
    empty means any client the CA signed) and
    ``$VIRTRIGAUD_PROVIDER_INSECURE`` (``true`` lifts ``require_tls``;
    other values change nothing, as in VirtRigaud's own providers)."""
    found: dict[str, tuple[Any, str]] = {}
    sans = [name.strip() for name in environ.get(ALLOWED_SANS_ENV, "").split(",") if name.strip()]
    if sans:
        if env_prefix("server") + "ALLOWED_SANS" in environ:
            raise ConfigError(f"{ALLOWED_SANS_ENV} and {env_prefix('server')}ALLOWED_SANS are both set: keep one")
        found["allowed_sans"] = (sans, ALLOWED_SANS_ENV)
    if environ.get(INSECURE_ENV, "").strip().lower() == "true":
        found["require_tls"] = (False, f"{INSECURE_ENV}=true")
    return found


class Config(BaseModel):
    """The whole of plugins.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = ""
    server: dict[str, Any] = {}
    backends: dict[str, dict[str, Any]] = {}
    conformance: dict[str, dict[str, Any]] = {}
    """``[conformance.NAME]``: fixtures of the conformance kit (provider_core.conformance)."""
    path: Path | None = None
    """The file read, if any."""

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "plugins.toml"


# -- names and suggestions --------------------------------------------------------


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``word`` (difflib), else the shortest that
    contains it (``delay`` -> ``delay_seconds``), if any."""
    names = sorted(set(candidates))
    found = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if found:
        return found[0]
    holding = [n for n in names if word and word.lower() in n.lower()]
    return min(holding, key=len) if holding else None


def nearest(word: str, candidates: Iterable[str], show: str = "{}") -> str:
    """``"; did you mean X?"`` for the closest candidate, else the valid
    names (without the ``x_file`` forms of the settings listed)."""
    names = sorted(set(candidates))
    found = closest(word, names)
    if found:
        return f"; did you mean {show.format(found)}?"
    listed = [n for n in names if not (n.endswith("_file") and n.removesuffix("_file") in names)]
    return "; valid: " + ", ".join(show.format(n) for n in listed) if listed else ""


def allowed_keys(model: type[BaseModel]) -> set[str]:
    """Keys a table of ``model`` may hold: its fields and their ``_file`` forms."""
    fields = set(model.model_fields)
    return fields | {f"{f}_file" for f in fields if f"{f}_file" not in fields}


def table_label(section: str) -> str:
    return "[server]" if section == "server" else f"[backends.{section}]"


def env_prefix(section: str) -> str:
    return ENV_PREFIX + section.upper().replace("-", "_") + "_"


def env_names(model: type[BaseModel], section: str) -> set[str]:
    """The environment variables that set ``model``'s fields."""
    prefix = env_prefix(section)
    return {prefix + key.upper() for key in allowed_keys(model)}


# -- the file ----------------------------------------------------------------------


def load_file(path: Path | None) -> Config:
    """Read plugins.toml (or nothing: every default). Unknown tables and
    keys of ``[provider]`` and ``[server]`` are refused here; a backend's
    table is checked when it is built (:func:`resolve`)."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; name the plugins.toml in it") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _check_layout(data, str(path))
    provider = data.pop("provider", {})
    try:
        return Config(backend=provider.get("backend", ""), path=path, **data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, {})}") from None


def _check_layout(data: Mapping[str, Any], where: str) -> None:
    server_keys = allowed_keys(ServerSettings)
    for key, value in data.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
        elif isinstance(value, dict):
            sub = next(iter(value), None) if value and all(isinstance(v, dict) for v in value.values()) else None
            shown = f"[{key}.{sub}]" if sub else f"[{key}]"
            raise ConfigError(f"{where}: unknown table {shown}{nearest(key, TABLES, f'[{{}}.{sub}]' if sub else '[{}]')}")
        elif key in PROVIDER_KEYS or key in server_keys:
            home = "provider" if key in PROVIDER_KEYS else "server"
            raise ConfigError(f"{where}: {key} is at the top level; it belongs in the [{home}] table")
        else:
            raise ConfigError(f"{where}: unknown top-level key {key!r}{nearest(key, TABLES, '[{}]')}")
    _check_tables(data, where, server_keys)


def _check_tables(data: Mapping[str, Any], where: str, server_keys: set[str]) -> None:
    for key, value in data.get("provider", {}).items():
        if key not in PROVIDER_KEYS:
            raise ConfigError(f"{where}: [provider] has no setting {key!r}{nearest(key, PROVIDER_KEYS, QUOTED)}")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: [provider] backend must be a backend's name, a non-empty string")
    for key in data.get("server", {}):
        if key not in server_keys:
            raise ConfigError(f"{where}: [server] has no setting {key!r}{nearest(key, server_keys, QUOTED)}")
    for table in ("backends", "conformance"):
        for key, value in data.get(table, {}).items():
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{table}] {key} must be a table: [{table}.{key}]")


def default_config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """$VM_PROVIDER_CONFIG, else ./plugins.toml when present, else None."""
    env = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if env:
        return Path(env)
    here = Path("plugins.toml")
    return here if here.is_file() else None


def backend_name(flag: str | None, conf: Config, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The backend to serve and where that came from: --backend, then
    $VM_PROVIDER_BACKEND or VirtRigaud's $PROVIDER_TYPE (both set, they must
    agree), then ``[provider] backend``, then libvirt."""
    env = os.environ if environ is None else environ
    if flag:
        return flag, "--backend"
    own, launched = env.get(BACKEND_ENV), env.get(PROVIDER_TYPE_ENV)
    if own and launched and own != launched:
        raise ConfigError(f"{BACKEND_ENV}={own} and {PROVIDER_TYPE_ENV}={launched} disagree: keep one")
    if own:
        return own, BACKEND_ENV
    if launched:
        return launched, PROVIDER_TYPE_ENV
    if conf.backend:
        return conf.backend, conf.source
    return DEFAULT_BACKEND, DEFAULT


# -- one model from its layers ----------------------------------------------------


@dataclass(frozen=True)
class Resolved(Generic[M]):
    """Validated settings, and where each field's value came from."""

    settings: M
    origins: Mapping[str, str]


def resolve(
    model: type[M],
    section: str,
    table: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, tuple[Any, str]] | None = None,
    source: str = "plugins.toml",
    aliases: Mapping[str, tuple[Any, str]] | None = None,
    lower: Sequence[Mapping[str, tuple[Any, str]]] = (),
) -> Resolved[M]:
    """Validate ``model`` from its layers: ``flags`` (field -> value and the
    flag's name), the environment, the file's ``table``, the ``lower``
    layers in their order (e.g. a credentials directory), defaults. A clear
    ConfigError otherwise, naming the table, the setting and its origin.

    ``aliases`` are values of the environment layer from variables of other
    names (field -> value and the variable, e.g. VirtRigaud's
    ``PROVIDER_ENDPOINT``): the same setting given by both variables with
    two values is refused."""
    env = os.environ if environ is None else environ
    label = table_label(section)
    for key in table:
        if key not in allowed_keys(model):
            raise ConfigError(f"{source}: {label} has no setting {key!r}{nearest(key, allowed_keys(model), QUOTED)}")
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, info in model.model_fields.items():
        file_key = f"{name}_file" if f"{name}_file" not in model.model_fields else None
        layer = _Field(name, file_key, _structured(info.annotation), env_prefix(section) + name.upper())
        if flags and name in flags:
            found: tuple[Any, str] | None = flags[name]
        else:
            found = _agreed(layer.environment(env), (aliases or {}).get(name), info.annotation)
            found = found or layer.file(table, section, source)
            found = found or next((layer_values[name] for layer_values in lower if name in layer_values), None)
        if found is None:
            origins[name] = DEFAULT
        else:
            values[name], origins[name] = found
    try:
        settings = model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings {label}: {_describe(exc, origins)}") from None
    return Resolved(settings, origins)


def _agreed(own: tuple[Any, str] | None, alias: tuple[Any, str] | None, annotation: Any) -> tuple[Any, str] | None:
    """One value of the environment layer from a setting's own variable and
    its alias; both with different values (as the field reads them) is a
    contradiction."""
    if own is None or alias is None:
        return own or alias
    if own[0] != alias[0]:
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(annotation)
            same = adapter.validate_python(own[0]) == adapter.validate_python(alias[0])
        except ValidationError:
            same = False
        if not same:
            shown = " and ".join(repr(mask_url(str(v))) for v in (own[0], alias[0]))
            raise ConfigError(f"{own[1]} and {alias[1]} disagree ({shown}): keep one")
    return own


@dataclass(frozen=True)
class _Field:
    """One setting's layers below the flags: its variable(s), its key(s)."""

    name: str
    file_key: str | None
    structured: bool
    var: str

    def environment(self, env: Mapping[str, str]) -> tuple[Any, str] | None:
        var_file = f"{self.var}_FILE" if self.file_key else None
        if var_file and self.var in env and var_file in env:
            raise ConfigError(f"{self.var} and {var_file} are both set: keep one")
        if self.var in env:
            return _parse(env[self.var], self.structured, self.var), self.var
        if var_file and var_file in env:
            where = f"{var_file}={env[var_file]}"
            return _parse(_read_secret(Path(env[var_file]), var_file), self.structured, where), where
        return None

    def file(self, table: Mapping[str, Any], section: str, source: str) -> tuple[Any, str] | None:
        indirect = self.file_key is not None and self.file_key in table
        if self.name in table and indirect:
            raise ConfigError(f"{source}: {table_label(section)} sets both {self.name} and {self.file_key}: keep one")
        if self.name in table:
            return table[self.name], source
        if not indirect:
            return None
        path = Path(str(table[str(self.file_key)]))
        where = f"{source}: {self.file_key} = {path}"
        return _parse(_read_secret(path, f"{section}.{self.file_key}"), self.structured, where), where


def build(model: type[M], section: str, table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> M:
    """Validate ``model`` from TOML + environment; a clear ConfigError otherwise.

    Values from the environment are strings; pydantic converts them (lax mode)."""
    return resolve(model, section, table, environ).settings


def _structured(annotation: Any) -> bool:
    """Whether a field holds a list, a set or a table (given as JSON in the environment)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _structured(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_structured(a) for a in get_args(annotation) if a is not type(None))
    kind = origin if origin is not None else annotation
    if kind is abc.Sequence:
        return True
    return isinstance(kind, type) and issubclass(kind, (list, tuple, set, frozenset, dict, abc.Mapping, abc.Set, BaseModel))


def _parse(raw: str, structured: bool, origin: str) -> Any:
    if not structured:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{origin}: not valid JSON ({exc.msg} at character {exc.pos}); give lists and tables as JSON, "
            'e.g. ["a", "b"] or {"key": "value"}'
        ) from None


def _read_secret(path: Path, origin: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{origin}: {path} is not UTF-8 text") from None


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            parts.append(msg)
            continue
        origin = origins.get(str(err["loc"][0]), DEFAULT)
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {msg}" + ("" if origin == DEFAULT else f" (from {origin})"))
    return "; ".join(parts)


# -- the environment ----------------------------------------------------------------


def check_environment(environ: Mapping[str, str], served: Mapping[str, type[BaseModel]], others: Iterable[str] = ()) -> None:
    """Refuse ``VM_PROVIDER_*`` variables that set nothing, naming the nearest
    valid name. ``served`` maps the sections in use (``server``, the
    backend's name) to their models; variables of ``others`` (the other
    installed backends) are theirs to check."""
    known = {CONFIG_ENV, BACKEND_ENV}
    for section, model in served.items():
        known |= env_names(model, section)
    prefixes = {env_prefix(s): s in served for s in [*served, *others]}
    unknown: list[tuple[str, str | None]] = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in known:
            continue
        owner = max((p for p in prefixes if var.startswith(p)), key=len, default=None)
        if owner is not None and not prefixes[owner]:
            continue
        best = closest(var, known)
        unknown.append((var, best))
    if len(unknown) == 1:
        var, best = unknown[0]
        raise ConfigError(f"unknown environment variable {var}" + (f"; did you mean {best}?" if best else ""))
    if unknown:
        names = ", ".join(var + (f" (did you mean {best}?)" if best else "") for var, best in unknown)
        raise ConfigError(f"unknown environment variables {names}")


# -- the endpoint and the state directory ------------------------------------------


def endpoint_fields(settings: BaseModel | type[BaseModel]) -> tuple[str, ...]:
    """The settings that name the endpoint a backend serves: those its model
    lists in ``endpoint_settings``, else the conventional names it has."""
    model = settings if isinstance(settings, type) else type(settings)
    declared = getattr(model, "endpoint_settings", None)
    if declared is not None:
        return tuple(declared)
    return tuple(f for f in ENDPOINT_FIELDS if f in model.model_fields)


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
    """``text`` as :func:`provider_core.urls.redact` writes a URL, or as it
    is when it is no URL."""
    return redact(text) if "://" in text else text
