"""cloud-init NoCloud seed: an ISO9660 image labelled ``cidata``.

The ISO holds ``user-data`` and ``meta-data`` exactly as the request gave
them, and ``network-config`` (netplan v2, see :func:`network_config_v2`) when
there is a network to configure. Nothing else is added: no users, no keys.
When the request has no meta-data, a minimal one names the instance and its
host, which cloud-init needs to run at all.

Files are readable through ISO9660 level 3 names, Joliet and Rock Ridge, so
any guest kernel (and cloud-init's own ISO reader) finds them by their real
names.
"""

from __future__ import annotations

import io
import ipaddress
import json
import uuid
from typing import Any

import pycdlib

from provider_core.specs import IPPolicy, NetworkAttachment

VOLUME_ID = "cidata"

#: (ISO9660 name, real name): ISO9660 names are upper case letters, digits and _.
_FILES = (("USER_DATA.;1", "user-data"), ("META_DATA.;1", "meta-data"), ("NETWORK_CONFIG.;1", "network-config"))


def _yaml_value(value: str) -> str:
    """A YAML scalar: JSON strings are valid YAML."""
    return json.dumps(value)


def default_meta_data(instance_id: str = "", hostname: str = "") -> bytes:
    """meta-data naming the instance (a new id when none is given) and its host."""
    lines = [f"instance-id: {_yaml_value(instance_id or f'iid-{uuid.uuid4().hex}')}"]
    if hostname:
        lines.append(f"local-hostname: {_yaml_value(hostname)}")
    return ("\n".join(lines) + "\n").encode()


def build_nocloud_iso(
    user_data: bytes,
    meta_data: bytes,
    network_config: dict[str, Any] | None,
    *,
    instance_id: str = "",
    hostname: str = "",
) -> bytes:
    """The bytes of a NoCloud seed ISO (a few hundred KiB at most).

    ``meta_data`` is used verbatim; when empty, :func:`default_meta_data`
    from ``instance_id`` and ``hostname``. ``network_config`` (a netplan v2
    dict) is written as YAML (JSON syntax) when given.
    """
    contents = [user_data, meta_data or default_meta_data(instance_id, hostname)]
    if network_config is not None:
        contents.append(json.dumps(network_config, indent=2).encode() + b"\n")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    try:
        for (iso_name, name), data in zip(_FILES, contents, strict=False):
            iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def _address(ip: str, prefix: int) -> str:
    return str(ipaddress.ip_interface(f"{ip}/{prefix}"))


def network_config_v2(networks: list[NetworkAttachment], macs: list[str]) -> dict[str, Any] | None:
    """netplan v2 for the NICs of ``networks_json``: each matched by MAC
    (its MacAddress, else ``macs[i]``, the MAC the NIC got), with DHCP or its
    StaticIP/Prefix, a default route via Gateway and DNS nameservers. NICs
    with no known MAC are left to the guest's defaults. None when no NIC is
    left to configure."""
    ethernets: dict[str, dict[str, Any]] = {}
    for i, net in enumerate(networks):
        mac = net.mac_address or (macs[i].lower() if i < len(macs) else "")
        if not mac:
            continue
        nic: dict[str, Any] = {"match": {"macaddress": mac}}
        if net.static_ip and net.ip_policy is not IPPolicy.DHCP:
            v6 = ipaddress.ip_address(net.static_ip).version == 6
            nic["dhcp4"] = False
            nic["dhcp6"] = False
            nic["addresses"] = [_address(net.static_ip, net.prefix)]
            if net.gateway:
                nic["routes"] = [{"to": "::/0" if v6 else "0.0.0.0/0", "via": net.gateway}]
        else:
            nic["dhcp4"] = True
        if net.dns_servers:
            nic["nameservers"] = {"addresses": net.dns_servers}
        ethernets[f"nic{i}"] = nic
    return {"version": 2, "ethernets": ethernets} if ethernets else None


__all__ = ["VOLUME_ID", "build_nocloud_iso", "default_meta_data", "network_config_v2"]
