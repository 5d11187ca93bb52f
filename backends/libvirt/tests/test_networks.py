"""NICs of new VMs on the test driver: Open vSwitch bridges (told apart by
the setting ``openvswitch_bridges`` and libvirt's interface API, whose
answers node.xml records as the udev backend gives them), and MACs that no
domain of the host uses."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import libvirt
import pytest
from vm_provider_libvirt import domxml

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness


def interfaces(harness: ProviderHarness, vm_id: str) -> list[ET.Element]:
    dom = harness.backend.session.conn().lookupByUUIDString(vm_id)  # type: ignore[attr-defined]
    return ET.fromstring(dom.XMLDesc(0)).findall("devices/interface")


def virtualport(nic: ET.Element) -> str:
    port = nic.find("virtualport")
    return port.get("type", "") if port is not None else ""


@pytest.fixture
def ovs_setting(test_uri: str) -> Iterator[ProviderHarness]:
    settings = {"uri": test_uri, "openvswitch_bridges": ["br-int"]}
    with ProviderHarness.for_backend("libvirt", settings) as h:
        yield h


def test_an_open_vswitch_bridge_gets_its_virtualport_with_or_without_a_vlan(
    harness: ProviderHarness, make_vm: Callable[..., str]
) -> None:
    vm_id = make_vm("ovs", networks_json=[{"Bridge": "ovsbr2"}, {"Bridge": "ovsbr2", "VLAN": 30}])
    nics = interfaces(harness, vm_id)
    assert [virtualport(n) for n in nics] == ["openvswitch", "openvswitch"]
    assert nics[1].find("vlan/tag").get("id") == "30"  # type: ignore[union-attr]


def test_a_bridge_named_in_the_setting_is_open_vswitch(ovs_setting: ProviderHarness) -> None:
    resp = ovs_setting.stub.Create(pb.CreateRequest(name="int", networks_json=json.dumps([{"Bridge": "br-int"}])))
    ovs_setting.wait(resp.task)
    assert [virtualport(n) for n in interfaces(ovs_setting, resp.id)] == ["openvswitch"]


def test_a_linux_bridge_gets_no_virtualport_and_cannot_tag(harness: ProviderHarness, make_vm: Callable[..., str]) -> None:
    vm_id = make_vm("plain", networks_json=[{"Bridge": "br0"}])
    assert [virtualport(n) for n in interfaces(harness, vm_id)] == [""]
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.Create(pb.CreateRequest(name="tagged", networks_json=json.dumps([{"Bridge": "br0", "VLAN": 10}])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "networks_json[0].VLAN" in str(info.value.details())
    assert "Linux bridge" in str(info.value.details())


def test_a_bridge_the_host_cannot_describe_is_open_vswitch_only_with_a_vlan(
    harness: ProviderHarness, make_vm: Callable[..., str]
) -> None:
    vm_id = make_vm("unknown", networks_json=[{"Bridge": "brx"}, {"Bridge": "brx", "VLAN": 5}])
    assert [virtualport(n) for n in interfaces(harness, vm_id)] == ["", "openvswitch"]


def test_a_bridge_the_interface_driver_fails_on_is_one_the_host_cannot_describe(
    harness: ProviderHarness, make_vm: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interface driver that fails (or is not installed) makes no VM fail:
    the bridge is taken as one the host cannot describe."""

    def failing(self: libvirt.virConnect, name: str) -> libvirt.virInterface:
        exc = libvirt.libvirtError("internal error: failed to query udev")
        code, domain, level = libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_INTERFACE, libvirt.VIR_ERR_ERROR
        exc.err = (code, domain, "failed to query udev", level, None, None, None, 0, 0)
        raise exc

    monkeypatch.setattr(libvirt.virConnect, "interfaceLookupByName", failing)
    vm_id = make_vm("blind", networks_json=[{"Bridge": "ovsbr2"}, {"Bridge": "br0", "VLAN": 5}])
    assert [virtualport(n) for n in interfaces(harness, vm_id)] == ["", "openvswitch"]


def foreign_with_macs(harness: ProviderHarness, name: str, macs: list[str]) -> None:
    nics = "".join(f"<interface type='network'><mac address='{m}'/><source network='default'/></interface>" for m in macs)
    devices = f"<devices>{nics}</devices>"
    xml = f"<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os>{devices}</domain>"
    harness.backend.session.conn().defineXML(xml)  # type: ignore[attr-defined]


def draws(seed: int, count: int) -> list[str]:
    """The first ``count`` MACs ``domxml.random_mac`` draws from a generator seeded with ``seed``."""
    rng = random.Random(seed)
    return ["52:54:00:" + ":".join(f"{b:02x}" for b in rng.getrandbits(24).to_bytes(3, "big")) for _ in range(count)]


def drawing(monkeypatch: pytest.MonkeyPatch, macs: list[str]) -> None:
    """``domxml.random_mac`` draws ``macs`` in order, whatever else in the
    process draws random numbers meanwhile (request ids do)."""
    queue = iter(macs)
    monkeypatch.setattr(domxml, "random_mac", lambda: next(queue))


def test_new_macs_avoid_every_mac_on_the_host(
    harness: ProviderHarness, make_vm: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = draws(7, 6)
    first, second, third, fourth = drawn[:4]
    # Another domain already has the first two MACs the generator will draw.
    foreign_with_macs(harness, "neighbour", [first, second.upper()])
    drawing(monkeypatch, drawn[:4])
    vm_id = make_vm("fresh", networks_json=[{"NetworkName": "default"}, {"NetworkName": "default"}])
    macs = [n.find("mac").get("address") for n in interfaces(harness, vm_id)]  # type: ignore[union-attr]
    assert macs == [third, fourth]
    # A clone's new MACs avoid them all too, its source's included.
    harness.wait(harness.stub.Power(pb.PowerRequest(id=vm_id, op=pb.POWER_OP_OFF)).task)
    drawing(monkeypatch, drawn)
    clone = harness.stub.Clone(pb.CloneRequest(source_vm_id=vm_id, target_name="twin"))
    harness.wait(clone.task)
    cloned = [n.find("mac").get("address") for n in interfaces(harness, clone.target_vm_id)]  # type: ignore[union-attr]
    assert cloned == drawn[4:]
