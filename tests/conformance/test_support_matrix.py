"""docs/support-matrix.md is what tools/gen_matrix.py makes of the backends'
declarations, never a hand edit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vmp_testplugins.skips import skip_missing

from provider_core import plugins
from provider_core.capabilities import Capability
from provider_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_committed_matrix_is_what_the_tool_generates() -> None:
    for name in ("libvirt", "proxmox", "sim"):
        try:
            plugins.load_class(name)
        except ConfigError as exc:
            skip_missing(f"the matrix documents backend {name!r}, which does not load here: {exc}")
    proc = subprocess.run(
        [sys.executable, ROOT / "tools" / "gen_matrix.py", "--check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_sim_column_is_its_declaration() -> None:
    from vm_provider_sim import SimBackend

    text = (ROOT / "docs" / "support-matrix.md").read_text()
    for cap in Capability:
        (row,) = [line for line in text.splitlines() if line.startswith(f"| `{cap.value}` |")]
        assert row.split("|")[-2].strip() == ("yes" if cap in SimBackend.capabilities else "no"), row


def test_backends_that_hand_transfer_the_request_list_nfs_the_default_does_not() -> None:
    # nfs needs the request's storage options: the Backend default leaves it out
    from provider_core import Backend

    assert Backend.export_backends == Backend.import_backends == ("pvc", "s3")
    text = (ROOT / "docs" / "support-matrix.md").read_text()
    for label in ("supported_export_backends", "supported_import_backends"):
        (row,) = [line for line in text.splitlines() if line.startswith(f"| `{label}` |")]
        libvirt, proxmox, sim = (cell.strip() for cell in row.split("|")[2:5])
        assert libvirt == proxmox == sim == "pvc, nfs, s3", row
