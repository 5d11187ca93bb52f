"""The conformance kit (provider_core.conformance) against this backend on
the simulator, configured like an operator would (plugins.toml with
[backends.proxmox] and [conformance.proxmox]).

Skipped checks (SKIPS) each have a reason of the test bed. New VMs are
made for CPU and memory hotplug (``cpu_memory_hotplug``), so the kit grows
running VMs (``reconfigure_online``); their classes start at Proxmox's
1024 MiB of static memory and grow by one 512 MiB DIMM. Proxmox makes
linked clones of templates only, so the kit's linked clone check clones a
template of the simulator (the ``linked_clone_source`` fixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provider_core.config import load_file
from provider_core.conformance import Session
from provider_core.conformance.report import FAIL, PASS, SKIP

#: The template the linked clone check clones (``linked_clone_source``): a
#: qcow2 base volume on a file storage, whose linked clones' volume names
#: carry their base, so GetDiskInfo shows the backing file. (On local-lvm
#: the simulator's linked clone shows none.)
TEMPLATE = {
    "scsi0": "cloud:9000/base-9000-disk-0.qcow2,size=2G",
    "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
    "cores": 1,
    "memory": "512",
}

SKIPS = {
    "reconfigure.grow_disk_stopped": "the simulator's resize task ends OK but changes no disk size",
    "disk_expansion_online.grow_disk_running": "the simulator's resize task ends OK but changes no disk size",
}


def test_conformance_kit(pve: Any, cluster: Any, cafile: str, snippets_dir: Path, tmp_path: Path) -> None:
    template = pve.add_vm(9000, "conformance-template", template=True, config=dict(TEMPLATE))
    before = dict(template.config)
    skip = ", ".join(f'"{name}" = "{why}"' for name, why in SKIPS.items())
    config = tmp_path / "plugins.toml"
    config.write_text(
        f"""
[backends.proxmox]
endpoint = "{cluster.url}"
token_id = "vmp@pve!ci"
token_secret_file = "{tmp_path / "token"}"
ca_file = "{cafile}"
node = "pve1"
import_storage = "cloud"
snippets_storage = "cloud"
snippets_dir = "{snippets_dir}"
cpu_memory_hotplug = true

[conformance.proxmox]
task_timeout = 60
linked_clone_source = "9000"
class_json = '{{"CPU": 1, "MemoryMiB": 1024}}'
bigger_class_json = '{{"CPU": 2, "MemoryMiB": 1536}}'
skip = {{ {skip} }}
"""
    )
    (tmp_path / "token").write_text(pve.apitokens["vmp@pve!ci"])
    with Session("proxmox", load_file(config)) as session:
        results = [session.run(check) for check in session.checks()]
    failed = [f"{r.check.name}: {r.detail}" for r in results if r.status == FAIL]
    assert not failed, "\n".join(failed)
    # Without the nodes' SSH data path the data path is not offered (test_datapath.py tests it): its checks skip.
    unoffered = ("disk_export.", "disk_import.", "export_compression.")
    skipped = {r.check.name for r in results if r.status == SKIP}
    assert {name for name in skipped if not name.startswith(unoffered)} == set(SKIPS)
    assert next(r for r in results if r.check.name == "disk_export.not_offered").status == PASS
    assert sum(r.status == PASS for r in results) >= 25
    assert next(r for r in results if r.check.name == "linked_clones.linked").status == PASS
    clones = [body for method, path, body in pve.requests if path.endswith("/qemu/9000/clone")]
    assert clones
    assert all(b"full=0" in body for body in clones)
    assert pve.vm(9000) is template
    assert template.config == before  # the kit left the template as it was
