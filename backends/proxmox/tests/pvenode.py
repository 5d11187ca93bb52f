"""A Proxmox node's shell for the disk data path's tests.

What is real: the SSH server (Debian's OpenSSH, :mod:`vmp_testplugins.sshd`,
on 127.0.0.1 with its own host key), the SSH client and its host key check,
``qemu-img``, the shell tools (``cat``, ``dd``, ``sha256sum``, ``mktemp``),
the streams and the staging directories, HTTP and S3 servers.

What is simulated: Proxmox's command line. ``pvesm`` here is a stand-in
that answers only ``pvesm path <volid>`` for the directory storages it is
given, laid out as pve-storage's directory plugin lays them out
(``<path>/images/<vmid>/<name>`` for disk images, ``<path>/import/<name>``
and ``<path>/iso/<name>`` for import and ISO content; PVE/Storage/Plugin.pm
``filesystem_path``), and for the LVM-thin storages it is given (storage to
volume group): ``<root>/dev/<vg>/<name>``, a file standing for the active
logical volume's device ``/dev/<vg>/<name>`` (LvmThinPlugin.pm ``path``).
The API (fakepve) knows nothing of these files.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmp_testplugins.sshd import SharedSshd

PVESM = """#!/bin/sh
# pvesm stand-in: only "pvesm path <storage>:<volume>" of directory storages.
set -eu
if [ "$#" -ne 2 ] || [ "$1" != path ]; then
    echo "pvesm stand-in: only 'pvesm path <volid>'" >&2
    exit 2
fi
storage=${2%%:*}
volume=${2#*:}
case "$storage" in
%(storages)s
%(thin)s
    *) echo "storage '$storage' does not exist" >&2; exit 255 ;;
esac
case "$volume" in
    import/*|iso/*|snippets/*) echo "$root/$volume" ;;
    */*) echo "$root/images/$(echo "$volume" | awk -F/ '{print $(NF-1) "/" $NF}')" ;;
    *) echo "$root/images/$(echo "$volume" | sed -E 's/^(vm|base)-([0-9]+)-.*/\\2/')/$volume" ;;
esac
"""


class PveNode:
    """sshd playing the nodes' shell (every node is this host), with
    ``pvesm`` first on its PATH and directory storages under ``root``."""

    def __init__(self, tmp: Path, storages: tuple[str, ...] = ("cloud",), thin: dict[str, str] | None = None) -> None:
        self.root = tmp / "storages"
        self.thin = thin or {}
        self.tmp = tmp / "node-tmp"
        self.tmp.mkdir(parents=True)
        bin_dir = self.bin = tmp / "node-bin"
        bin_dir.mkdir()
        cases = "\n".join(f"    {name}) root={shlex.quote(str(self.root / name))} ;;" for name in storages)
        pvesm = bin_dir / "pvesm"
        devices = (f'    {name}) echo {shlex.quote(str(self.device(vg)))}/"$volume"; exit 0 ;;' for name, vg in self.thin.items())
        pvesm.write_text(PVESM % {"storages": cases, "thin": "\n".join(devices)})
        pvesm.chmod(0o755)
        (tmp / "sshd").mkdir()
        # SHLVL=1: bash, run by sshd for each command, then skips ~/.bashrc as
        # a nested shell does. A node's root has Debian's short default there;
        # this machine's root may not (a pyenv init costs 0.2-0.6 s a command,
        # which would swamp the data path's timing with six commands an export).
        env = f"PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin SHLVL=1"
        self.sshd = SharedSshd(tmp / "sshd", extra_config=f"SetEnv {env}\n")

    def start(self) -> None:
        self.sshd.start()

    def stop(self) -> None:
        self.sshd.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[PveNode]:
        """The node's sshd started for the block, stopped after it."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def settings(self, known_hosts: Path | None = None, key: Path | None = None) -> dict[str, Any]:
        return {
            "ssh_key_file": str(key or self.sshd.client_key),
            "ssh_known_hosts_file": str(known_hosts or self.sshd.known_hosts("known_hosts")),
            "ssh_port": self.sshd.port,
            "ssh_hosts": {"pve1": "127.0.0.1", "pve2": "127.0.0.1"},
            "node_tmp_dir": str(self.tmp),
        }

    def device(self, vg: str) -> Path:
        """The folder standing for ``/dev/<vg>``."""
        return self.root / "dev" / vg

    def path(self, volid: str) -> Path:
        """Where the stand-in keeps a volume of a directory or LVM-thin storage."""
        storage, volume = volid.split(":", 1)
        if storage in self.thin:
            return self.device(self.thin[storage]) / volume
        parts = volume.split("/")
        if parts[0] in ("import", "iso", "snippets"):
            return self.root / storage / volume
        return self.root / storage / "images" / parts[-2] / parts[-1]
