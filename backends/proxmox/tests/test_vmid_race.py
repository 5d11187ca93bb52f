"""A lost VMID race never touches the winner's VM.

``/cluster/nextid`` reserves nothing; a clone that lost its id to another
client learns it only inside its task (see pvesim.vmids for Proxmox's two
checks). The provider then never deletes that id (it checks its own marker
in the VM's config first) and takes a fresh id.
"""

from __future__ import annotations

from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb

TEMPLATE = {"scsi0": "local-lvm:base-9000-disk-0,size=2G", "cores": 1, "memory": "512"}


@pytest.fixture
def template(pve: Any) -> str:
    pve.add_vm(9000, "tmpl", template=True, config=dict(TEMPLATE))
    return "9000"


@pytest.mark.parametrize("winner_node", ["pve1", "pve2"])
def test_create_from_template_after_a_lost_race(ops: Any, cluster: Any, pve: Any, template: str, winner_node: str) -> None:
    cluster.vmids.race(node=winner_node)
    resp = ops.stub.Create(pb.CreateRequest(name="race-1", image_json='{"TemplateName": "tmpl"}'), timeout=30)
    ops.h.wait(resp.task)
    (winner,) = cluster.vmids.winners
    assert pve.vm(winner) is not None
    assert pve.vm(winner).name == "someone-elses"
    assert int(resp.id) != winner
    assert pve.vm(int(resp.id)).name == "race-1"
    assert not any(m == "DELETE" for m, p, _ in pve.requests if p.endswith(f"/qemu/{winner}"))


def test_clone_after_a_lost_race(ops: Any, cluster: Any, pve: Any, template: str) -> None:
    cluster.vmids.race(node="pve1")
    vm = ops.clone(template, "race-2", linked=True)
    (winner,) = cluster.vmids.winners
    assert pve.vm(winner).name == "someone-elses"
    assert pve.vm(int(vm)).name == "race-2"


def test_blank_create_after_a_lost_race(ops: Any, cluster: Any, pve: Any) -> None:
    cluster.vmids.race(node="pve1")
    vm = ops.create("race-3")
    (winner,) = cluster.vmids.winners
    assert pve.vm(winner).name == "someone-elses"
    assert pve.vm(int(vm)).name == "race-3"


def test_a_failed_create_removes_only_its_own_vm(ops: Any, pve: Any, template: str) -> None:
    pve.fail("POST", "/nodes/pve1/qemu/100/config", error="config_lock_timeout")  # the clone's configure step fails
    resp = ops.stub.Create(pb.CreateRequest(name="race-4", image_json='{"TemplateName": "tmpl"}'), timeout=30)
    with pytest.raises(AssertionError, match="lock"):
        ops.h.wait(resp.task)
    assert pve.vm(int(resp.id)) is None  # ours (it carries our marker): removed
    assert pve.vm(9000) is not None
