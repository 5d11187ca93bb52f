"""What Create and Clone share: names, ownership, VMIDs, and the background
work that finishes a VM in several Proxmox steps.

Idempotency: a VM is recognised by its name plus the ownership tag
(``owner_tag``). A second Create of a name returns the VM this provider made;
a VM of that name without the tag is someone else's (ALREADY_EXISTS). The
cluster listing shows a new VM's name only once pvestatd reported it (up to
10 s later), so a VM it lists without a name, or that a create or clone is
still writing, is read from its own configuration before deciding.

VMIDs: ``/cluster/nextid`` reserves nothing, so several clients can pick the
same id. A create learns at once that it lost (Proxmox claims the id before
answering: "VM N already exists"); a clone may learn it only inside its
task, which locks the new id with a 1 s timeout and writes its first config
there (qemu-server PVE/API2/Qemu.pm:4500-4502, 4584-4586, 4613-4615, 4735;
bpg/terraform-provider-proxmox#1521). So after starting a clone the provider
watches its task for :data:`CLAIM_SECONDS`; a clone that lost its id in that
time is retried with a fresh one. Losers never touch the id.

Every VM this provider makes carries a marker of the call that made it in its
description. A multi-step operation (clone, then configure, then grow the
disk, ...) runs as background work; when a step fails, the half-made VM is
destroyed again so that a retried Create starts afresh, but only once its
config shows that call's marker: an id that turned out to be someone else's
is left alone.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provider_core import Aborted, AlreadyExists, InvalidArgument, NotFound, ProviderError, Unavailable

from . import cloudinit, tasks
from .client import backoff
from .errors import Locked, VmidTaken
from .inventory import Cluster, VmRef, parse_tags
from .settings import TAG_RE

log = logging.getLogger(__name__)

DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
NAME_RE = re.compile(rf"^{DNS_LABEL}(?:\.{DNS_LABEL})*$")
#: Seconds a clone's task is watched for a lost VMID (Proxmox's lock timeout is 1 s).
CLAIM_SECONDS = 2.5
#: Longest wait for a VM another create or clone is still writing, before its
#: name is taken as unknown (a create takes seconds; a long clone is not waited out).
SETTLE_SECONDS = 15.0

#: One step of background work; it gets the new VM's API path (nodes/N/qemu/ID).
Step = Callable[[str], None]


@dataclass(frozen=True)
class Marker:
    """The mark one Create or Clone call leaves in its VM's description."""

    token: str

    @classmethod
    def new(cls) -> Marker:
        return cls(uuid.uuid4().hex[:16])

    @property
    def description(self) -> str:
        return f"Managed by vm-provider (creation {self.token})."

    def on(self, config: dict[str, Any]) -> bool:
        return f"(creation {self.token})" in str(config.get("description", ""))


def check_name(name: str, field: str) -> None:
    if len(name) > 253 or not NAME_RE.match(name):
        raise InvalidArgument.field(
            field, "must be a DNS name (letters, digits and '-', dot-separated labels): Proxmox requires it"
        )


def tag_value(tags: Iterable[str], owner_tag: str, field: str) -> str:
    """The ``tags`` config value: the ownership tag plus the client's tags."""
    out = [owner_tag]
    for i, tag in enumerate(tags):
        t = tag.strip().lower()
        if not TAG_RE.match(t):
            raise InvalidArgument.field(f"{field}[{i}]", "a Proxmox tag may hold only letters, digits and _ + . -")
        if t not in out:
            out.append(t)
    return ";".join(sorted(out))


def existing(cluster: Cluster, name: str, refs: list[VmRef]) -> VmRef | None:
    """The VM of this name made by this provider; AlreadyExists when the
    name belongs to a VM without the ownership tag. VMs the listing shows
    without their name yet are read from their configuration."""
    same = [r for r in refs if r.settled and r.name == name]
    for ref in refs:
        if not ref.settled:
            seen = _settle(cluster, ref)
            if seen is not None and seen.name == name:
                same.append(seen)
    same.sort(key=lambda r: r.vmid)
    owned = [r for r in same if cluster.owned(r)]
    if owned:
        return owned[0]
    if same:
        raise AlreadyExists(
            f"a VM named {name!r} (VMID {same[0].vmid}) exists but was not made by this provider "
            f"(it lacks the tag {cluster.settings.owner_tag!r})"
        )
    return None


def _settle(cluster: Cluster, ref: VmRef) -> VmRef | None:
    """The VM with its name and tags from its config, once no create or
    clone is writing it (waited for within the caller's deadline, at most
    :data:`SETTLE_SECONDS`); None when it is gone or its node does not
    answer. What a VM's config said is remembered for the next calls."""
    known = cluster.settled.get(ref.vmid)
    if known is not None:
        return replace(ref, name=known[0], tags=known[1])
    end = time.monotonic() + min(SETTLE_SECONDS, cluster.client.budget())
    attempt = 0
    while True:
        try:
            config: dict[str, Any] = cluster.client.get(f"{ref.path}/config")
        except (NotFound, Unavailable):
            return None
        lock = str(config.get("lock", "") or "")
        pause = backoff(attempt)
        if lock not in ("create", "clone"):
            cluster.settled[ref.vmid] = (str(config.get("name", "")), parse_tags(config.get("tags")))
            return replace(ref, name=cluster.settled[ref.vmid][0], tags=cluster.settled[ref.vmid][1], lock=lock)
        if time.monotonic() + pause > end:
            log.warning("VM %d is still being made by another call; its name is not known yet", ref.vmid)
            return None
        time.sleep(pause)
        attempt += 1


def lost_race(err: ProviderError, vmid: int) -> bool:
    """Whether a create or clone failed because another client took its VMID."""
    return isinstance(err, VmidTaken) or (isinstance(err, Locked) and f"lock-{vmid}.conf" in err.message)


def allocate(cluster: Cluster, post: Callable[[int], str], *, watch: bool = False) -> tuple[int, str]:
    """Pick a free VMID and run ``post(vmid)`` (a create or clone returning
    a UPID); on a lost race, pick again. With ``watch`` (clones), the task is
    watched for a lost id for :data:`CLAIM_SECONDS`."""
    attempts = cluster.settings.vmid_attempts
    for attempt in range(attempts):
        vmid = int(cluster.client.get("cluster/nextid"))
        try:
            upid = post(vmid)
            if watch:
                _claimed(cluster, vmid, upid)
            return vmid, upid
        except VmidTaken:
            log.info("VMID %d was taken by another client meanwhile; picking another (attempt %d)", vmid, attempt + 1)
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311 - jitter, not security
    raise Aborted(f"could not allocate a VMID in {attempts} attempts: other clients kept taking them; retry")


def _claimed(cluster: Cluster, vmid: int, upid: str) -> None:
    """Return once the clone holds its VMID (its task still runs after the
    claim window, or ended); VmidTaken when it lost the id to someone else."""
    end = time.monotonic() + CLAIM_SECONDS
    attempt = 0
    while True:
        done, err = tasks.outcome(cluster.client, upid)
        if done:
            if err is not None and lost_race(err, vmid):
                raise VmidTaken(f"VMID {vmid} was taken by another client while cloning: {err.message}")
            return
        if time.monotonic() > end:
            return
        time.sleep(min(0.5, 0.05 * 2**attempt))
        attempt += 1


def discard(cluster: Cluster, vmid: int, node: str, mine: Callable[[dict[str, Any]], bool]) -> bool:
    """Destroy a half-made VM, if it is the caller's (``mine`` of its
    config: a :class:`Marker`'s ``on``; best effort, errors only logged): a
    VMID that belongs to another VM is never touched. False when the
    caller's VM is still there."""
    path = cluster.vm_path(vmid, node)
    client = cluster.client
    try:
        try:
            config: dict[str, Any] = client.get(f"{path}/config")
        except NotFound:
            ref = cluster.find(str(vmid))  # it moved (a clone to another node): where it is now
            path = ref.path
            config = client.get(f"{path}/config")
        if not mine(config):
            log.warning("VMID %d does not hold the VM this call made (another client has it); left alone", vmid)
            return True
        status = client.get(f"{path}/status/current")
        if status.get("status") == "running":
            tasks.wait(client, client.post(f"{path}/status/stop"))
        tasks.wait(client, client.delete(path, purge=1, **{"destroy-unreferenced-disks": 1}))
    except NotFound:
        pass
    except ProviderError as exc:
        log.warning("could not remove the unfinished VM %d on %s: %s", vmid, node, exc)
        return False
    cluster.forget(vmid)
    return True


def finish(
    cluster: Cluster, vmid: int, node: str, upid: str, *, steps: list[Step], files: list[Path], marker: Marker
) -> Callable[[], None]:
    """Background work: wait for the first task, run the steps; on failure
    remove the VM (when it is this call's) and its snippets, and fail with
    the step's error."""

    path = cluster.vm_path(vmid, node)

    def work() -> None:
        made = False
        try:
            tasks.wait(cluster.client, upid)
            made = True
            for step in steps:
                step(path)
        except ProviderError as exc:
            discard(cluster, vmid, node, marker.on)
            cloudinit.remove_files(files)
            if not made and lost_race(exc, vmid):
                raise Aborted(f"VMID {vmid} was taken by another client meanwhile; nothing was made, create it again") from exc
            raise

    return work


def post_config(cluster: Cluster, path: str, config: dict[str, object]) -> None:
    """Apply config keys as one Proxmox task and wait for it."""
    if config:
        tasks.wait(cluster.client, cluster.client.post(f"{path}/config", **config))


def start(cluster: Cluster, path: str) -> None:
    tasks.wait(cluster.client, cluster.client.post(f"{path}/status/start"))
