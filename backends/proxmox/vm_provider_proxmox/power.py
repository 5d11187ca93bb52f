"""Power and Delete, decided from the VM's own ``status/current``.

The cluster listing's ``status`` lags up to 10 s and reports QEMU's run
state (``paused``), so each operation reads the VM itself (one request to
its node) and acts on what it is now: running (paused included) or stopped.
Each power operation that is one Proxmox task returns that task's UPID:

- ON: ``start`` for a stopped (or hibernated) VM, ``resume`` for a paused
  one; a running VM is left alone.
- OFF: ``stop`` (hard) of a running or paused VM, with ``overrule-shutdown``
  where the node's qemu-server has it (8.1.2, bug #4474): a graceful
  shutdown in progress holds the VM's lock, and a plain stop would wait 10 s
  for it and fail (qemu-server PVE/QemuServer.pm:6358). A stopped VM is
  left alone.
- SHUTDOWN_GRACEFUL: ``shutdown`` with ``timeout`` = the graceful timeout and
  ``forceStop=1``: Proxmox asks the guest (ACPI, or the agent), waits, then
  stops it (a paused VM is stopped at once). One task.
- REBOOT: the same graceful shutdown, then ``start`` (background work; this
  also applies pending configuration changes, like Proxmox's own reboot,
  and works for guests that ignore ACPI). A stopped VM is started.

A VM managed by Proxmox HA is powered through ha-manager (:mod:`.ha`): its
operations wait for the state HA promised.

A VM locked by another operation (backup, migration, ...) is waited for
within the caller's deadline, then ABORTED naming the lock.

Delete stops the VM (hard, overruling a shutdown in progress; through HA
when HA manages it), then destroys it with ``purge=1`` and, for a VM with
``owner_tag``, ``destroy-unreferenced-disks=1`` (its disks, snapshots, backup
jobs, HA and replication entries go too) and removes its cloud-init
snippets. A template without ``owner_tag`` is never deleted. A VM this provider did not make (deleted only with the server's
``manage_foreign_vms``) is destroyed without ``destroy-unreferenced-disks``:
Proxmox then frees the volumes of its config whose names carry its VMID
and keeps the rest (a template's base image, another VM's volume, disks of
its VMID left out of its config). A missing VM is NotFound, which the core
reports as success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provider_core import FailedPrecondition, Outcome, PowerOp

from . import cloudinit, ha, tasks
from .inventory import Cluster, VmState, parse_tags
from .versions import OVERRULE_SHUTDOWN


def power(cluster: Cluster, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
    st = cluster.state(vm_id, allow={"suspended"})  # hibernated: start resumes it; off: already off
    timeout = max(1, round(graceful_timeout))
    if st.ha_managed and not (op is PowerOp.ON and st.paused):
        return ha.power(cluster, st, op, timeout)
    return _OPS[op](cluster, st, timeout)


def stop_params(cluster: Cluster, st: VmState) -> dict[str, Any]:
    """``overrule-shutdown`` where the node has it (never for HA resources,
    which refuse it: qemu-server PVE/API2/Qemu.pm:3754-3755)."""
    if st.ha_managed or not cluster.versions.has(st.node, OVERRULE_SHUTDOWN):
        return {}
    return {"overrule-shutdown": 1}


def _task(cluster: Cluster, st: VmState, action: str, **params: Any) -> Outcome[None]:
    return Outcome.native(None, cluster.client.post(f"{st.path}/status/{action}", **params))


def _on(cluster: Cluster, st: VmState, timeout: int) -> Outcome[None]:
    if not st.running:
        return _task(cluster, st, "start")
    return _task(cluster, st, "resume") if st.paused else Outcome.done(None)


def _off(cluster: Cluster, st: VmState, timeout: int) -> Outcome[None]:
    return _task(cluster, st, "stop", **stop_params(cluster, st)) if st.running else Outcome.done(None)


def _shutdown(cluster: Cluster, st: VmState, timeout: int) -> Outcome[None]:
    if not st.running:
        return Outcome.done(None)
    return _task(cluster, st, "shutdown", timeout=timeout, forceStop=1)


def _reboot(cluster: Cluster, st: VmState, timeout: int) -> Outcome[None]:
    if not st.running:
        return _task(cluster, st, "start")
    client = cluster.client
    first = client.post(f"{st.path}/status/shutdown", timeout=timeout, forceStop=1)

    def reboot() -> None:
        tasks.wait(client, first)
        tasks.wait(client, client.post(f"{st.path}/status/start"))

    return Outcome.later(None, reboot)


_OPS: dict[PowerOp, Callable[[Cluster, VmState, int], Outcome[None]]] = {
    PowerOp.ON: _on,
    PowerOp.OFF: _off,
    PowerOp.SHUTDOWN_GRACEFUL: _shutdown,
    PowerOp.REBOOT: _reboot,
}


def delete(cluster: Cluster, vm_id: str) -> Outcome[None]:
    client = cluster.client
    st = cluster.state(vm_id)
    path = st.path
    config: dict[str, Any] = client.get(f"{path}/config")
    owned = cluster.settings.owner_tag in parse_tags(config.get("tags"))
    if st.template and not owned:
        raise FailedPrecondition(f"VM {st.vmid} is a template this provider did not make; it is not deleted")
    if str(config.get("protection", "0")) == "1":
        raise FailedPrecondition(f"VM {st.vmid} is protected (protection=1); clear its protection flag to delete it")
    files = cloudinit.snippet_files(cluster.settings, config)
    destroy = {"purge": 1}
    if owned:
        # only for the provider's own VMs: a VM it did not make may have
        # disks of its VMID detached on purpose, kept out of its config
        destroy["destroy-unreferenced-disks"] = 1
    stop_by_ha = st.ha_managed and (st.running or ha.wants_running(st))
    if not st.running and not stop_by_ha and not files:
        upid = client.delete(path, **destroy)
        cluster.forget(st.vmid)
        return Outcome.native(None, upid)
    stop = ""
    if stop_by_ha:
        stop = ha.request(cluster, st, "stop")
    elif st.running:
        stop = client.post(f"{path}/status/stop", **stop_params(cluster, st))

    def work() -> None:
        if stop:
            tasks.wait(client, stop)
        if stop_by_ha:
            ha.wait_for(cluster, st, running=False)
        tasks.wait(client, client.delete(path, **destroy))
        cluster.forget(st.vmid)
        cloudinit.remove_files(files)

    return Outcome.later(None, work)
