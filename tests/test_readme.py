"""The README's demo and the docs' configuration samples run as written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from provider_core import config, plugins
from provider_core.testing import ProviderHarness

ROOT = Path(__file__).resolve().parents[1]


def fenced(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_opens_with_the_two_commands() -> None:
    first = fenced(ROOT / "README.md", "sh")[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["bash dev.sh run", "bash dev.sh test"]
    assert "bash dev.sh test" in (ROOT / ".ci" / "run").read_text()


def test_readme_demo_runs_against_a_live_server(capsys: pytest.CaptureFixture[str]) -> None:
    (demo,) = fenced(ROOT / "README.md", "python")
    with ProviderHarness.for_backend("libvirt", {"uri": "test:///default"}) as h:
        code = demo.replace("127.0.0.1:50051", h.address)
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_demo"})
    assert capsys.readouterr().out.startswith("On ")


@pytest.mark.parametrize("doc", ["configuration.md", "running.md", "replicas.md"])
def test_docs_toml_samples_load(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    for i, raw in enumerate(fenced(ROOT / "docs" / doc, "toml")):
        sample = re.sub(r'"/(run|etc)/[^"]*(token|secret)[^"]*"', f'"{secret}"', raw)
        data = tomllib.loads(sample)
        path = tmp_path / f"sample{i}.toml"
        path.write_text(sample)
        conf = config.load_file(path)
        if "server" in data:
            settings = config.build(config.ServerSettings, "server", conf.server, environ={})  # files are read at start
            if "auth_token_file" in data["server"]:
                assert settings.auth_token is not None
                assert settings.auth_token.get_secret_value() == "s3cr3t-value"
        for name, table in conf.backends.items():
            cls = plugins.load_class(name)
            settings = plugins.settings_for(name, cls, table, environ={})
            assert "s3cr3t-value" not in repr(settings)


def test_shipped_plugins_toml_loads() -> None:
    conf = config.load_file(ROOT / "plugins.toml")
    assert conf.backend == "libvirt"
    for name, table in conf.backends.items():
        plugins.settings_for(name, plugins.load_class(name), table, environ={})
