"""``vm-provider config``: the effective settings, where each came from.

The output reads as a plugins.toml: every setting of ``[provider]``,
``[server]`` and the backend's table, with its origin (a flag, an
environment variable, the file, a ``*_file``, or the default) in a comment.
Secrets print as ``********``; a URL's user-info and query string are
hidden (``***@``, ``?<redacted>``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from .backend import BackendSettings
from .config import DEFAULT, Config, Resolved, ServerSettings, default_state_dir, endpoint, mask_url, table_label

MASK = "********"
COLUMN = 44


@dataclass(frozen=True)
class Effective:
    """What ``vm-provider serve`` would run with."""

    conf: Config
    backend_name: str
    backend_origin: str
    server: Resolved[ServerSettings]
    backend: Resolved[BackendSettings]

    def state_dir(self) -> tuple[Path, str]:
        """The state directory and where it came from."""
        chosen = self.server.settings.state_dir
        if chosen is not None:
            return chosen, self.server.origins["state_dir"]
        where = endpoint(self.backend.settings)
        why = f"{DEFAULT}: backend {self.backend_name}" + (f", endpoint {where}" if where else ", its settings")
        return default_state_dir(self.backend_name, self.backend.settings), why


def _toml(value: Any) -> str:
    if isinstance(value, SecretStr):
        return json.dumps(MASK)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(mask_url(str(value.value if hasattr(value, "value") else value)))


def _line(key: str, value: Any, origin: str) -> str:
    if value is None:
        return f"# {key}: not set".ljust(COLUMN) + f"  # {origin}"
    return f"{key} = {_toml(value)}".ljust(COLUMN) + f"  # {origin}"


def _table(label: str, resolved: Resolved[Any], override: dict[str, tuple[Any, str]]) -> list[str]:
    lines = ["", label]
    for name in type(resolved.settings).model_fields:
        value, origin = override.get(name, (getattr(resolved.settings, name), resolved.origins[name]))
        lines.append(_line(name, value, origin))
    return lines


def render(eff: Effective) -> str:
    """The settings as a commented plugins.toml."""
    source = str(eff.conf.path) if eff.conf.path else "no file"
    lines = [
        f"# vm-provider config: the settings `vm-provider serve` would use (config file: {source}).",
        "# Precedence: flag > environment > file > default. Secrets are masked.",
        "",
        "[provider]",
        _line("backend", eff.backend_name, eff.backend_origin),
    ]
    lines += _table("[server]", eff.server, {"state_dir": eff.state_dir()})
    lines += _table(table_label(eff.backend_name), eff.backend, {})
    return "\n".join(lines) + "\n"
