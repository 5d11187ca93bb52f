"""Helpers of the conformance kit's tests: run the kit in-process or as a
command, against installed backends (the broken ones come from
``pip install -e tests/conformance/broken_backends``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from vmp_testplugins.skips import skip_missing

from provider_core import plugins
from provider_core.config import Config
from provider_core.conformance.report import Result
from provider_core.conformance.session import Session
from provider_core.errors import ConfigError

BIN = Path(sys.executable).parent
#: Sim settings that keep a whole kit run to a few seconds.
FAST_SIM: dict[str, Any] = {"task_seconds": 0.01, "shutdown_seconds": 0.05}

RunKit = Callable[..., list[Result]]
Command = Callable[..., "subprocess.CompletedProcess[str]"]


def require_backend(name: str) -> None:
    """Skip, saying why, when the backend ``name`` cannot be loaded."""
    if name not in plugins.installed():
        skip_missing(f"backend {name!r} is not installed (make setup installs it)")
    try:
        plugins.load_class(name)
    except ConfigError as exc:
        skip_missing(f"backend {name!r} does not load: {exc}")


@pytest.fixture
def run_kit() -> RunKit:
    """``run_kit("sim", {settings}, {fixtures}, select=None, server=None)``:
    every applicable check's result, run in-process through a real server
    (``server``: its ``[server]`` table)."""

    def run(
        name: str,
        settings: Mapping[str, Any],
        fixtures: Mapping[str, Any] | None = None,
        select: str | None = None,
        server: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        require_backend(name)
        config = Config(backends={name: dict(settings)}, conformance={name: dict(fixtures or {})}, server=dict(server or {}))
        session = Session(name, config)
        with session:
            return [session.run(check) for check in session.checks(select)]

    return run


def toml_table(values: Mapping[str, Any]) -> str:
    """A TOML table body for simple values (numbers, strings, booleans, lists of strings)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            text = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        elif isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def fast_sim() -> dict[str, Any]:
    return dict(FAST_SIM)


@pytest.fixture
def kit_command(tmp_path: Path) -> Command:
    """``kit_command("sim", {settings}, "-k", "clone")``: run
    ``vm-provider conformance`` on a config holding ``[backends.NAME]``."""

    def run(name: str, settings: Mapping[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
        require_backend(name)
        config = tmp_path / "plugins.toml"
        config.write_text(f"[backends.{name}]\n" + toml_table(settings))
        command = [str(BIN / "vm-provider"), "conformance", "--backend", name, "--config", str(config), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    return run


@pytest.fixture
def run_pytest() -> Command:
    """``run_pytest(directory, *args)``: a separate pytest run in ``directory``
    (the kit's plugin is loaded only when ``args`` or the directory's pytest
    configuration ask for it)."""

    def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)

    return run
