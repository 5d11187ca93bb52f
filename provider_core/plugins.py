"""Finding and loading backends: setuptools entry points through stevedore.

Backends register a :class:`~provider_core.backend.Backend` subclass in the
entry-point group ``vm_provider.backends`` under their backend name. Loading
checks the class keeps the contract: it derives from Backend, its settings
model derives from BackendSettings, and its declared capabilities match the
methods it overrides, exactly. A violation names the backend and the method.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from stevedore import driver
from stevedore.exception import NoMatches

from .backend import Backend, BackendSettings
from .capabilities import REFINES, Capability
from .config import Resolved, resolve
from .errors import ConfigError
from .operations import METHODS

NAMESPACE = "vm_provider.backends"
log = logging.getLogger(__name__)


def installed() -> list[str]:
    """Names of the installed backends (without importing them)."""
    return sorted({ep.name for ep in entry_points(group=NAMESPACE)})


def check_backend_class(name: str, cls: Any) -> type[Backend]:
    """Refuse a class that breaks the contract, naming what is wrong."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend {name!r}: entry point gives {cls!r}, not a subclass of provider_core.Backend")
    if cls.__abstractmethods__:
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(f"backend {name!r}: {cls.__name__} does not implement required method(s) {missing}")
    if not (isinstance(cls.Settings, type) and issubclass(cls.Settings, BackendSettings)):
        raise ConfigError(f"backend {name!r}: {cls.__name__}.Settings must derive from provider_core.BackendSettings")
    _check_settings_names(name, cls.Settings)
    declared = set(cls.capabilities)
    for cap in declared:
        if not isinstance(cap, Capability):
            raise ConfigError(f"backend {name!r}: capability {cap!r} is not a provider_core.Capability")
    for cap, methods in METHODS.items():
        for method in methods:
            overridden = getattr(cls, method) is not getattr(Backend, method)
            if cap in declared and not overridden:
                raise ConfigError(f"backend {name!r} declares capability {cap.value!r} but does not implement method {method}()")
            if overridden and cap not in declared:
                raise ConfigError(f"backend {name!r} implements method {method}() but does not declare capability {cap.value!r}")
    for cap, parent in REFINES.items():
        if cap in declared and parent not in declared:
            raise ConfigError(f"backend {name!r} declares {cap.value!r} without {parent.value!r}")
    return cls


def _check_settings_names(name: str, model: type[BackendSettings]) -> None:
    """Refuse ``credential_keys`` and ``endpoint_settings`` naming no field."""
    named = [(f"credential key {k!r} fills {v!r}", v) for k, v in model.credential_keys.items()]
    named += [(f"endpoint setting {v!r}", v) for v in model.endpoint_settings or ()]
    for what, setting in named:
        if setting not in model.model_fields:
            raise ConfigError(f"backend {name!r}: {what}, which is no setting of {model.__name__}")


def load_class(name: str) -> type[Backend]:
    """Import the backend registered as ``name``; clear errors otherwise."""
    try:
        mgr = driver.DriverManager(NAMESPACE, name, invoke_on_load=False, on_load_failure_callback=_reraise)
    except NoMatches:
        have = ", ".join(installed()) or "none"
        raise ConfigError(f"unknown backend {name!r}; installed backends: {have}") from None
    except _LoadError as exc:
        cause = exc.__cause__
        raise ConfigError(f"backend {name!r} failed to load: {type(cause).__name__}: {cause}") from cause
    return check_backend_class(name, mgr.driver)


class _LoadError(Exception):
    pass


def _reraise(manager: Any, entrypoint: Any, exc: BaseException) -> None:
    raise _LoadError(entrypoint.name) from exc


def resolve_settings(
    name: str,
    cls: type[Backend],
    table: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    source: str = "plugins.toml",
) -> Resolved[BackendSettings]:
    """The backend's settings from its table and the environment, with the origin of each."""
    return resolve(cls.Settings, name, table, environ, source=source)


def settings_for(
    name: str, cls: type[Backend], table: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> BackendSettings:
    return resolve_settings(name, cls, table, environ).settings


def construct(name: str, settings: BackendSettings) -> Backend:
    """The backend ``name`` built on its settings (not yet connected)."""
    cls = load_class(name)
    try:
        return cls(settings)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"backend {name!r} failed to start: {type(exc).__name__}: {exc}") from exc


def load(name: str, table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Backend:
    """Load, configure and construct the backend ``name`` (not yet connected)."""
    return construct(name, settings_for(name, load_class(name), table, environ))
