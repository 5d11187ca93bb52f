"""Settings of the Proxmox VE backend: ``[backends.proxmox]`` in plugins.toml.

Every setting can be overridden by ``VM_PROVIDER_PROXMOX_<SETTING>`` and read
from a file with ``<setting>_file`` (e.g. ``token_secret_file``), the core's
rule for all backends. One way to log in must be configured: an API
token (``token_id`` + ``token_secret``, recommended for a long-running
provider) or a user with a password (``username`` + ``password``); given
both whole, the token is used, as by VirtRigaud's own provider (a warning
says so), and a part of one with the other is refused. The
same four settings come from files named ``token_id``, ``token_secret``,
``username`` and ``password`` in ``[server] credentials_dir`` (VirtRigaud's
Secret), below the environment and plugins.toml.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator

from provider_core import BackendSettings

TOKEN_ID_RE = re.compile(r"^[^\s:/@!]+@[A-Za-z][A-Za-z0-9._-]+![A-Za-z][A-Za-z0-9._-]+$")
USER_ID_RE = re.compile(r"^[^\s:/@!]+@[A-Za-z][A-Za-z0-9._-]+$")
TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9_+.-]*$")
ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")
log = logging.getLogger(__name__)


def _complete(ident: str, secret: SecretStr | None) -> bool:
    return bool(ident) and secret is not None and bool(secret.get_secret_value())


class ProxmoxSettings(BackendSettings):
    """Connection, login, placement defaults and behaviour of the backend."""

    endpoint_settings: ClassVar[tuple[str, ...] | None] = ("endpoint",)
    #: The keys of VirtRigaud's Proxmox credentials Secret (files of ``credentials_dir``).
    credential_keys: ClassVar[dict[str, str]] = {
        "token_id": "token_id",
        "token_secret": "token_secret",
        "username": "username",
        "password": "password",
        "ssh-privatekey": "ssh_key_file",
        "known_hosts": "ssh_known_hosts_file",
    }

    endpoint: str = Field(description="Proxmox VE API endpoint, https://host:8006 (any node of the cluster)")

    token_id: str = Field("", description="API token id, user@realm!name (token auth)")
    token_secret: SecretStr | None = Field(None, description="API token secret (use token_secret_file or the environment)")
    username: str = Field("", description="user@realm for ticket login (password auth)")
    password: SecretStr | None = Field(None, description="password of username (use password_file or the environment)")

    verify_tls: bool = Field(True, description="verify the API's TLS certificate; false is the explicit insecure switch")
    ca_file: FilePath | None = Field(None, description="PEM CA bundle that signed the API's certificate")
    request_timeout: float = Field(30.0, gt=0, le=600, description="seconds one HTTP request may take")

    node: str = Field(
        "", description="node for new VMs when placement names no Host (default: the online node with most free memory)"
    )
    storage: str = Field("local-lvm", description="storage for disks when placement names no Datastore")
    bridge: str = Field("vmbr0", description="bridge for NICs that name neither Bridge nor NetworkName")
    import_storage: str = Field(
        "", description="file storage with 'import' (and 'iso') content for image URLs; empty: images by URL are refused"
    )
    snippets_storage: str = Field("", description="storage with 'snippets' content that holds cloud-init user-data for cicustom")
    snippets_dir: Path | None = Field(
        None, description="where snippets_storage's directory is mounted on this host (its path, e.g. /mnt/pve/cloud)"
    )

    owner_tag: str = Field("vm-provider", description="Proxmox tag that marks VMs made by this provider")
    list_all: bool = Field(
        True,
        description="ListVMs reports every VM of the cluster (for adoption); false: only those with owner_tag."
        " Never templates nor ExportDisk's temporary clones",
    )
    default_cores: int = Field(1, ge=1, le=512)
    default_memory_mib: int = Field(1024, ge=16)
    default_disk_gib: int = Field(10, ge=1)
    cpu_type: str = Field("", description="Proxmox 'cpu' of new VMs (e.g. x86-64-v2-AES, host); empty: Proxmox's default")
    guest_agent: bool = Field(True, description="enable the QEMU guest agent option on new VMs (IPs come from it)")
    start_on_create: bool = Field(False, description="start VMs once Create finished")
    cpu_memory_hotplug: bool = Field(
        False,
        description="make new VMs for CPU and memory growth while running (hotplug cpu,memory, numa=1, vcpus below "
        "cores = max_vcpus); offers reconfigure_online",
    )
    max_vcpus: int = Field(
        0, ge=0, le=512, description="cores (the most vCPUs) of VMs made with CPU hotplug (0: 2 x requested, at least 4)"
    )
    reconfigure_running: Literal["refuse", "pending"] = Field(
        "refuse",
        description="a running VM's change that needs a reboot: refuse (FAILED_PRECONDITION, nothing applied) "
        "or leave it pending in Proxmox until the next reboot",
    )

    ssh_key_file: FilePath | None = Field(
        None, description="private key that logs in to the nodes over SSH (the disk data path: ExportDisk, ImportDisk)"
    )
    ssh_key_passphrase: SecretStr | None = Field(None, description="passphrase of an encrypted ssh_key_file")
    ssh_known_hosts_file: FilePath | None = Field(
        None, description="known_hosts file the nodes' SSH host keys are checked against (only this one; never added to)"
    )
    ssh_user: str = Field("root", description="user on the nodes (runs pvesm and qemu-img)")
    ssh_port: int = Field(22, ge=1, le=65535, description="SSH port of the nodes")
    ssh_hosts: dict[str, str] = Field(
        default_factory=dict, description="address of each node for SSH, by node name (default: the node's name)"
    )
    node_tmp_dir: str = Field(
        "/var/tmp",  # noqa: S108 - a directory on the node, where mktemp makes the file
        description="directory on the nodes for an export's converted image",
    )

    direct_transfers: bool = Field(
        False,
        description="the nodes reach the object stores and http(s) servers of ExportDisk/ImportDisk themselves, with curl: "
        "offers transfer_mode direct (presigned URLs; credentials stay in the provider). auto stays relay",
    )

    lock_retry_seconds: float = Field(
        60.0, ge=0, description="how long to retry a locked VM when the caller set no deadline (background tasks)"
    )
    task_timeout_seconds: float = Field(
        3600.0, gt=0, description="longest wait for one Proxmox task inside a multi-step operation"
    )
    vmid_attempts: int = Field(20, ge=1, le=1000, description="new VMIDs to try when another client takes the one we picked")
    ha_timeout_seconds: float = Field(
        300.0, gt=0, description="longest wait for ha-manager to start or stop an HA-managed VM (plus a shutdown's own timeout)"
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme != "https":
            raise ValueError("must be an https:// URL (the Proxmox API is served over TLS), e.g. https://pve.example.com:8006")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use token_id/token_secret or username/password")
        if parts.path.strip("/") or parts.query:
            raise ValueError("must be just https://host[:port]")
        _ = parts.port  # raises ValueError for a bad port
        return f"https://{parts.netloc}"

    @field_validator("owner_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not TAG_RE.match(v):
            raise ValueError("must be a Proxmox tag: lower-case letters, digits and _ + . -")
        return v

    @field_validator("node", "storage", "bridge", "import_storage", "snippets_storage")
    @classmethod
    def _ident(cls, v: str) -> str:
        if v and not ID_RE.match(v):
            raise ValueError("must be a Proxmox identifier (a letter, then letters, digits, . _ -)")
        return v

    @model_validator(mode="after")
    def _auth(self) -> ProxmoxSettings:
        token = bool(self.token_id or self.token_secret)
        password = bool(self.username or self.password)
        if token and password and _complete(self.token_id, self.token_secret) and _complete(self.username, self.password):
            # Both whole: a Secret made for VirtRigaud may hold all four keys, and
            # its providers log in with the token then. So does this one.
            log.warning("both an API token and a password are configured: logging in with the token %s", self.token_id)
            object.__setattr__(self, "username", "")
            object.__setattr__(self, "password", None)
            password = False
        if token and password:
            raise ValueError("configure one way to log in: either token_id + token_secret, or username + password, not both")
        if not token and not password:
            raise ValueError("no login configured: set token_id + token_secret (recommended) or username + password")
        if token:
            if not self.token_id or self.token_secret is None or not self.token_secret.get_secret_value():
                raise ValueError(
                    "token auth needs both token_id and token_secret (token_secret_file or VM_PROVIDER_PROXMOX_TOKEN_SECRET)"
                )
            if not TOKEN_ID_RE.match(self.token_id):
                raise ValueError("token_id must look like user@realm!tokenname")
        else:
            if not self.username or self.password is None or not self.password.get_secret_value():
                raise ValueError("password auth needs both username and password (password_file or VM_PROVIDER_PROXMOX_PASSWORD)")
            if not USER_ID_RE.match(self.username):
                raise ValueError("username must look like user@realm (e.g. root@pam)")
        if (self.ssh_key_file is None) != (self.ssh_known_hosts_file is None):
            raise ValueError(
                "ssh_key_file and ssh_known_hosts_file go together: the node data path logs in with the key "
                "and checks each node's host key against the file (never trusting it on first use)"
            )
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is set but verify_tls is false; drop one of them")
        if bool(self.snippets_storage) != bool(self.snippets_dir):
            raise ValueError(
                "snippets_storage and snippets_dir go together: the Proxmox API cannot upload snippets, so the "
                "provider writes them into the storage's directory mounted at snippets_dir"
            )
        return self

    @property
    def uses_token(self) -> bool:
        return bool(self.token_id)
