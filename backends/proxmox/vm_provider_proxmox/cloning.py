"""Clone, and Create from a template (which is a full clone).

A clone is always several Proxmox steps (the clone task, then the new VM's
configuration: ownership tag, CPU and memory, NICs, cloud-init, extra disks,
then a disk resize), so it returns ``Outcome.later``; the new VMID is known
and the VM visible as soon as Clone answers.

Linked clones need a template (Proxmox refuses them otherwise; the backend
says so before asking) and stay on the template's storage. Full clones go to
placement's Datastore (Create: else ``storage``; Clone: else the source's
storage), on placement's Host (else the template's or source's node).

A temporary clone (:func:`at_snapshot`) is a full clone of a VM as one of
its snapshots holds it, for ExportDisk to read a disk at a snapshot that
only Proxmox can copy (:mod:`.sources`). It is named
``vmp-export-<vmid>-<snapshot>``, says what it is in its description, and
once made carries only the tag :data:`TEMPORARY_TAG` (the clone copies the
source's tags, the ownership tag among them): ListVMs never lists it, by
its tag or its name (:func:`temporary`), so VirtRigaud's adoption does not
take it, and Delete refuses a retagged one as someone else's. It is destroyed with purge however the
export ends; when that fails, an error is logged with its VMID, and the
VM's next export through a temporary clone destroys it first, as it does
the clones a killed provider left (:func:`_remove_leftovers`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provider_core import CloneSpec, FailedPrecondition, InvalidArgument, NotFound, Outcome, PermissionDenied, ProviderError
from provider_core.specs import DiskSpec

from . import cloudinit, newvm, tasks
from .inventory import Cluster, VmRef, VmState
from .vmconfig import GIB, Built, class_config, data_disks, disk_value, drives, free_key, primary_disk

log = logging.getLogger(__name__)

#: The only tag of a temporary clone; ListVMs skips VMs carrying it.
TEMPORARY_TAG = "vmp-export"
#: How a temporary clone's name starts.
TEMPORARY_PREFIX = "vmp-export-"
#: A temporary clone's name (``vmp-export-<vmid>-``), whatever its tags.
TEMPORARY_NAME_RE = re.compile(rf"^{TEMPORARY_PREFIX}[0-9]+-")
#: What a temporary clone's description says of it.
MADE_FOR_EXPORT = "made by vm-provider for ExportDisk"
#: What a full clone at a snapshot needs (qemu-server's clone_vm; the
#: provider's settings need these for Clone and Delete already).
CLONE_PRIVILEGES = (
    "VM.Clone and VM.Audit on /vms/{vmid}, VM.Allocate and VM.Config.Options on /vms (the new VMID: made, tagged,"
    " destroyed), Datastore.AllocateSpace on /storage/{storage}, and SDN.Use on the bridges of the VM's NICs"
    " (/sdn/zones/localnetwork/<bridge>; qemu-server checks them for a clone)"
)


@dataclass
class ClonePlan:
    source: VmRef
    source_config: dict[str, Any]
    name: str
    node: str
    full: bool
    storage: str
    built: Built
    root_gib: int | None = None
    extra_disks: list[DiskSpec] = field(default_factory=list)
    extra_field: str = "disks_json"
    files: list[Path] = field(default_factory=list)
    start: bool = False
    replace_nets: bool = False
    marker: newvm.Marker = field(default_factory=newvm.Marker.new)


def find_template(cluster: Cluster, refs: list[VmRef], name: str, node: str) -> VmRef:
    """A template by VMID or name; with several of one name (one per node
    on local storage is common), the one on ``node``."""
    matches = [r for r in refs if name in (r.id, r.name)]
    templates = [r for r in matches if r.template]
    if not templates:
        if matches:
            raise FailedPrecondition(f"VM {matches[0].vmid} ({name!r}) is not a template; convert it to a template first")
        raise NotFound(f"template {name!r} does not exist (image_json.TemplateName)")
    local = [r for r in templates if r.node == node]
    return (local or templates)[0]


def check_root_size(config: dict[str, Any], gib: int | None, field_name: str) -> None:
    disk = primary_disk(config)
    if gib is not None and disk is not None and gib * GIB < disk.size_bytes:
        raise InvalidArgument.field(
            field_name, f"is smaller than the source disk {disk.key} ({disk.size_bytes / GIB:g} GiB); disks only grow"
        )


def run(cluster: Cluster, plan: ClonePlan) -> Outcome[str]:
    """Start the clone (VMID allocated safely) and return the later work."""
    client = cluster.client
    src = plan.source
    params: dict[str, Any] = {"name": plan.name, "full": int(plan.full), "description": plan.marker.description}
    if plan.node != src.node:
        params["target"] = plan.node
    if plan.full and plan.storage:
        params["storage"] = plan.storage
    try:
        vmid, upid = newvm.allocate(cluster, lambda vmid: client.post(f"{src.path}/clone", newid=vmid, **params), watch=True)
    except BaseException:
        cloudinit.remove_files(plan.files)
        raise
    cluster.remember(vmid, plan.node)
    root = primary_disk(plan.source_config)
    cluster.learn_boot_disk(vmid, root.key if root else None)
    steps: list[newvm.Step] = [lambda path: _configure(cluster, plan, path)]
    if plan.root_gib is not None:
        steps.append(lambda path: grow_root(cluster, path, plan.root_gib or 0))
    if plan.start:
        steps.append(lambda path: newvm.start(cluster, path))
    work = newvm.finish(cluster, vmid, plan.node, upid, steps=steps, files=plan.files, marker=plan.marker)
    return Outcome.later(str(vmid), work)


def _configure(cluster: Cluster, plan: ClonePlan, path: str) -> None:
    cfg = plan.source_config
    b = Built()
    b.update(plan.built)
    root = primary_disk(cfg)
    storage = plan.storage or (root.storage if root else "") or cluster.settings.storage
    if cloudinit.needs_drive(b.config) and not any(d.is_cloudinit for d in drives(cfg)):
        key = "ide2" if "ide2" not in cfg else free_key(cfg, "ide")
        b.set(key, f"{storage}:cloudinit", "cloud-init")
    taken = dict(cfg)
    for i, disk in enumerate(plan.extra_disks):
        key = free_key(taken, "scsi")
        taken[key] = "new"
        b.set(key, disk_value(storage, disk, f"{plan.extra_field}[{i + 1}]"), f"{plan.extra_field}[{i + 1}]")
    if plan.replace_nets:
        surplus = sorted(k for k in cfg if k.startswith(("net", "ipconfig")) and k not in b.config and k[-1].isdigit())
        if surplus:
            b.config["delete"] = ",".join(surplus)
    try:
        newvm.post_config(cluster, path, b.config)
    except InvalidArgument as exc:
        raise b.remap(exc) from exc


def grow_root(cluster: Cluster, path: str, gib: int) -> None:
    """Grow the VM's primary disk to ``gib`` unless it is that big already."""
    config = cluster.client.get(f"{path}/config")
    disk = primary_disk(config)
    if disk is not None and disk.size_bytes < gib * GIB:
        tasks.wait(cluster.client, cluster.client.put(f"{path}/resize", disk=disk.key, size=f"{gib}G"))


def clone(cluster: Cluster, spec: CloneSpec) -> Outcome[str]:
    """Clone RPC: full or linked copy of ``source_vm_id`` named ``target_name``,
    with class_json overrides and customize_json applied."""
    s = cluster.settings
    newvm.check_name(spec.target_name, "target_name")
    refs = cluster.vms()
    found = newvm.existing(cluster, spec.target_name, refs)
    if found is not None:
        return Outcome.done(found.id)
    source = next((r for r in refs if r.id == spec.source_vm_id.strip()), None)
    if source is None:
        raise NotFound(f"source VM {spec.source_vm_id!r} does not exist")
    if spec.linked and spec.placement.datastore:
        raise InvalidArgument.field("placement_json.Datastore", "a linked clone stays on its template's storage; leave it empty")
    source_config: dict[str, Any] = cluster.client.get(f"{source.path}/config")
    if spec.linked and not (source.template or int(source_config.get("template", 0) or 0)):  # the config: the listing lags
        raise FailedPrecondition(
            f"a linked clone needs a template, and VM {source.vmid} is not one: convert it to a template, or ask for a full clone"
        )
    c = spec.customize
    built = Built()
    built.set("tags", newvm.tag_value(c.tags, s.owner_tag, "customize_json.tags"), "customize_json.tags")
    built.update(class_config(spec.vm_class, s, spec.placement.datastore or s.storage, new=False, current=source_config))
    if "efidisk0" in built.config and "efidisk0" in source_config:
        del built.config["efidisk0"]
    built.update(cloudinit.customization(c, spec.target_name, s))
    files: list[Path] = []
    if c.user_data:
        value, files = cloudinit.write_snippets(s, c.user_data.encode(), b"", "customize_json.userData")
        built.set("cicustom", value, "customize_json.userData")
    plan = ClonePlan(
        source=source,
        source_config=source_config,
        name=spec.target_name,
        node=spec.placement.host or source.node,
        full=not spec.linked,
        storage=spec.placement.datastore,
        built=built,
        files=files,
    )
    return run(cluster, plan)


def from_template(cluster: Cluster, template: VmRef, plan_args: dict[str, Any]) -> Outcome[str]:
    """Create from a template: a full clone configured like a new VM."""
    config: dict[str, Any] = cluster.client.get(f"{template.path}/config")
    disks: list[DiskSpec] = plan_args.pop("disks")
    root = disks[0].size_gib if disks else None
    check_root_size(config, root, "disks_json[0].SizeGiB")
    built: Built = plan_args["built"]
    if "efidisk0" in built.config and "efidisk0" in config:
        del built.config["efidisk0"]
    if not data_disks(config):
        raise FailedPrecondition(f"template {template.vmid} has no disk to clone")
    plan = ClonePlan(source=template, source_config=config, full=True, root_gib=root, extra_disks=disks[1:], **plan_args)
    return run(cluster, plan)


def temporary(cluster: Cluster, ref: VmRef) -> bool:
    """Whether a listed VM is a temporary clone: it carries
    :data:`TEMPORARY_TAG`, this process is making it, or it bears a
    temporary clone's name (:data:`TEMPORARY_NAME_RE`): one still being
    made, or one a provider killed while Proxmox copied could not retag,
    whose tags are the source's, the ownership tag among them."""
    return TEMPORARY_TAG in ref.tags or ref.vmid in cluster.temporary or bool(TEMPORARY_NAME_RE.match(ref.name))


def temporary_name(vmid: int, snapshot: str) -> str:
    """``vmp-export-<vmid>-<snapshot>`` as a DNS name (Proxmox's rule for
    VM names): a snapshot name's ``_`` becomes ``-``."""
    return f"{TEMPORARY_PREFIX}{vmid}-" + re.sub(r"[^A-Za-z0-9-]+", "-", snapshot).strip("-")


@contextmanager
def at_snapshot(cluster: Cluster, source: VmState, snapshot: str, storage: str) -> Iterator[str]:
    """A full clone of ``source`` as ``snapshot`` holds it, on the source's
    node with its disks on ``storage`` (Proxmox copies every disk of the
    snapshot: the clone API has no choice of disks), stopped; yields its API
    path once the clone task has ended, and destroys it (purge) when the
    block ends, however it ends. While the source is copied, Proxmox holds
    a lock on its config: exclusive when it runs, shared when stopped."""
    client = cluster.client
    _remove_leftovers(cluster, source)
    marker = newvm.Marker.new()
    description = (
        f"{_temporary_of(source.vmid)} {snapshot}, {MADE_FOR_EXPORT}; destroyed when the export ends. {marker.description}"
    )
    params = {
        "name": temporary_name(source.vmid, snapshot),
        "full": 1,
        "snapname": snapshot,
        "storage": storage,
        "description": description,
    }
    tried: list[int] = []

    def post(vmid: int) -> str:
        tried.append(vmid)
        cluster.temporary.add(vmid)  # hidden from ListVMs from the start
        upid: str = client.post(f"{source.path}/clone", newid=vmid, **params)
        return upid

    try:
        vmid, upid = newvm.allocate(cluster, post, watch=True)
    except BaseException as exc:
        cluster.temporary.difference_update(tried)  # nothing was made
        if isinstance(exc, PermissionDenied):
            raise _denied(exc, source, snapshot, storage) from None
        if isinstance(exc, ProviderError):
            _explain(exc, f"a temporary full clone of VM {source.vmid} at snapshot {snapshot!r} was refused", storage)
        raise
    cluster.temporary.difference_update(tried[:-1])  # the ids other clients took meanwhile
    cluster.remember(vmid, source.node)
    path = cluster.vm_path(vmid, source.node)
    log.info("VM %d: temporary clone %d (%s) started on %s", source.vmid, vmid, params["name"], source.node)
    copying = upid
    try:
        try:
            tasks.wait(client, upid)
            copying = ""
        except ProviderError as exc:
            _explain(exc, f"the temporary full clone {vmid} of VM {source.vmid} at snapshot {snapshot!r} failed", storage)
            raise
        try:  # its own tag only (not the source's ownership tag), and nothing that keeps it or starts it
            newvm.post_config(cluster, path, {"tags": TEMPORARY_TAG, "protection": 0, "onboot": 0})
        except PermissionDenied as exc:
            raise _denied(exc, source, snapshot, storage) from None
        yield path
    finally:
        _remove(cluster, source, vmid, copying=copying, marker=marker, name=str(params["name"]))


def _temporary_of(vmid: int) -> str:
    """How the description of a temporary clone of VM ``vmid`` begins."""
    return f"Temporary full clone of VM {vmid} at snapshot"


def _remove_leftovers(cluster: Cluster, source: VmState) -> None:
    """Destroy the temporary clones of ``source`` an earlier export left:
    its provider was killed, or their destroy failed. The caller holds the
    VM's lock, so no other export of it makes one now. A leftover is named
    ``vmp-export-<vmid>-...`` and its description says it is a temporary
    clone of this VM (a VM that only bears such a name is left alone); one
    still locked (Proxmox still copying it for a killed provider) is left
    for the next export. A leftover never reset keeps the snapshot's
    ``protection``, which is lifted first."""
    prefix = f"{TEMPORARY_PREFIX}{source.vmid}-"
    head = _temporary_of(source.vmid)

    def leftover(config: dict[str, Any]) -> bool:
        description = str(config.get("description", ""))
        return description.startswith(head) and MADE_FOR_EXPORT in description

    for ref in cluster.vms():
        if ref.vmid in cluster.temporary or ref.lock or not ref.name.startswith(prefix):
            continue
        try:
            config: dict[str, Any] = cluster.client.get(f"{ref.path}/config")
        except NotFound:
            continue
        except ProviderError as exc:  # the export goes on; the next one tries again
            log.warning("could not read VM %d (%s) to tell whether it is a leftover temporary clone: %s", ref.vmid, ref.name, exc)
            continue
        if not leftover(config):
            continue
        log.warning("VM %d: removing the temporary clone VM %d (%s) an earlier export left", source.vmid, ref.vmid, ref.name)
        if str(config.get("protection", "0")) not in ("0", ""):  # the snapshot's, copied: it was never reset
            try:
                newvm.post_config(cluster, ref.path, {"protection": 0})
            except ProviderError as exc:
                log.warning("could not lift the protection of the temporary clone VM %d: %s", ref.vmid, exc)
        if not newvm.discard(cluster, ref.vmid, ref.node, leftover):
            log.error("the temporary clone VM %d (%s) an earlier export left could NOT be destroyed", ref.vmid, ref.name)


def _explain(exc: ProviderError, what: str, storage: str) -> None:
    """Say in ``exc`` that it is about the temporary clone, and what that copies."""
    exc.message = f"{what} (it copies every disk of the VM onto storage {storage!r}): {exc.message}"


def _denied(exc: PermissionDenied, source: VmState, snapshot: str, storage: str) -> PermissionDenied:
    needs = CLONE_PRIVILEGES.format(vmid=source.vmid, storage=storage)
    return PermissionDenied(f"a temporary full clone at snapshot {snapshot!r} needs {needs}: {exc.message}")


def _remove(cluster: Cluster, source: VmState, vmid: int, *, copying: str, marker: newvm.Marker, name: str) -> None:
    """Destroy a temporary clone, stopping its clone task (``copying``, the
    UPID of one not seen to end) first: qemu-server then removes what it
    made. Never raises; a clone left behind is logged as an error (its tag
    or name hides it from ListVMs, and the VM's next export through a
    temporary clone destroys it: :func:`_remove_leftovers`)."""
    try:
        if copying:
            tasks.stop(cluster.client, copying)
    except ProviderError as exc:
        log.warning("the clone task %s of temporary clone VM %d could not be stopped: %s", copying, vmid, exc)
    gone = newvm.discard(cluster, vmid, source.node, marker.on)
    cluster.temporary.discard(vmid)  # no longer being made: a leftover for the next export
    if gone:
        log.info("VM %d: temporary clone %d (%s) destroyed", source.vmid, vmid, name)
        return
    log.error(
        "the temporary clone VM %d (%s) of VM %d on node %s was NOT destroyed: destroy it by hand (qm destroy %d --purge);"
        " the VM's next export through a temporary clone tries again",
        vmid,
        name,
        source.vmid,
        source.node,
        vmid,
    )
