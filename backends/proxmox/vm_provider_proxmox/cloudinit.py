"""cloud-init through Proxmox: its own fields, and snippets for the rest.

Proxmox generates a cloud-init drive from the VM's config: user, password
and SSH keys (``ciuser``, ``cipassword``, ``sshkeys``, set through
class_json.ExtraConfig), addressing (``ipconfigN`` from networks_json,
``nameserver``, ``searchdomain``) and the hostname (the VM's name).

A request's complete ``user_data`` (and ``meta_data``) replaces the generated
parts through ``cicustom`` snippets. The Proxmox API cannot upload snippets
(its upload call takes only iso, vztmpl and import content), so the provider
writes them into the snippets storage's directory as mounted on its own host
(``snippets_dir``, e.g. a shared NFS or CephFS storage) and references them
as ``<snippets_storage>:snippets/<file>``. Without that configuration a
request carrying user data is refused (FAILED_PRECONDITION); it is never
dropped silently.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provider_core import FailedPrecondition, InvalidArgument
from provider_core.specs import Customization

from .settings import ProxmoxSettings
from .vmconfig import Built

SNIPPET_PREFIX = "vm-provider-"
CICUSTOM_RE = re.compile(r"(?:^|,)(user|meta|network|vendor)=([^,]+)")


def require_snippets(settings: ProxmoxSettings, what: str) -> Path:
    if settings.snippets_dir is None or not settings.snippets_storage:
        raise FailedPrecondition(
            f"{what} needs a snippets storage: Proxmox takes complete cloud-init user-data only as a snippet "
            "(cicustom). Configure snippets_storage and snippets_dir in [backends.proxmox], or send the settings "
            "through class_json.ExtraConfig (ciuser, sshkeys, ...) instead"
        )
    return settings.snippets_dir


def write_snippets(settings: ProxmoxSettings, user_data: bytes, meta_data: bytes, what: str) -> tuple[str, list[Path]]:
    """Write the snippets; return the ``cicustom`` value and the files.
    File names are random, so that clients never overwrite each other's."""
    root = require_snippets(settings, what) / "snippets"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FailedPrecondition(f"cannot create the snippets directory {root}: {exc.strerror}") from None
    token = uuid.uuid4().hex[:16]
    parts: list[str] = []
    files: list[Path] = []
    for kind, data in (("user", user_data), ("meta", meta_data)):
        if not data:
            continue
        name = f"{SNIPPET_PREFIX}{token}-{kind}.yaml"
        path = root / name
        tmp = root / f".{name}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            tmp.replace(path)
        except OSError as exc:
            raise FailedPrecondition(f"cannot write the cloud-init snippet into {root}: {exc.strerror}") from None
        files.append(path)
        parts.append(f"{kind}={settings.snippets_storage}:snippets/{name}")
    return ",".join(parts), files


def snippet_files(settings: ProxmoxSettings, config: Mapping[str, Any]) -> list[Path]:
    """The snippet files of ours a VM's ``cicustom`` names (others are left alone)."""
    if settings.snippets_dir is None:
        return []
    files = []
    for _kind, volume in CICUSTOM_RE.findall(str(config.get("cicustom", ""))):
        storage, _, rest = volume.partition(":")
        name = rest.removeprefix("snippets/")
        if storage == settings.snippets_storage and name.startswith(SNIPPET_PREFIX) and "/" not in name:
            files.append(settings.snippets_dir / "snippets" / name)
    return files


def remove_files(files: list[Path]) -> None:
    for path in files:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def read_snippet(settings: ProxmoxSettings, config: Mapping[str, Any], kind: str) -> bytes | None:
    for path in snippet_files(settings, config):
        if path.name.endswith(f"-{kind}.yaml"):
            try:
                return path.read_bytes()
            except OSError:
                return None
    return None


def customization(c: Customization, target_name: str, settings: ProxmoxSettings) -> Built:
    """Config keys for a Clone's customize_json (without the user-data
    snippet, which :func:`write_snippets` handles)."""
    b = Built()
    field = "customize_json"
    if c.hostname and c.hostname.lower() != target_name.lower():
        raise InvalidArgument.field(
            f"{field}.hostname",
            f"Proxmox's cloud-init takes the hostname from the VM name; use target_name {c.hostname!r} or leave hostname empty",
        )
    if c.time_zone:
        raise InvalidArgument.field(
            f"{field}.timeZone", "Proxmox's cloud-init has no time zone setting; set it in userData (timezone: ...)"
        )
    if c.domain:
        b.set("searchdomain", c.domain, f"{field}.domain")
    servers: list[str] = []
    for i, net in enumerate(c.networks):
        origin = f"{field}.networks[{i}]"
        if net.ip_address:
            value = f"ip={net.ip_address}/{net.prefix}" + (f",gw={net.gateway}" if net.gateway else "")
        else:
            value = "ip=dhcp"
        b.set(f"ipconfig{i}", value, origin)
        servers.extend(s for s in net.dns if s not in servers)
    if servers:
        b.set("nameserver", " ".join(servers), f"{field}.networks.dns")
    return b


def needs_drive(config: Mapping[str, Any], user_data: bytes = b"") -> bool:
    """Whether a VM with these settings needs a cloud-init drive."""
    return bool(user_data) or any(
        k.startswith(("ipconfig", "ci")) or k in ("sshkeys", "nameserver", "searchdomain") for k in config
    )
