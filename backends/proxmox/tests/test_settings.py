"""ProxmoxSettings through the core's configuration rule (TOML table,
environment, *_file): one login method, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from vm_provider_proxmox import ProxmoxSettings

from provider_core.config import build
from provider_core.errors import ConfigError

SECRET = "do-not-print-me-42"
BASE = {"endpoint": "https://pve.example.com:8006"}


def settings(table: dict[str, object], environ: dict[str, str] | None = None) -> ProxmoxSettings:
    return build(ProxmoxSettings, "proxmox", {**BASE, **table}, environ or {})


def test_token_login() -> None:
    s = settings({"token_id": "vmp@pve!ci", "token_secret": SECRET})
    assert s.uses_token
    assert s.verify_tls


def test_password_login() -> None:
    s = settings({"username": "root@pam", "password": SECRET})
    assert not s.uses_token


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({}, "no login configured"),
        ({"token_id": "vmp@pve!ci", "username": "root@pam", "password": SECRET}, "not both"),
        ({"token_id": "vmp@pve!ci", "token_secret": SECRET, "username": "root@pam"}, "not both"),
        ({"token_id": "vmp@pve!ci"}, "needs both token_id and token_secret"),
        ({"token_secret": SECRET}, "needs both token_id and token_secret"),
        ({"username": "root@pam"}, "needs both username and password"),
        ({"token_id": "no-realm", "token_secret": SECRET}, "user@realm!tokenname"),
        ({"username": "root", "password": SECRET}, "user@realm"),
    ],
)
def test_exactly_one_login_method(table: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        settings(table)
    assert SECRET not in str(info.value)


def test_secrets_never_shown() -> None:
    s = settings({"token_id": "vmp@pve!ci", "token_secret": SECRET})
    assert SECRET not in repr(s)
    assert SECRET not in str(s.model_dump())
    with pytest.raises(ConfigError) as info:
        settings({"token_id": "vmp@pve!ci", "token_secret": SECRET, "storage": "bad storage"})
    assert SECRET not in str(info.value)


def test_secret_from_environment_and_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    from_file = settings({"token_id": "vmp@pve!ci", "token_secret_file": str(path)})
    assert from_file.token_secret is not None
    assert from_file.token_secret.get_secret_value() == SECRET
    from_env = settings({"token_id": "vmp@pve!ci"}, {"VM_PROVIDER_PROXMOX_TOKEN_SECRET": SECRET})
    assert from_env.token_secret is not None
    assert from_env.token_secret.get_secret_value() == SECRET
    env_file = settings({"token_id": "vmp@pve!ci"}, {"VM_PROVIDER_PROXMOX_TOKEN_SECRET_FILE": str(path)})
    assert env_file.token_secret is not None
    assert env_file.token_secret.get_secret_value() == SECRET


def test_insecure_switch_from_environment() -> None:
    s = settings({"token_id": "vmp@pve!ci", "token_secret": SECRET}, {"VM_PROVIDER_PROXMOX_VERIFY_TLS": "false"})
    assert not s.verify_tls


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("http://pve:8006", "https://"),
        ("https://", "no host"),
        ("https://pve:8006/api2/json", "just https://host"),
        ("https://root:pw@pve:8006", "must not carry credentials"),
    ],
)
def test_endpoint(endpoint: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        settings({"endpoint": endpoint, "token_id": "vmp@pve!ci", "token_secret": SECRET})


def test_endpoint_normalised() -> None:
    s = settings({"endpoint": "https://[::1]:8006/", "token_id": "vmp@pve!ci", "token_secret": SECRET})
    assert s.endpoint == "https://[::1]:8006"


def test_ca_file_and_insecure_conflict(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="verify_tls is false"):
        settings({"token_id": "vmp@pve!ci", "token_secret": SECRET, "ca_file": str(ca), "verify_tls": False})


def test_snippets_storage_needs_its_directory() -> None:
    with pytest.raises(ConfigError, match="snippets_dir"):
        settings({"token_id": "vmp@pve!ci", "token_secret": SECRET, "snippets_storage": "cloud"})


def test_unknown_setting_refused() -> None:
    with pytest.raises(ConfigError, match="nodes"):
        settings({"token_id": "vmp@pve!ci", "token_secret": SECRET, "nodes": "pve1"})


def test_a_secret_with_token_and_password_logs_in_with_the_token(caplog: pytest.LogCaptureFixture) -> None:
    """VirtRigaud's Secret may hold all four keys; its providers use the token."""
    s = ProxmoxSettings(
        endpoint="https://pve.example:8006", token_id="vmp@pve!ci", token_secret=SECRET, username="root@pam", password=SECRET
    )
    assert s.uses_token
    assert (s.username, s.password) == ("", None)
    assert "logging in with the token vmp@pve!ci" in caplog.text
    assert SECRET not in caplog.text


def test_ssh_data_path_needs_key_and_known_hosts(tmp_path: Path) -> None:
    key, known = tmp_path / "ssh-privatekey", tmp_path / "known_hosts"
    key.write_text("x")
    known.write_text("")
    with pytest.raises(ConfigError, match="ssh_key_file and ssh_known_hosts_file go together"):
        settings({"token_id": "vmp@pve!ci", "token_secret": SECRET, "ssh_key_file": str(key)})
    s = settings(
        {"token_id": "vmp@pve!ci", "token_secret": SECRET, "ssh_key_file": str(key)},
        {"VM_PROVIDER_PROXMOX_SSH_KNOWN_HOSTS_FILE": str(known), "VM_PROVIDER_PROXMOX_SSH_HOSTS": '{"pve1": "10.0.0.1"}'},
    )
    assert (s.ssh_known_hosts_file, s.ssh_hosts) == (known, {"pve1": "10.0.0.1"})
    assert ProxmoxSettings.credential_keys["ssh-privatekey"] == "ssh_key_file"
    assert ProxmoxSettings.credential_keys["known_hosts"] == "ssh_known_hosts_file"
