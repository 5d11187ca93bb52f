"""The NoCloud seed ISO, read back with pycdlib (and isoinfo when present),
and the netplan v2 network-config derived from networks_json."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
from vm_provider_libvirt.cloudinit import build_nocloud_iso, network_config_v2
from vmp_testplugins.skips import missing

from provider_core.specs import NetworkAttachment

USER_DATA = b"#cloud-config\nusers:\n  - name: ops\n    ssh_authorized_keys: [ssh-ed25519 AAAAtest]\n"


def _read(iso: bytes) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
    """Volume id, files by Rock Ridge name and files by Joliet name."""
    cd = pycdlib.PyCdlib()
    cd.open_fp(io.BytesIO(iso))
    try:
        rr: dict[str, bytes] = {}
        joliet: dict[str, bytes] = {}
        for _, _, names in cd.walk(rr_path="/"):
            for name in names:
                out = io.BytesIO()
                cd.get_file_from_iso_fp(out, rr_path=f"/{name}")
                rr[name] = out.getvalue()
        for _, _, names in cd.walk(joliet_path="/"):
            for name in names:
                out = io.BytesIO()
                cd.get_file_from_iso_fp(out, joliet_path=f"/{name}")
                joliet[name] = out.getvalue()
        return cd.pvd.volume_identifier.decode().strip(), rr, joliet
    finally:
        cd.close()


def _net(**kw: object) -> NetworkAttachment:
    return NetworkAttachment.model_validate_json(json.dumps(kw))  # as networks_json arrives


def test_iso_holds_the_request_data_verbatim() -> None:
    meta = b"instance-id: web-1\nlocal-hostname: web-1\npublic-keys: []\n"
    config = {"version": 2, "ethernets": {"nic0": {"match": {"macaddress": "52:54:00:00:00:01"}, "dhcp4": True}}}
    volume, rr, joliet = _read(build_nocloud_iso(USER_DATA, meta, config, instance_id="ignored", hostname="ignored"))
    assert volume == "cidata"
    assert rr == joliet
    assert set(rr) == {"user-data", "meta-data", "network-config"}
    assert rr["user-data"] == USER_DATA
    assert rr["meta-data"] == meta
    assert json.loads(rr["network-config"]) == config


def test_empty_meta_data_names_the_instance_and_host() -> None:
    _, rr, _ = _read(build_nocloud_iso(b"", b"", None, instance_id="3f1c-uuid", hostname="db-2"))
    assert rr["meta-data"] == b'instance-id: "3f1c-uuid"\nlocal-hostname: "db-2"\n'
    assert rr["user-data"] == b""
    assert "network-config" not in rr


def test_without_an_instance_id_each_seed_gets_a_new_one() -> None:
    first = _read(build_nocloud_iso(b"", b"", None))[1]["meta-data"]
    second = _read(build_nocloud_iso(b"", b"", None))[1]["meta-data"]
    assert first.startswith(b'instance-id: "iid-')
    assert first != second
    assert b"local-hostname" not in first


def test_nothing_is_added_to_user_data() -> None:
    iso = build_nocloud_iso(b"", b"instance-id: x\n", None)
    assert b"ssh_authorized_keys" not in iso
    assert b"passwd" not in iso


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason=missing("isoinfo (genisoimage, testbed/install.sh) is not installed"))
def test_linux_tools_see_joliet_and_rock_ridge(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    iso.write_bytes(build_nocloud_iso(USER_DATA, b"instance-id: a\n", {"version": 2, "ethernets": {}}))
    described = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in described
    assert "Joliet with UCS level 3 found" in described
    assert "Rock Ridge signatures version 1 found" in described
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    assert sorted(listing.split()) == ["/meta-data", "/network-config", "/user-data"]
    data = subprocess.run(["isoinfo", "-R", "-x", "/user-data", "-i", str(iso)], capture_output=True, check=True).stdout
    assert data == USER_DATA


# -- network-config ----------------------------------------------------------------


def test_no_networks_means_no_network_config() -> None:
    assert network_config_v2([], []) is None


def test_nics_without_a_known_mac_are_left_alone() -> None:
    assert network_config_v2([_net(NetworkName="default")], []) is None


def test_dhcp_by_default_matched_by_the_mac_the_nic_got() -> None:
    config = network_config_v2(
        [_net(NetworkName="default"), _net(Bridge="br0", IPPolicy="dhcp")], ["52:54:00:AA:00:01", "52:54:00:aa:00:02"]
    )
    assert config == {
        "version": 2,
        "ethernets": {
            "nic0": {"match": {"macaddress": "52:54:00:aa:00:01"}, "dhcp4": True},
            "nic1": {"match": {"macaddress": "52:54:00:aa:00:02"}, "dhcp4": True},
        },
    }


def test_static_address_route_and_dns() -> None:
    net = _net(
        NetworkName="default",
        MacAddress="52:54:00:12:34:56",
        IPPolicy="static",
        StaticIP="192.168.122.50",
        Prefix=24,
        Gateway="192.168.122.1",
        DNS="192.168.122.1, 9.9.9.9",
    )
    config = network_config_v2([net], ["52:54:00:ff:ff:ff"])
    assert config == {
        "version": 2,
        "ethernets": {
            "nic0": {
                "match": {"macaddress": "52:54:00:12:34:56"},
                "dhcp4": False,
                "dhcp6": False,
                "addresses": ["192.168.122.50/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "192.168.122.1"}],
                "nameservers": {"addresses": ["192.168.122.1", "9.9.9.9"]},
            }
        },
    }


def test_static_ipv6_without_gateway() -> None:
    config = network_config_v2([_net(StaticIP="fd00::10", Prefix=64, DNS="fd00::1")], ["52:54:00:00:00:09"])
    assert config is not None
    nic = config["ethernets"]["nic0"]
    assert nic["addresses"] == ["fd00::10/64"]
    assert "routes" not in nic
    assert nic["nameservers"] == {"addresses": ["fd00::1"]}


def test_ipv6_gateway_is_a_default_v6_route() -> None:
    config = network_config_v2([_net(StaticIP="fd00::10", Prefix=64, Gateway="fd00::1")], ["52:54:00:00:00:09"])
    assert config is not None
    assert config["ethernets"]["nic0"]["routes"] == [{"to": "::/0", "via": "fd00::1"}]
