"""What a cluster's package versions allow, read from
``/nodes/{node}/apt/versions`` (see pvesim.packages for the sources):

- download-url takes qcow2, raw and vmdk files into ``import`` content only
  from libpve-storage-perl 8.3.6: older clusters are reported by Validate,
  and image URLs are withheld (ImagePrepare) or refused (Create) there;
- ``overrule-shutdown`` (qemu-server 8.1.2, bug #4474) lets OFF and Delete
  stop a VM during a graceful shutdown.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from provider_core.pb import provider_pb2 as pb


def validate(ops: Any) -> Any:
    return ops.stub.Validate(pb.ValidateRequest(), timeout=30)


# -- image downloads -----------------------------------------------------------------------


def test_validate_reports_a_cluster_too_old_for_image_urls(cluster: Any, provider: Any, ops_for: Any, settings: Any) -> None:
    cluster.packages.release("8.3")
    report = validate(ops_for(provider(settings)))
    assert not report.ok
    assert "libpve-storage-perl 8.3.3" in report.message
    assert "8.3.6" in report.message
    assert "Proxmox VE 8.3.5" in report.message


def test_validate_accepts_8_4_with_image_urls(cluster: Any, provider: Any, ops_for: Any, settings: Any) -> None:
    cluster.packages.release("8.4")
    report = validate(ops_for(provider(settings)))
    assert report.ok, report.message


def test_old_cluster_without_import_storage_is_fine(cluster: Any, provider: Any, ops_for: Any, settings: Any) -> None:
    cluster.packages.release("8.1")
    report = validate(ops_for(provider({**settings, "import_storage": ""})))
    assert report.ok, report.message


def test_image_urls_are_refused_clearly_on_an_old_cluster(cluster: Any, provider: Any, ops_for: Any, settings: Any) -> None:
    cluster.packages.release("8.3")
    ops = ops_for(provider(settings))
    caps = ops.stub.GetCapabilities(pb.GetCapabilitiesRequest())
    assert not caps.supports_image_import  # ImagePrepare is not offered here
    code, message = ops.fails(
        lambda: ops.stub.ImagePrepare(
            pb.ImagePrepareRequest(image_json='{"URL": "https://images.example.invalid/a.qcow2"}', target_name="a"), timeout=30
        )
    )
    assert code is grpc.StatusCode.UNIMPLEMENTED
    image = json.dumps({"URL": "https://images.example.invalid/noble.qcow2", "Checksum": "a" * 64})
    code, message = ops.fails(lambda: ops.stub.Create(pb.CreateRequest(name="old-1", image_json=image), timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "8.3.6" in message
    assert list(ops.stub.ListVMs(pb.ListVMsRequest()).vms) == []


def test_iso_urls_work_on_an_old_cluster(cluster: Any, provider: Any, ops_for: Any, settings: Any, pve: Any) -> None:
    cluster.packages.release("8.3")
    ops = ops_for(provider(settings))
    vm = ops.create("old-iso", image_json={"URL": "https://images.example.invalid/netinst.iso"})
    assert pve.vm(int(vm)).config["ide2"].startswith("cloud:iso/")


# -- OFF and Delete during a graceful shutdown ---------------------------------------------------


def shutting_down(ops: Any, cluster: Any, name: str) -> tuple[str, Any]:
    """A running VM whose guest is taking its time over a graceful shutdown."""
    vm = ops.create(name)
    ops.power(vm, pb.POWER_OP_ON)
    cluster.shutdowns.hold(int(vm))
    task = ops.stub.Power(pb.PowerRequest(id=vm, op=pb.POWER_OP_SHUTDOWN_GRACEFUL, graceful_timeout_seconds=600), timeout=30).task
    return vm, task


def test_off_during_a_graceful_shutdown(ops: Any, cluster: Any, pve: Any) -> None:
    vm, shutdown = shutting_down(ops, cluster, "sd-1")
    ops.power(vm, pb.POWER_OP_OFF)
    assert pve.vm(int(vm)).status == "stopped"
    st = ops.stub.TaskStatus(pb.TaskStatusRequest(task=shutdown), timeout=10)
    assert st.done
    assert "interrupted" in st.error  # overruled


def test_delete_during_a_graceful_shutdown(ops: Any, cluster: Any, pve: Any) -> None:
    vm, _ = shutting_down(ops, cluster, "sd-2")
    ops.h.wait(ops.stub.Delete(pb.DeleteRequest(id=vm), timeout=30).task)
    assert pve.vm(int(vm)) is None


def test_off_on_a_cluster_without_overrule(cluster: Any, provider: Any, ops_for: Any, settings: Any, pve: Any) -> None:
    cluster.packages.release("8.1")
    ops = ops_for(provider({**settings, "import_storage": ""}))
    vm = ops.create("sd-3")
    ops.power(vm, pb.POWER_OP_ON)
    mark = ops.mark()
    ops.power(vm, pb.POWER_OP_OFF)  # the parameter would be refused there: a plain stop
    assert pve.vm(int(vm)).status == "stopped"
    (body,) = [b for m, p, b in pve.requests[mark:] if p.endswith("/status/stop")]
    assert b"overrule-shutdown" not in body
