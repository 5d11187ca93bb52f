"""Power for VMs managed by Proxmox HA.

For an HA resource, qemu-server's start, stop and shutdown calls only hand
the request to ha-manager and return: their task (``hastart``, ``hastop``)
ends as soon as the request is written (qemu-server PVE/API2/Qemu.pm:
3631-3642, 3749-3768, 3932-3945). The CRM and the node's LRM carry it out
in their next rounds, about 10 s each (pve-ha-manager src/PVE/HA/CRM.pm,
LRM.pm). So each operation here is background work that waits for that
task, then for the VM to be in the state asked for (its ``status/current``),
within ``ha_timeout_seconds`` (plus the graceful timeout of a shutdown). An
HA resource that ha-manager puts into ``error`` fails the operation at once.

OFF is ``crm-command stop`` with timeout 0 (hard); SHUTDOWN_GRACEFUL passes
its timeout; REBOOT waits for the stop before it asks for the start, so the
VM really restarts (and pending changes apply). A paused VM is resumed
directly (HA does not manage pauses).
"""

from __future__ import annotations

import time
from typing import Any

from provider_core import DeadlineExceeded, FailedPrecondition, Outcome, PowerOp

from . import tasks
from .inventory import Cluster, VmState

#: HA states that mean ha-manager will keep the VM running.
RUNNING_STATES = frozenset({"started"})


def wants_running(st: VmState) -> bool:
    return str(st.ha.get("state", "")) in RUNNING_STATES


def request(cluster: Cluster, st: VmState, action: str, **params: Any) -> str:
    """Ask ha-manager (through qemu-server) for start, stop or shutdown; the UPID."""
    upid: str = cluster.client.post(f"{st.path}/status/{action}", **params)
    return upid


def wait_for(cluster: Cluster, st: VmState, *, running: bool, extra: float = 0) -> None:
    """Block until HA brought the VM to running (or stopped)."""
    limit = cluster.settings.ha_timeout_seconds + extra
    end = time.monotonic() + limit
    attempt = 0
    want = "running" if running else "stopped"
    while True:
        current: dict[str, Any] = cluster.client.get(f"{st.path}/status/current")
        if current.get("status") == want:
            return
        if str(VmState(st.vmid, st.node, current).ha.get("state", "")) == "error":
            raise FailedPrecondition(
                f"HA could not bring VM {st.vmid} to {want}: its HA resource vm:{st.vmid} is in state 'error' "
                "(see ha-manager status)"
            )
        if time.monotonic() > end:
            raise DeadlineExceeded(f"HA did not bring VM {st.vmid} to {want} within {limit:.0f}s (ha_timeout_seconds)")
        time.sleep(min(2.0, 0.25 * 2 ** min(attempt, 3)))
        attempt += 1


def power(cluster: Cluster, st: VmState, op: PowerOp, timeout: int) -> Outcome[None]:
    client = cluster.client
    if op is PowerOp.ON:
        if st.running:
            return Outcome.done(None)
        first = request(cluster, st, "start")

        def start() -> None:
            tasks.wait(client, first)
            wait_for(cluster, st, running=True)

        return Outcome.later(None, start)
    if op in (PowerOp.OFF, PowerOp.SHUTDOWN_GRACEFUL) and not st.running:
        return Outcome.done(None)
    if op is PowerOp.OFF:
        stop = request(cluster, st, "stop")
        grace = 0
    elif st.running:  # SHUTDOWN_GRACEFUL, or REBOOT of a running VM
        stop = request(cluster, st, "shutdown", timeout=timeout, forceStop=1)
        grace = timeout
    else:  # REBOOT of a stopped VM: a start
        return power(cluster, st, PowerOp.ON, timeout)
    reboot = op is PowerOp.REBOOT

    def work() -> None:
        tasks.wait(client, stop)
        wait_for(cluster, st, running=False, extra=grace)
        if reboot:
            tasks.wait(client, request(cluster, st, "start"))
            wait_for(cluster, st, running=True)

    return Outcome.later(None, work)
