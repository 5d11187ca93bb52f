"""Create: a new VM from a template, an image (URL or Path), or blank.

Choices, in the order they apply:

- node: placement Host, else ``node`` from the settings, else (from a
  template) the template's node, else the online node with most free
  memory; in every case one that has the VM's storages and bridges
  (:mod:`.placement`);
- storage: placement Datastore, else ``storage``;
- disks: ``disks_json[i]`` is the VM's ``scsi{i}``. With an image the first
  entry sizes the root disk (grown after the import or clone; smaller than
  the image is refused) and the others are added empty. Without any entry
  the root disk is ``DiskDefaults.SizeGiB`` or ``default_disk_gib``;
- NICs: ``networks_json[i]`` is ``net{i}`` (Bridge, else NetworkName, else
  ``bridge``) with ``ipconfig{i}`` (static, or DHCP);
- cloud-init: a cloud-init drive is added when there is anything for it
  (addressing, ExtraConfig ci* settings, user data); ``user_data`` and
  ``meta_data`` go to snippets (see :mod:`cloudinit`);
- a template is cloned in full (linked clones are Clone's business); a
  TemplateName that is a volume id (``cloud:import/noble.qcow2``, what
  ImagePrepare of an image file answers as its id) is that image, as if
  given as Path;
- a URL is downloaded to ``import_storage`` (checksum verified by Proxmox,
  also for an image already there; see :mod:`.images`) and imported with
  ``import-from``; an ISO is attached as CD-ROM in front of a blank disk.

A Create that is one Proxmox task (blank, or from an image Path) returns
that task's UPID; anything longer returns background work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from provider_core import CreateSpec, InvalidArgument, Outcome, ProviderError
from provider_core.specs import DiskSpec, VMImage

from . import cloning, cloudinit, images, newvm, placement, tasks
from .cloning import find_template
from .inventory import Cluster
from .versions import IMPORT_IMAGES
from .vmconfig import GIB, Built, class_config, disk_value, network_config


def create(cluster: Cluster, spec: CreateSpec) -> Outcome[str]:
    if spec.image.source == "template" and images.VOLID_RE.match(spec.image.template_name):
        as_path = spec.image.model_copy(update={"path": spec.image.template_name, "template_name": ""})
        spec = spec.model_copy(update={"image": as_path})
    s = cluster.settings
    newvm.check_name(spec.name, "name")
    tags = newvm.tag_value(spec.tags, s.owner_tag, "tags")
    listing = cluster.listing()
    found = newvm.existing(cluster, spec.name, listing.vms)
    if found is not None:
        return Outcome.done(found.id)
    if spec.user_data or spec.meta_data:
        cloudinit.require_snippets(s, "user_data")
    storage = spec.placement.datastore or s.storage
    image = spec.image
    template = None
    if image.source == "template":
        template = find_template(cluster, listing.vms, image.template_name, spec.placement.host or s.node)
    needs = placement.Needs()
    needs.storage(storage, "placement_json.Datastore" if spec.placement.datastore else "settings.storage")
    for i, att in enumerate(spec.networks):
        origin = f"networks_json[{i}].Bridge" if att.bridge else f"networks_json[{i}].NetworkName"
        needs.bridge(att.bridge or att.network_name or s.bridge, origin if att.bridge or att.network_name else "settings.bridge")
    url_file = images.url_target(image, s) if image.source == "url" else None
    if image.source == "path":
        needs.storage(images.path_volume(image, s).storage, "image_json.Path")
    elif url_file is not None:
        needs.storage(url_file.storage, "settings.import_storage")
        needs.feature = None if url_file.is_iso else IMPORT_IMAGES
    node = placement.choose(cluster, listing, needs, host=spec.placement.host, prefer=template.node if template else "")

    b = Built()
    b.set("tags", tags, "tags")
    b.update(class_config(spec.vm_class, s, storage, new=template is None))
    b.update(network_config(spec.networks, s))
    files: list[Path] = []
    if spec.user_data or spec.meta_data:
        value, files = cloudinit.write_snippets(s, spec.user_data, spec.meta_data, "user_data")
        b.set("cicustom", value, "user_data")

    if template is not None:
        return cloning.from_template(
            cluster,
            template,
            {
                "name": spec.name,
                "node": node,
                "storage": storage,
                "built": b,
                "disks": list(spec.disks),
                "files": files,
                "start": s.start_on_create,
                "replace_nets": bool(spec.networks),
            },
        )
    return _create_new(cluster, spec, NewVm(node=node, storage=storage, built=b, files=files, url_file=url_file))


def _root_gib(spec: CreateSpec, default: int) -> int:
    if spec.disks:
        return spec.disks[0].size_gib
    dd = spec.vm_class.disk_defaults
    return dd.size_gib if dd and dd.size_gib else default


@dataclass
class NewVm:
    """What a Create of a new (not cloned) VM sends and does afterwards."""

    node: str
    storage: str
    built: Built
    files: list[Path]
    url_file: images.ImageFile | None = None
    steps: list[newvm.Step] = field(default_factory=list)
    marker: newvm.Marker = field(default_factory=newvm.Marker.new)
    boot: list[str] | None = None
    first_blank: int = 0
    iso: bool = False


def _create_new(cluster: Cluster, spec: CreateSpec, plan: NewVm) -> Outcome[str]:
    s, client, b = cluster.settings, cluster.client, plan.built
    b.set("name", spec.name, "name")
    b.set("description", plan.marker.description, "name")
    b.set("scsihw", "virtio-scsi-single", "disks_json")
    if s.guest_agent:
        b.set("agent", "enabled=1", "settings.guest_agent")
    plan.boot = ["scsi0", "net0"] if spec.networks else ["scsi0"]
    if spec.image.source in ("url", "path"):
        _image(cluster, spec, plan)
    disks = list(spec.disks) or [DiskSpec(size_gib=_root_gib(spec, s.default_disk_gib))]
    for i, disk in enumerate(disks[plan.first_blank :], start=plan.first_blank):
        b.set(f"scsi{i}", disk_value(plan.storage, disk, f"disks_json[{i}]"), f"disks_json[{i}]")
    if plan.boot is not None:
        b.set("boot", "order=" + ";".join(plan.boot), "image_json")
    if cloudinit.needs_drive(b.config, spec.user_data):
        b.set("ide0" if plan.iso else "ide2", f"{plan.storage}:cloudinit", "cloud-init")
    if s.start_on_create and plan.steps:
        plan.steps.append(lambda path: newvm.start(cluster, path))
    elif s.start_on_create:
        b.set("start", 1, "settings.start_on_create")

    def post(vmid: int) -> str:
        try:
            upid: str = client.post(f"nodes/{plan.node}/qemu", vmid=vmid, **b.config)
        except InvalidArgument as exc:
            raise b.remap(exc) from exc
        return upid

    try:
        vmid, upid = newvm.allocate(cluster, post)
    except BaseException:
        cloudinit.remove_files(plan.files)
        raise
    cluster.remember(vmid, plan.node)
    cluster.learn_boot_disk(vmid, "scsi0")
    if not plan.steps and not plan.files:
        return Outcome.native(str(vmid), upid)
    # background work also when only snippets were written: a failed create task removes them
    work = newvm.finish(cluster, vmid, plan.node, upid, steps=plan.steps, files=plan.files, marker=plan.marker)
    return Outcome.later(str(vmid), work)


def _image(cluster: Cluster, spec: CreateSpec, plan: NewVm) -> None:
    """The image's part of the plan: a Path image is attached at create, a
    URL's is downloaded (or verified) and attached by a later step."""
    image = spec.image
    if plan.url_file is not None:  # its node has the storage and takes disk images (placement)
        f = plan.url_file
        entry = None
    else:
        f = images.path_volume(image, cluster.settings)
        entry = images.present(cluster.client, plan.node, f)
        if entry is None:
            raise InvalidArgument.field("image_json.Path", f"image {f.volid} does not exist on node {plan.node}")
    attach = Built()
    root = None
    if f.is_iso:
        attach.set("ide2", f"{f.volid},media=cdrom", "image_json")
        plan.boot, plan.iso = ["ide2", "scsi0"], True
    else:
        attach.set("scsi0", f"{plan.storage}:0,import-from={f.volid},discard=on", "image_json")
        plan.boot, plan.first_blank = ["scsi0"], 1
        root = spec.disks[0].size_gib if spec.disks else None
    if entry is None:  # the VM is made first (its id answers the client); the image follows the download
        order = plan.boot
        plan.steps.append(
            lambda path: _download_and_attach(
                cluster, path, node=plan.node, f=f, image=image, attach=attach, boot=order, grow=root
            )
        )
        plan.boot = None
        return
    plan.built.update(attach)
    if root is not None and root * GIB > int(entry.get("size", 0) or 0):
        plan.steps.append(lambda path: cloning.grow_root(cluster, path, root))


def _download_and_attach(
    cluster: Cluster,
    path: str,
    *,
    node: str,
    f: images.ImageFile,
    image: VMImage,
    attach: Built,
    boot: list[str],
    grow: int | None,
) -> None:
    """Fetch the image (with a checksum, have Proxmox verify the one it may
    have already), attach it (import-from for a disk, CD-ROM for an ISO),
    boot from it, and grow the imported disk to the requested size."""
    client = cluster.client
    if image.checksum or images.present(client, node, f) is None:
        try:
            tasks.wait(client, images.download(client, node, f, image))
        except ProviderError:
            if image.checksum or images.present(client, node, f) is None:
                raise  # (without a checksum: a concurrent Create may have fetched it meanwhile)
    newvm.post_config(cluster, path, {**attach.config, "boot": "order=" + ";".join(boot)})
    if grow is not None:
        cloning.grow_root(cluster, path, grow)
