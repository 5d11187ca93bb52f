"""The README's configuration sample is valid, and its settings table
names every setting."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from vm_provider_proxmox import ProxmoxSettings

from provider_core.config import build

README = Path(__file__).resolve().parents[1] / "README.md"


def test_sample_configuration(tmp_path: Path) -> None:
    text = README.read_text()
    sample = re.search(r"```toml\n(.*?)```", text, re.S)
    assert sample is not None
    token, ca = tmp_path / "pve-token", tmp_path / "pve-ca.pem"
    token.write_text("secret\n")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    body = sample.group(1).replace("/etc/vm-provider/pve-token", str(token)).replace("/etc/vm-provider/pve-ca.pem", str(ca))
    table = tomllib.loads(body)["backends"]["proxmox"]
    settings = build(ProxmoxSettings, "proxmox", table, {})
    assert settings.uses_token
    assert settings.snippets_storage == "cephfs"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [name for name in ProxmoxSettings.model_fields if f"`{name}`" not in text]
    assert not missing
