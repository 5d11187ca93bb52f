"""Reconfigure: bring a VM to desired_json.

What changes: Name, Class (CPU -> ``vcpus`` of a VM with CPU hotplug,
within its ``cores``, else ``cores`` with one socket; MemoryMiB ->
``memory``, ExtraConfig keys), Tags, Networks (``netN``/``ipconfigN``; NICs
beyond the list are removed), Disks (``disks_json[i]`` is the i-th disk:
larger sizes are grown with ``resize``, online; entries beyond the VM's
disks are added). What is refused (INVALID_ARGUMENT): shrinking or removing
a disk, changing the firmware, and UserData/MetaData other than what the VM
was created with (cloud-init runs at creation). Image is a create-time input
and is not compared; a Placement Host other than the VM's node is refused
(that is a migration, FAILED_PRECONDITION).

Running VMs: Proxmox applies some changes at once (name, tags, disk growth,
and NICs, disks, vCPUs or memory where the VM's ``hotplug`` allows, see
:mod:`.hotplug` for CPU and memory) and keeps the rest pending until the
next reboot. CPU and memory changes a running VM cannot take (no hotplug,
beyond its maximum vCPUs, shrinking, memory between DIMM sizes) are refused
naming what they need; with ``"pending"`` only those Proxmox would try at
once (shrinking, memory between DIMM sizes) are refused. With ``reconfigure_running = "refuse"``
(the default) a change that would wait for a reboot is refused before
anything is applied: FAILED_PRECONDITION naming each change. Should Proxmox
still leave something pending, the task fails saying which changes wait for
a reboot (they stay pending; Power REBOOT applies them). With ``"pending"``
such changes are written and stay pending: the task succeeds, the backend
logs them, and Describe's ``provider_raw_json`` lists them under
``pending``.
"""

from __future__ import annotations

import logging
from typing import Any

from provider_core import DesiredVM, FailedPrecondition, InvalidArgument, Outcome
from provider_core.specs import DiskSpec, NetworkAttachment, VMClass

from . import cloudinit, hotplug, newvm, tasks
from .describe import split_pending
from .inventory import Cluster, parse_tags
from .vmconfig import GIB, Built, class_config, data_disks, disk_value, free_key, network_config, same_net

log = logging.getLogger(__name__)

#: Keys Proxmox changes on a running VM at once, whatever its hotplug setting
#: (qemu-server PVE/QemuServer.pm:4594-4611, ``$fast_plug_option`` and the
#: cloud-init options). Not ``agent``: it waits for a reboot (5207-5227).
LIVE_KEYS = frozenset({"name", "description", "tags", "onboot", "protection", "startup", "hookscript", "delete"})
LIVE_KEYS |= frozenset({"ciuser", "cipassword", "citype", "ciupgrade", "cicustom", "sshkeys", "nameserver", "searchdomain"})
FIELD = "desired_json"


def _needs_reboot(key: str, config: dict[str, Any]) -> bool:
    """Whether Proxmox keeps a change of ``key`` pending on a running VM
    (CPU and memory: :func:`hotplug.online_refusals`)."""
    hot = hotplug.features(config)
    if key in LIVE_KEYS:
        return False
    if key.startswith("net"):
        return "network" not in hot
    if key.startswith(("scsi", "virtio", "sata")):
        return "disk" not in hot
    return key not in ("vcpus", "memory")


def plan(cluster: Cluster, config: dict[str, Any], desired: DesiredVM, node: str) -> tuple[Built, list[tuple[str, str]]]:
    """The config changes and the disk resizes ((key, size)) that bring the
    VM to ``desired``."""
    s = cluster.settings
    b = Built()
    if desired.name and desired.name != config.get("name"):
        newvm.check_name(desired.name, f"{FIELD}.Name")
        b.set("name", desired.name, f"{FIELD}.Name")
    if desired.placement and desired.placement.host and desired.placement.host != node:
        raise FailedPrecondition(
            f"VM runs on node {node}; moving it to {desired.placement.host} is a migration, not a reconfiguration"
        )
    disks = data_disks(config)
    storage = (desired.placement.datastore if desired.placement else "") or (disks[0].storage if disks else s.storage)
    if desired.vm_class is not None:
        b.update(_class(cluster, config, desired.vm_class, storage))
    if desired.tags is not None:
        tags = newvm.tag_value(desired.tags, s.owner_tag, f"{FIELD}.Tags")
        if parse_tags(tags) != parse_tags(config.get("tags")):
            b.set("tags", tags, f"{FIELD}.Tags")
    if desired.networks is not None:
        b.update(_networks(cluster, config, desired.networks))
    _user_data(cluster, config, desired)
    resizes: list[tuple[str, str]] = []
    if desired.disks is not None:
        b.update(_disks(config, desired.disks, storage, resizes))
    return b, resizes


def _class(cluster: Cluster, config: dict[str, Any], vc: VMClass, storage: str) -> Built:
    """CPU (as cores of one socket), memory and ExtraConfig keys that differ."""
    b = Built()
    want = class_config(vc, cluster.settings, storage, new=False, field_name=f"{FIELD}.Class", current=config)
    if vc.firmware is not None and (want.config.get("bios") or "seabios") != config.get("bios", "seabios"):
        raise InvalidArgument.field(f"{FIELD}.Class.Firmware", "cannot change on an existing VM")
    for key in ("bios", "machine", "efidisk0", "tpmstate0"):
        want.config.pop(key, None)
    for key, value in want.config.items():
        if str(config.get(key, "")) != str(value):
            b.set(key, value, want.origins[key])
    return b


def _networks(cluster: Cluster, config: dict[str, Any], networks: list[NetworkAttachment]) -> Built:
    """NICs and addressing that differ; NICs beyond the list are deleted."""
    b = Built()
    nets = network_config(networks, cluster.settings, f"{FIELD}.Networks")
    for key, value in nets.config.items():
        same = same_net(str(config.get(key, "")), value) if key.startswith("net") else str(config.get(key, "")) == value
        if not same:
            b.set(key, value, nets.origins[key])
    surplus = sorted(k for k in config if k.startswith(("net", "ipconfig")) and k[-1].isdigit() and k not in nets.config)
    if surplus:
        b.config["delete"] = ",".join(surplus)
    return b


def _disks(config: dict[str, Any], wanted: list[DiskSpec], storage: str, resizes: list[tuple[str, str]]) -> Built:
    """New disks to add; growth goes to ``resizes``. Shrinking or removing
    a disk is refused."""
    b = Built()
    disks = data_disks(config)
    if len(wanted) < len(disks):
        raise InvalidArgument.field(
            f"{FIELD}.Disks", f"names {len(wanted)} disk(s) but the VM has {len(disks)}; Reconfigure does not remove disks"
        )
    taken = dict(config)
    for i, want_disk in enumerate(wanted):
        origin = f"{FIELD}.Disks[{i}].SizeGiB"
        if i >= len(disks):
            key = free_key(taken, "scsi")
            taken[key] = "new"
            b.set(key, disk_value(storage, want_disk, f"{FIELD}.Disks[{i}]"), origin)
            continue
        have, want_bytes = disks[i].size_bytes, want_disk.size_gib * GIB
        if want_bytes < have:
            raise InvalidArgument.field(origin, f"{disks[i].key} is {have / GIB:g} GiB; disks cannot shrink")
        if want_bytes > have:
            resizes.append((disks[i].key, f"{want_disk.size_gib}G"))
    return b


def _user_data(cluster: Cluster, config: dict[str, Any], desired: DesiredVM) -> None:
    wanted = desired.user_data.cloud_init_data if desired.user_data else ""
    if wanted and cloudinit.read_snippet(cluster.settings, config, "user") != wanted.encode():
        raise InvalidArgument.field(
            f"{FIELD}.UserData", "differs from the VM's cloud-init user data, which is applied at creation only"
        )
    meta = desired.meta_data.meta_data_yaml if desired.meta_data else ""
    if meta and cloudinit.read_snippet(cluster.settings, config, "meta") != meta.encode():
        raise InvalidArgument.field(
            f"{FIELD}.MetaData", "differs from the VM's cloud-init meta data, which is applied at creation only"
        )


def reconfigure(cluster: Cluster, vm_id: str, desired: DesiredVM) -> Outcome[None]:
    client = cluster.client
    ref = cluster.state(vm_id)
    path = ref.path
    config, pending = split_pending(client.get(f"{path}/pending") or [])
    effective = dict(config)
    for key, change in pending.items():
        if "pending" in change:
            effective[key] = change["pending"]
    b, resizes = plan(cluster, effective, desired, ref.node)
    if not b.config and not resizes:
        return Outcome.done(None)
    running = ref.running  # paused included: QEMU runs
    refused = hotplug.online_refusals(config, b.config) if running else {}
    if cluster.settings.reconfigure_running == "pending":  # what Proxmox would not try online may wait
        refused = {k: why for k, why in refused.items() if hotplug.applied_online(k, config)}
    if running and (cluster.settings.reconfigure_running == "refuse" or refused):
        waiting = [k for k in b.config if k not in refused and _needs_reboot(k, config)]
        if cluster.settings.reconfigure_running == "pending":
            waiting = []
        if refused or waiting:
            listed = [f"{k} ({config.get(k, 'unset')} -> {b.config[k]}): {why}" for k, why in refused.items()]
            listed += [f"{k} ({config.get(k, 'unset')} -> {b.config[k]})" for k in waiting]
            raise FailedPrecondition(
                f"VM {ref.vmid} is running and these changes need a reboot: {'; '.join(listed)}; "
                "power it off first (nothing was changed)"
            )
    changed = set(b.config) - {"delete"}

    def work() -> None:
        try:
            newvm.post_config(cluster, path, b.config)
        except InvalidArgument as exc:
            raise b.remap(exc) from exc
        for key, size in resizes:
            tasks.wait(client, client.put(f"{path}/resize", disk=key, size=size))
        if not running:
            return
        _, now_pending = split_pending(client.get(f"{path}/pending") or [])
        waiting = sorted(k for k in now_pending if k in changed or k in b.config.get("delete", "").split(","))
        if not waiting:
            return
        if cluster.settings.reconfigure_running == "pending":
            log.info("VM %s: changes pending until its next reboot: %s", ref.vmid, ", ".join(waiting))
            return
        raise FailedPrecondition(
            f"VM {ref.vmid}: Proxmox applied these changes to the configuration but they wait for a reboot: "
            f"{', '.join(waiting)} (Power REBOOT applies them)"
        )

    return Outcome.later(None, work)
