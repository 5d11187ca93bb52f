"""Settings of the libvirt backend: ``[backends.libvirt]`` in plugins.toml.

Every setting can be overridden by ``VM_PROVIDER_LIBVIRT_<SETTING>``.

The defaults serve at once on libvirt's built-in test driver
(``test:///default``: no daemon, no real guests): its network is called
``default`` like a real host's, and its only storage pool, ``default-pool``,
stands in for ``pool = "default"`` (on the test driver only; a real host
must have the pool the settings name). On a real host point ``uri`` at
``qemu:///system`` (or ``qemu+ssh://host/system``), and make sure the pool
and network exist (``Validate`` says what is missing).

Per-VM settings go in class_json ``ExtraConfig`` (keys starting with
``libvirt.``; other backends' keys are ignored):

=====================  ===========================================================
``libvirt.kernel``     direct kernel boot: path of the kernel on the host
``libvirt.initrd``     its initramfs (with ``libvirt.kernel``)
``libvirt.cmdline``    its kernel command line (with ``libvirt.kernel``)
``libvirt.machine``    machine type of this VM (``q35``, ``pc-q35-7.2``, ``pc``)
``libvirt.cpu_mode``   ``host-model``, ``host-passthrough`` or ``maximum``
=====================  ===========================================================

Over SSH (``qemu+ssh://``, ``qemu+libssh://``, ``qemu+libssh2://``) the
backend logs in with ``ssh_key_file``, checks the host's key against
``ssh_known_hosts_file`` only (an unknown or changed key refuses the
connection; nothing is ever added to the file) and takes ``username`` when
the URI names no user; see :mod:`vm_provider_libvirt.login`. VirtRigaud's
credentials Secret fills these from its keys (:attr:`LibvirtSettings.credential_keys`).

Files named by ``libvirt.kernel``/``libvirt.initrd`` must be readable by the
QEMU user (not under ``/root``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from provider_core import BackendSettings


class LibvirtSettings(BackendSettings):
    #: Keys of a mounted credentials Secret -> the setting each one fills
    #: (a Path setting gets the file's path, any other its content).
    credential_keys: ClassVar[dict[str, str]] = {
        "ssh-privatekey": "ssh_key_file",
        "known_hosts": "ssh_known_hosts_file",
        "username": "username",
        "password": "password",
    }

    uri: str = Field("test:///default", description="libvirt connection URI (qemu:///system, qemu+ssh://host/system, ...)")
    pool: str = Field("default", description="storage pool for disks when placement names no Datastore")
    seed_pool: str = Field(
        "", description="storage pool for cloud-init seeds of VMs whose pool takes no uploads (RBD); empty: refuse those"
    )
    network: str = Field("default", description="libvirt network for NICs that name neither NetworkName nor Bridge")
    domain_type: Literal["auto", "kvm", "qemu"] = Field(
        "auto",
        description="auto: KVM when the host offers it and a probe guest runs under it (see vm_provider_libvirt.host), else QEMU",
    )
    machine: str = Field("", description="machine type of new VMs (default: q35 on x86 QEMU/KVM hosts)")
    openvswitch_bridges: tuple[str, ...] = Field(
        (),
        description="host bridges that are Open vSwitch bridges (NICs on them get <virtualport type='openvswitch'/>)",
    )
    graphics: Literal["vnc", "spice", "none"] = Field("vnc", description="console type of new VMs")
    graphics_listen: str = Field("", description="address VNC/SPICE listen on (default: libvirt's, usually 127.0.0.1)")
    console_host: str = Field("", description="host name used in console URLs (default: the URI's host, or 127.0.0.1)")
    max_vcpus: int = Field(0, ge=0, description="maximum vCPUs for online growth (0: 2 x requested, at least 4)")
    max_memory_factor: float = Field(2.0, ge=1.0, description="maximum memory for online growth, as a multiple of the requested")
    default_cpu: int = Field(1, ge=1, description="vCPUs of a VM whose class_json gives no CPU")
    default_memory_mib: int = Field(512, ge=16, description="memory (MiB) of a VM whose class_json gives none")
    default_disk_gib: int = Field(
        10, ge=1, description="size of the blank root disk made when neither image_json nor disks_json gives one"
    )
    template_clone: Literal["linked", "copy"] = Field(
        "linked", description="root disks from a TemplateName: qcow2 overlay on the template (linked) or a full copy"
    )
    serial_log_dir: Path | None = Field(
        None, description="also log each VM's serial console to <dir>/<name>.log on the libvirt host"
    )
    list_scope: Literal["all", "managed"] = Field(
        "all", description="ListVMs: every domain of the host (for adoption), or only those made by vm-provider"
    )
    download_dir: Path | None = Field(None, description="scratch space for downloads and conversions (default: system temp)")
    s3_endpoint_url: str = Field("", description="S3 endpoint for s3:// URLs (default: AWS)")
    s3_region: str = Field("us-east-1", description="S3 region for s3:// URLs")
    s3_access_key_id: str = Field("", description="S3 access key for s3:// URLs whose request carries no credentials")
    s3_secret_access_key: SecretStr | None = Field(None, description="its secret key (better: s3_secret_access_key_file = path)")
    tls_ca_file: Path | None = Field(None, description="CA bundle for https downloads and uploads")
    ssh_key_file: Path | None = Field(
        None,
        description="SSH private key for SSH URIs (which are then opened with libvirt's libssh2 transport)",
    )
    ssh_known_hosts_file: Path | None = Field(
        None,
        description="known_hosts file the SSH host key is checked against (only this one; unknown keys are refused, never added)",
    )
    username: str = Field("", description="user to log in as when the URI names none (SSH, or SASL on qemu+tcp/qemu+tls)")
    password: SecretStr | None = Field(
        None,
        description="SSH password (password or keyboard-interactive login, passphrase of ssh_key_file) or SASL password",
    )
    reconnect_attempts: int = Field(3, ge=1, description="tries to reconnect when the daemon went away")
