"""Describe (at most three requests, states distinct, IPs from the guest
agent, console URL, raw JSON with pending changes) and ListVMs (one request
at any VM count)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb

INTERFACES = [
    {
        "name": "lo",
        "hardware-address": "00:00:00:00:00:00",
        "ip-addresses": [
            {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
            {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128},
        ],
    },
    {
        "name": "eth0",
        "hardware-address": "bc:24:11:00:00:10",
        "ip-addresses": [
            {"ip-address": "10.0.0.5", "ip-address-type": "ipv4", "prefix": 24},
            {"ip-address": "fe80::be24:11ff:fe00:10", "ip-address-type": "ipv6", "prefix": 64},
            {"ip-address": "2001:db8::5", "ip-address-type": "ipv6", "prefix": 64},
        ],
    },
]


def test_states_are_distinct(ops: Any, api: Any) -> None:
    vm = ops.create("st-1")
    assert ops.state(vm) == "Off"
    ops.power(vm, pb.POWER_OP_ON)
    assert ops.state(vm) == "On"
    api.nodes("pve1").qemu(vm).status.suspend.post()
    assert ops.state(vm) == "Suspended"
    assert ops.raw(vm)["qmpstatus"] == "paused"
    api.nodes("pve1").qemu(vm).status.stop.post()
    api.nodes("pve1").qemu(vm).status.start.post()
    api.nodes("pve1").qemu(vm).status.suspend.post(todisk=1)  # hibernated
    assert ops.state(vm) == "Suspended"
    assert ops.raw(vm)["lock"] == "suspended"


def test_ips_from_the_guest_agent(ops: Any, pve: Any) -> None:
    vm = ops.create("ip-1")
    ops.power(vm, pb.POWER_OP_ON)
    assert list(ops.describe(vm).ips) == []  # the agent does not answer yet
    assert "agent" in ops.raw(vm)["agent"]["error"]
    pve.vm(int(vm)).agent = {"interfaces": INTERFACES}  # the guest's agent starts
    assert list(ops.describe(vm).ips) == ["10.0.0.5", "2001:db8::5"]


def test_console_url_and_raw(ops: Any, cluster: Any, api: Any) -> None:
    vm = ops.create("raw-1", class_json={"CPU": 1})
    ops.power(vm, pb.POWER_OP_ON)
    api.nodes("pve1").qemu(vm).config.put(cores=4)  # waits for a reboot
    described = ops.describe(vm)
    assert described.console_url == f"{cluster.url}/?console=kvm&novnc=1&vmid={vm}&vmname=raw-1&node=pve1&resize=off&cmd="
    raw = ops.raw(vm)
    assert raw["node"] == "pve1"
    assert raw["status"] == "running"
    assert raw["native_status"]["qmpstatus"] == "running"
    assert raw["config"]["name"] == "raw-1"
    assert raw["pending"] == {"cores": {"pending": "4"}}


def test_at_most_three_requests(ops: Any, pve: Any) -> None:
    vm = ops.create("n-1")
    ops.power(vm, pb.POWER_OP_ON)
    pve.vm(int(vm)).agent = {"interfaces": INTERFACES}
    mark = ops.mark()
    assert ops.describe(vm).ips
    sent = ops.requests_since(mark)
    assert [p.rsplit("/", 2)[-2:] for m, p in sent] == [
        ["status", "current"],
        [vm, "pending"],
        ["agent", "network-get-interfaces"],
    ]


def test_unknown_node_costs_one_lookup(ops: Any, pve: Any) -> None:
    pve.add_vm(200, "made-elsewhere", node="pve2", status="running", config={"scsi0": "local-lvm:vm-200-disk-0,size=4G"})
    mark = ops.mark()
    assert ops.state("200") == "On"
    sent = ops.requests_since(mark)
    assert sent[0] == ("GET", "/api2/json/cluster/resources")
    assert all("/nodes/pve1/" not in p for m, p in sent)
    assert len(sent) == 3  # no agent: resources, status, pending


def test_cold_describe_of_a_running_vm_with_the_agent_is_three_requests(ops: Any, pve: Any) -> None:
    """A VM this provider has not seen (made after it read the cluster's VM
    list) that runs with the agent: resources, status, agent; the
    configuration waits for the next Describe."""
    config = {"scsi0": "local-lvm:vm-200-disk-0,size=4G", "agent": "1", "cores": 2}
    pve.add_vm(200, "made-elsewhere", node="pve2", status="running", config=config).agent = {"interfaces": INTERFACES}
    mark = ops.mark()
    described = ops.describe("200")
    sent = ops.requests_since(mark)
    assert sent == [
        ("GET", "/api2/json/cluster/resources"),
        ("GET", "/api2/json/nodes/pve2/qemu/200/status/current"),
        ("GET", "/api2/json/nodes/pve2/qemu/200/agent/network-get-interfaces"),
    ]
    assert described.exists
    assert described.power_state == "On"
    assert list(described.ips) == ["10.0.0.5", "2001:db8::5"]
    assert "vmname=made-elsewhere&node=pve2" in described.console_url
    raw = json.loads(described.provider_raw_json)
    assert (raw["node"], raw["qmpstatus"], raw["config"], raw["pending"]) == ("pve2", "running", None, None)
    mark = ops.mark()
    warm = json.loads(ops.describe("200").provider_raw_json)  # the node is known now: the configuration too
    assert len(ops.requests_since(mark)) == 3
    assert warm["config"]["cores"] == 2
    assert warm["pending"] == {}


@pytest.mark.parametrize(
    ("status", "agent", "word"),
    [("running", "1", "On"), ("running", "0", "On"), ("stopped", "1", "Off"), ("paused", "1", "Suspended")],
)
def test_cold_describe_is_at_most_three_requests(ops: Any, pve: Any, api: Any, status: str, agent: str, word: str) -> None:
    vm = pve.add_vm(
        200,
        "cold",
        node="pve2",
        status="stopped" if status == "stopped" else "running",
        config={"scsi0": "local-lvm:vm-200-disk-0,size=4G", "agent": agent},
    )
    vm.agent = {"interfaces": INTERFACES} if agent == "1" else None
    if status == "paused":
        api.nodes("pve2").qemu(200).status.suspend.post()
    mark = ops.mark()
    described = ops.describe("200")
    assert len(ops.requests_since(mark)) <= 3
    assert described.power_state == word
    assert list(described.ips) == (["10.0.0.5", "2001:db8::5"] if word == "On" and agent == "1" else [])


def test_moved_vm_is_found_again(ops: Any, pve: Any) -> None:
    vm = ops.create("mv-1")
    assert ops.state(vm) == "Off"
    pve.vm(int(vm)).node = "pve2"  # migrated meanwhile (the simulator's migrate moves nothing)
    assert ops.raw(vm)["node"] == "pve2"


def test_vm_on_an_offline_node(ops: Any, pve: Any) -> None:
    pve.add_vm(200, "far", node="pve2", config={"scsi0": "local-lvm:vm-200-disk-0,size=4G"})
    pve.set_node_offline("pve2")
    described = ops.describe("200")
    assert described.exists
    assert described.power_state == "Unknown"


def test_missing(ops: Any) -> None:
    for vm_id in ("555", "abc", "12"):
        assert not ops.describe(vm_id).exists


def test_list_is_one_request_at_any_count(ops: Any, pve: Any) -> None:
    for count in (0, 40):
        for i in range(count):
            pve.add_vm(
                1000 + i,
                f"bulk-{i}",
                node="pve2" if i % 2 else "pve1",
                config={"scsi0": f"local-lvm:vm-{1000 + i}-disk-0,size=4G", "tags": "vm-provider", "cores": 2},
            )
        mark = ops.mark()
        vms = ops.stub.ListVMs(pb.ListVMsRequest()).vms
        assert len(vms) == count
        assert ops.requests_since(mark) == [("GET", "/api2/json/cluster/resources")]
    assert {vm.cpu for vm in vms} == {2}
    assert {vm.provider_raw["node"] for vm in vms} == {"pve1", "pve2"}


def test_list_shows_every_vm_but_templates_and_says_which_are_the_providers(ops: Any, pve: Any) -> None:
    pve.add_vm(300, "theirs", status="running", config={"scsi0": "local-lvm:vm-300-disk-0,size=4G"})
    pve.add_vm(9000, "tmpl", template=True, config={"scsi0": "local-lvm:base-9000-disk-0,size=2G"})
    mine = ops.create("mine-1", class_json={"CPU": 2, "MemoryMiB": 512}, disks_json=[{"SizeGiB": 3}])
    vms = {vm.id: vm for vm in ops.stub.ListVMs(pb.ListVMsRequest()).vms}
    assert set(vms) == {mine, "300"}  # a template is not a VM to adopt
    vm = vms[mine]
    assert (vm.name, vm.power_state, vm.cpu, vm.memory_mib) == ("mine-1", "Off", 2, 512)
    assert [(d.id, d.size_gib) for d in vm.disks] == [("scsi0", 3)]
    assert (vm.provider_raw["managed"], vms["300"].provider_raw["managed"]) == ("true", "false")
    assert (vms["300"].power_state, vms["300"].provider_raw["status"]) == ("On", "running")


def test_list_all_false_narrows_the_list_to_the_providers_own(
    provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any
) -> None:
    pve.add_vm(300, "theirs", status="running", config={"scsi0": "local-lvm:vm-300-disk-0,size=4G"})
    ops = ops_for(provider({**settings, "list_all": False}))
    mine = ops.create("mine-1")
    vms = ops.stub.ListVMs(pb.ListVMsRequest()).vms
    assert [(vm.id, vm.provider_raw["managed"]) for vm in vms] == [(mine, "true")]


def test_token_without_guest_agent_audit_gets_no_ips(ops: Any, pve: Any) -> None:
    """PVE 9 asks VM.GuestAgent.Audit for network-get-interfaces
    (qemu-server PVE/API2/Qemu/Agent.pm:65-67): a token without it still
    gets Describe, without the guest's IPs."""
    vm = ops.create("noaudit-1")
    ops.power(vm, pb.POWER_OP_ON)
    pve.vm(int(vm)).agent = {"interfaces": INTERFACES}
    pve.grant("vmp@pve!ci", "/vms", "VM.Audit", "VM.PowerMgmt")
    described = ops.describe(vm)
    assert described.exists
    assert described.power_state == "On"
    assert list(described.ips) == []
    assert "VM.GuestAgent.Audit" in json.loads(described.provider_raw_json)["agent"]["error"]
