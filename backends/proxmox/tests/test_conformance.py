"""The conformance kit (provider_core.conformance) against this backend on
the simulator, configured like an operator would (plugins.toml with
[backends.proxmox] and [conformance.proxmox]).

Skipped checks (SKIPS) each have a reason of the test bed or of Proxmox itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provider_core.config import load_file
from provider_core.conformance import Session
from provider_core.conformance.report import FAIL, PASS, SKIP

SKIPS = {
    "reconfigure.grow_disk_stopped": "the simulator's resize task ends OK but changes no disk size",
    "disk_expansion_online.grow_disk_running": "the simulator's resize task ends OK but changes no disk size",
    "image_prepare.checksum": "the simulator never verifies download-url checksums (Proxmox does)",
    "linked_clones.linked": "Proxmox makes linked clones of templates only; the kit's source is an ordinary VM",
}


def test_conformance_kit(pve: Any, fakepve_cafile: str, snippets_dir: Path, tmp_path: Path) -> None:
    skip = ", ".join(f'"{name}" = "{why}"' for name, why in SKIPS.items())
    config = tmp_path / "plugins.toml"
    config.write_text(
        f"""
[backends.proxmox]
endpoint = "{pve.url}"
token_id = "vmp@pve!ci"
token_secret_file = "{tmp_path / "token"}"
ca_file = "{fakepve_cafile}"
node = "pve1"
import_storage = "cloud"
snippets_storage = "cloud"
snippets_dir = "{snippets_dir}"

[conformance.proxmox]
task_timeout = 60
skip = {{ {skip} }}
"""
    )
    (tmp_path / "token").write_text(pve.apitokens["vmp@pve!ci"])
    with Session("proxmox", load_file(config)) as session:
        results = [session.run(check) for check in session.checks()]
    failed = [f"{r.check.name}: {r.detail}" for r in results if r.status == FAIL]
    assert not failed, "\n".join(failed)
    assert {r.check.name for r in results if r.status == SKIP} == set(SKIPS)
    assert sum(r.status == PASS for r in results) >= 25
