"""docs/virtrigaud.md's objects, as the manager would launch them.

Each Provider of the page is turned into what VirtRigaud's manager gives the
pod (provider_controller.go: its variables, the Secret as one file per key,
the TLS Secret's three files) and ``vm-provider config`` must accept it: the
backend, its endpoint and login, TLS and every variable of
``spec.runtime.env``. Serving them for real is what tests/manager and
tests/test_image.py do with endpoints that exist here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from provider_core import plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "virtrigaud.md"


def documents() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def providers() -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == "Provider"]


def secret(name: str) -> dict[str, str]:
    (found,) = [d for d in documents() if d["kind"] == "Secret" and d["metadata"]["name"] == name]
    return dict(found["stringData"])


def manager_environment(provider: dict[str, Any]) -> dict[str, str]:
    """The variables the manager sets on the provider's container."""
    spec, runtime = provider["spec"], provider["spec"]["runtime"]
    tls = runtime.get("service", {}).get("tls", {})
    env = {
        "PROVIDER_TYPE": spec["type"],
        "PROVIDER_ENDPOINT": spec["endpoint"],
        "PROVIDER_NAMESPACE": provider["metadata"]["namespace"],
        "PROVIDER_NAME": provider["metadata"]["name"],
        "TLS_ENABLED": str(bool(tls.get("enabled"))).lower(),
        "TLS_INSECURE_SKIP_VERIFY": str(bool(spec.get("insecureSkipVerify"))).lower(),
    }
    if not tls.get("enabled"):
        env["VIRTRIGAUD_PROVIDER_INSECURE"] = "true"
    for key, field in (("LOG_LEVEL", "logLevel"), ("LOG_FORMAT", "logFormat")):
        if runtime.get(field):
            env[key] = runtime[field]
    env.update({item["name"]: item["value"] for item in runtime.get("env", [])})
    return env


def mounted(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir()
    for key, value in files.items():
        (directory / key).write_bytes(value.encode() if isinstance(value, str) else value)
    return directory


def test_the_page_shows_a_provider_of_each_built_in_backend() -> None:
    assert {p["spec"]["type"] for p in providers()} == {"libvirt", "proxmox"}
    for p in providers():
        assert p["spec"]["runtime"]["image"].endswith("/vm-provider:0.1.0")
        assert p["spec"]["runtime"]["service"]["port"] == 9443


@pytest.mark.parametrize("provider", providers(), ids=lambda p: p["metadata"]["name"])
def test_each_provider_starts_as_the_manager_launches_it(cli: Any, pki: Any, tmp_path: Path, provider: dict[str, Any]) -> None:
    backend = provider["spec"]["type"]
    files = secret(provider["spec"]["credentialSecretRef"]["name"])
    keys = plugins.load_class(backend).Settings.credential_keys
    assert set(files) <= set(keys), f"the Secret holds keys {backend} does not read: {set(files) - set(keys)}"
    credentials = mounted(tmp_path / "credentials", files)
    tls = mounted(
        tmp_path / "tls",
        {"tls.crt": pki.server_cert.read_bytes(), "tls.key": pki.server_key.read_bytes(), "ca.crt": pki.ca.read_bytes()},
    )
    env = manager_environment(provider)
    # The manager mounts these at /etc/virtrigaud/{credentials,tls}; here they are elsewhere.
    env |= {"VM_PROVIDER_SERVER_CREDENTIALS_DIR": str(credentials), "VM_PROVIDER_SERVER_TLS_DIR": str(tls)}
    shown = cli("config", env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f'backend = "{backend}"' in out
    assert 'listen = "[::]:9443"' in out
    assert "health_port = 8080" in out
    assert "require_tls = true" in out
    assert '"virtrigaud-manager"' in out  # VIRTRIGAUD_PROVIDER_ALLOWED_SANS
    assert f"# credentials {credentials}" in out
    for key, value in files.items():
        if "secret" in key or "private" in key or key == "password":
            assert value.strip() not in out, f"{key} is shown"


def test_the_image_command_of_the_page_exists() -> None:
    script = (DOC.parents[1] / "tools" / "build-image.sh").read_text()
    assert "--tag" in script
    assert "bash tools/build-image.sh --tag registry.example.com/platform/vm-provider:0.1.0" in DOC.read_text()
