"""What Create and Clone share: names, ownership, VMIDs, and the background
work that finishes a VM in several Proxmox steps.

Idempotency: a VM is recognised by its name plus the ownership tag
(``owner_tag``). A second Create of a name returns the VM this provider made;
a VM of that name without the tag is someone else's (ALREADY_EXISTS). The
cluster listing shows a new VM's name only once pvestatd reported it (up to
10 s later), so a VM it lists without a name, or that a create or clone is
still writing, is read from its own configuration before deciding.

VMIDs: ``/cluster/nextid`` reserves nothing, so several provider processes
can pick the same id; Proxmox lets exactly one create (or clone) with it
succeed and answers the others "VM N already exists" / "config file already
exists". The losers ask for a fresh id and try again (``vmid_attempts``).

A multi-step operation (clone, then configure, then grow the disk, ...) runs
as background work; when a step fails, the half-made VM is destroyed again so
that a retried Create starts afresh, and the step's error is the task's.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from provider_core import Aborted, AlreadyExists, InvalidArgument, NotFound, ProviderError, Unavailable

from . import cloudinit, tasks
from .client import backoff
from .errors import VmidTaken
from .inventory import Cluster, VmRef, parse_tags
from .settings import TAG_RE

log = logging.getLogger(__name__)

DESCRIPTION = "Managed by vm-provider."
#: Longest wait for a VM another create or clone is still writing, before its
#: name is taken as unknown (a create takes seconds; a long clone is not waited out).
SETTLE_SECONDS = 15.0
DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
NAME_RE = re.compile(rf"^{DNS_LABEL}(?:\.{DNS_LABEL})*$")

#: One step of background work; it gets the new VM's API path (nodes/N/qemu/ID).
Step = Callable[[str], None]


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


def allocate(cluster: Cluster, post: Callable[[int], str]) -> tuple[int, str]:
    """Pick a free VMID and run ``post(vmid)`` (a create or clone returning
    a UPID); on a lost race, pick again."""
    attempts = cluster.settings.vmid_attempts
    for attempt in range(attempts):
        vmid = int(cluster.client.get("cluster/nextid"))
        try:
            return vmid, post(vmid)
        except VmidTaken:
            log.info("VMID %d was taken by another client meanwhile; picking another (attempt %d)", vmid, attempt + 1)
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311 - jitter, not security
    raise Aborted(f"could not allocate a VMID in {attempts} attempts: other clients kept taking them; retry")


def discard(cluster: Cluster, vmid: int, node: str) -> None:
    """Destroy a half-made VM (best effort, errors only logged)."""
    path = cluster.vm_path(vmid, node)
    try:
        status = cluster.client.get(f"{path}/status/current")
        if status.get("status") == "running":
            tasks.wait(cluster.client, cluster.client.post(f"{path}/status/stop"))
        tasks.wait(cluster.client, cluster.client.delete(path, purge=1, **{"destroy-unreferenced-disks": 1}))
    except NotFound:
        pass
    except ProviderError as exc:
        log.warning("could not remove the unfinished VM %d on %s: %s", vmid, node, exc)
    cluster.forget(vmid)


def finish(cluster: Cluster, vmid: int, node: str, upid: str, *, steps: list[Step], files: list[Path]) -> Callable[[], None]:
    """Background work: wait for the first task, run the steps; on failure
    remove the VM and its snippets, and fail with the step's error."""

    path = cluster.vm_path(vmid, node)

    def work() -> None:
        try:
            tasks.wait(cluster.client, upid)
            for step in steps:
                step(path)
        except ProviderError:
            discard(cluster, vmid, node)
            cloudinit.remove_files(files)
            raise

    return work


def post_config(cluster: Cluster, path: str, config: dict[str, object]) -> None:
    """Apply config keys as one Proxmox task and wait for it."""
    if config:
        tasks.wait(cluster.client, cluster.client.post(f"{path}/config", **config))


def start(cluster: Cluster, path: str) -> None:
    tasks.wait(cluster.client, cluster.client.post(f"{path}/status/start"))
