"""The *_json payloads, through real Create/Clone/Reconfigure/ImagePrepare calls.

Every bad payload answers INVALID_ARGUMENT whose message names the JSON path,
with the same path in google.rpc.BadRequest, and never reaches the backend.
Keys are accepted in PascalCase, camelCase and snake_case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from provider_core import specs
from provider_core.errors import InvalidArgument
from provider_core.models import CloneSpec, CreateSpec, ImagePrepareSpec
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins

PAYLOADS = Path(__file__).resolve().parents[1] / "docs" / "spec" / "json-payloads.md"
INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderHarness]:
    with ProviderHarness.for_backend("memory-plus") as h:
        h.stub.Create(pb.CreateRequest(name="src"))
        yield h


def call(h: ProviderHarness, field: str, text: str) -> Any:
    """Send ``text`` in ``field`` through the RPC that carries it."""
    if field in ("customize_json",):
        return h.stub.Clone(pb.CloneRequest(source_vm_id="src", target_name="copy", **{field: text}))
    if field == "desired_json":
        return h.stub.Reconfigure(pb.ReconfigureRequest(id="src", desired_json=text))
    return h.stub.Create(pb.CreateRequest(name="vm", **{field: text}))


BAD: list[tuple[str, str, str, str]] = [
    # field, JSON text, path named, fragment of the problem
    ("class_json", '{"CPU": 2, "Bogus": 1}', "class_json.Bogus", "Extra inputs"),
    ("class_json", '{"CPU": "two"}', "class_json.CPU", "valid integer"),
    ("class_json", '{"CPU": 2.5}', "class_json.CPU", "valid integer"),
    ("class_json", '{"cpu": 0}', "class_json.cpu", "greater than or equal to 1"),
    ("class_json", '{"MemoryMiB": 2147483648}', "class_json.MemoryMiB", "less than or equal to 2147483647"),
    ("class_json", '{"memory_mib": -1}', "class_json.memory_mib", "greater than or equal to 1"),
    ("class_json", '{"Firmware": "coreboot"}', "class_json.Firmware", "BIOS"),
    ("class_json", '{"GuestToolsPolicy": "sometimes"}', "class_json.GuestToolsPolicy", "install"),
    ("class_json", '{"DiskDefaults": {"SizeGiB": 0}}', "class_json.DiskDefaults.SizeGiB", "greater than or equal to 1"),
    ("class_json", '{"SecurityProfile": {"TPM": true}}', "class_json.SecurityProfile.TPM", "Extra inputs"),
    (
        "class_json",
        '{"PerformanceProfile": {"CPUHotAddEnabled": "yes"}}',
        "class_json.PerformanceProfile.CPUHotAddEnabled",
        "boolean",
    ),
    ("class_json", '{"ResourceLimits": {"CPUShares": -5}}', "class_json.ResourceLimits.CPUShares", "greater than or equal to 0"),
    ("class_json", '{"ExtraConfig": {"numa": 1}}', "class_json.ExtraConfig.numa", "valid string"),
    ("class_json", '{"memory": "lots"}', "class_json.memory", "not a memory quantity"),
    ("class_json", '{"memory": "4096Ti"}', "class_json.memory", "outside"),
    ("class_json", '{"memory": 4294967296}', "class_json.memory", "valid string"),
    ("class_json", '{"memory": "4Gi", "MemoryMiB": 512}', "class_json", "not both"),
    ("class_json", "[2, 4096]", "class_json", "object"),
    ("class_json", '{"CPU": 2,', "class_json", "malformed JSON"),
    ("image_json", '{"Url": "https://example.test/a.qcow2"}', "image_json.Url", "Extra inputs"),
    ("image_json", '{"TemplateName": 7}', "image_json.TemplateName", "valid string"),
    ("image_json", '{"URL": "ftp://example.test/a.qcow2"}', "image_json.URL", "scheme"),
    ("image_json", '{"URL": "https:///a.qcow2"}', "image_json.URL", "no host"),
    ("image_json", '{"Format": "vhd"}', "image_json.Format", "qcow2"),
    ("image_json", '{"ChecksumType": "crc32"}', "image_json.ChecksumType", "sha256"),
    ("image_json", '{"Path": "/a.qcow2", "TemplateName": "base"}', "image_json", "at most one"),
    ("image_json", '{"URL": "https://example.test/a", "Checksum": "abc"}', "image_json", "Checksum must be 64 hex digits"),
    ("image_json", "{'URL': 1}", "image_json", "malformed JSON"),
    ("networks_json", '{"Name": "a"}', "networks_json", "valid array"),
    ("networks_json", '[{"Nmae": "eth0"}]', "networks_json[0].Nmae", "Extra inputs"),
    ("networks_json", '[{"VLAN": "10"}]', "networks_json[0].VLAN", "valid integer"),
    ("networks_json", '[{"VLAN": 5000}]', "networks_json[0].VLAN", "less than or equal to 4094"),
    ("networks_json", '[{}, {"MacAddress": "zz"}]', "networks_json[1].MacAddress", "aa:bb:cc:dd:ee:ff"),
    ("networks_json", '[{"macAddress": "01:00:5e:00:00:01"}]', "networks_json[0].macAddress", "multicast"),
    ("networks_json", '[{"IPPolicy": "bootp"}]', "networks_json[0].IPPolicy", "dhcp"),
    ("networks_json", '[{"IPPolicy": "static"}]', "networks_json[0]", "needs StaticIP"),
    ("networks_json", '[{"StaticIP": "10.0.0.300", "Prefix": 24}]', "networks_json[0].StaticIP", "does not appear to be"),
    ("networks_json", '[{"StaticIP": "10.0.0.3", "Prefix": 33}]', "networks_json[0]", "Prefix must be 1..32"),
    ("networks_json", '[{"Prefix": 129}]', "networks_json[0].Prefix", "less than or equal to 128"),
    ("networks_json", '[{"DNS": "8.8.8.8,resolver"}]', "networks_json[0].DNS", "does not appear to be"),
    ("networks_json", '[{"Gateway": "gw"}]', "networks_json[0].Gateway", "does not appear to be"),
    ("disks_json", '[{"SizeGiB": 0}]', "disks_json[0].SizeGiB", "greater than or equal to 1"),
    ("disks_json", '[{"SizeGiB": 2147483648}]', "disks_json[0].SizeGiB", "less than or equal to 2147483647"),
    ("disks_json", '[{"SizeGiB": 1.5}]', "disks_json[0].SizeGiB", "valid integer"),
    ("disks_json", '[{"Type": "thin"}]', "disks_json[0].SizeGiB", "required"),
    ("disks_json", '[{"SizeGiB": 1, "Name": "a b"}]', "disks_json[0].Name", "letters, digits"),
    ("disks_json", '[{"SizeGiB": 1, "Name": "a"}, {"size_gib": 2, "name": "a"}]', "disks_json", "unique"),
    ("disks_json", '[{"SizeGiB": 1, "Label": "x"}]', "disks_json[0].Label", "Extra inputs"),
    ("disks_json", "[", "disks_json", "malformed JSON"),
    ("placement_json", '{"Datastore": 1}', "placement_json.Datastore", "valid string"),
    ("placement_json", '{"Zone": "a"}', "placement_json.Zone", "Extra inputs"),
    ("placement_json", '"default"', "placement_json", "object"),
    ("customize_json", '{"hostname": "web_1"}', "customize_json.hostname", "DNS label"),
    ("customize_json", '{"networks": [{"ipAddress": "x"}]}', "customize_json.networks[0].ipAddress", "does not appear to be"),
    ("customize_json", '{"networks": [{"subnetMask": "255.0.255.0"}]}', "customize_json.networks[0].subnetMask", "netmask"),
    ("customize_json", '{"networks": [{"dns": "8.8.8.8"}]}', "customize_json.networks[0].dns", "valid array"),
    ("customize_json", '{"tags": "a,b"}', "customize_json.tags", "valid array"),
    ("customize_json", '{"hostName": "a"}', "customize_json.hostName", "Extra inputs"),
    ("customize_json", "{]", "customize_json", "malformed JSON"),
    ("desired_json", '{"Class": {"CPU": 0}}', "desired_json.Class.CPU", "greater than or equal to 1"),
    ("desired_json", '{"class": {"memory": "1Ki"}}', "desired_json.class.memory", "outside"),
    ("desired_json", '{"Disks": [{"SizeGiB": -1}]}', "desired_json.Disks[0].SizeGiB", "greater than or equal to 1"),
    ("desired_json", '{"UserData": {"CloudInitData": 5}}', "desired_json.UserData.CloudInitData", "valid string"),
    ("desired_json", '{"MetaData": {"Yaml": ""}}', "desired_json.MetaData.Yaml", "Extra inputs"),
    ("desired_json", '{"Networks": [{"VLAN": -1}]}', "desired_json.Networks[0].VLAN", "greater than or equal to 0"),
    ("desired_json", '{"Image": {"Format": "img"}}', "desired_json.Image.Format", "qcow2"),
    ("desired_json", '{"Tags": [1]}', "desired_json.Tags[0]", "valid string"),
    ("desired_json", '{"Nope": 1}', "desired_json.Nope", "Extra inputs"),
    ("desired_json", '{"Class": ', "desired_json", "malformed JSON"),
    ("desired_json", "", "desired_json", "required"),
    ("class_json", '{"memory": "\u0664Gi"}', "class_json.memory", "not a memory quantity"),  # Arabic-Indic 4
    # hostile shapes: depth, huge numbers, null where an object belongs
    ("class_json", "[" * 5000 + "]" * 5000, "class_json", "recursion limit"),
    ("class_json", '{"ExtraConfig": ' + '{"a": ' * 3000 + "1" + "}" * 3001, "class_json", "recursion limit"),
    ("class_json", '{"CPU": ' + "9" * 5000 + "}", "class_json", "malformed JSON"),
    ("disks_json", "[null]", "disks_json[0]", "object"),
    ("networks_json", "[null, {}]", "networks_json[0]", "object"),
    ("class_json", '{"ExtraConfig": {"a": null}}', "class_json.ExtraConfig.a", "valid string"),
    # strings inside JSON reach hypervisors: no control characters, bounded
    ("networks_json", '[{"NetworkName": "a\\u0000b"}]', "networks_json[0].NetworkName", "control characters"),
    ("networks_json", '[{"Bridge": "br0\\n<x/>"}]', "networks_json[0].Bridge", "control characters"),
    ("placement_json", '{"Datastore": "d\\u0000"}', "placement_json.Datastore", "control characters"),
    ("image_json", '{"Path": "/a\\u0000"}', "image_json.Path", "control characters"),
    ("image_json", '{"TemplateName": "t\\u001b[31m"}', "image_json.TemplateName", "control characters"),
    ("class_json", '{"ExtraConfig": {"k": "' + "x" * 5000 + '"}}', "class_json.ExtraConfig", "longer than 4096"),
    ("customize_json", '{"Tags": [' + ",".join(['"t"'] * 17) + "]}", "customize_json.Tags", "at most 16"),
    ("class_json", '{"CPU": 1' + " " * 300_000 + "}", "class_json", "longer than 262144"),
]


@pytest.mark.parametrize(("field", "text", "path", "problem"), BAD, ids=[f"{b[0]}:{b[1][:60]}" for b in BAD])
def test_bad_payload_is_invalid_argument_naming_the_path(
    server: ProviderHarness, violations: Callable[[grpc.RpcError], dict[str, str]], field: str, text: str, path: str, problem: str
) -> None:
    before = sum(server.backend.calls.values())  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        call(server, field, text)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{path}: ")
    assert problem in err.details()
    found = violations(err)
    assert path in found, found
    assert problem in found[path]
    assert sum(server.backend.calls.values()) == before, "a bad request reached the backend"  # type: ignore[attr-defined]


def test_every_problem_is_reported_not_just_the_first(
    server: ProviderHarness, violations: Callable[[grpc.RpcError], dict[str, str]]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(server, "networks_json", '[{"VLAN": 9999, "MacAddress": "x"}, {"Prefix": "24"}]')
    assert set(violations(info.value)) == {"networks_json[0].VLAN", "networks_json[0].MacAddress", "networks_json[1].Prefix"}
    assert "(and 2 more)" in info.value.details()


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"URL": "file:///etc/shadow"}', "image_json.URL"),
        ("{}", "image_json"),
        ("", "image_json"),
        ('{"url": "https://example.test/a.img", "format": "exe"}', "image_json.format"),
    ],
)
def test_image_prepare_checks_its_image(
    server: ProviderHarness, violations: Callable[[grpc.RpcError], dict[str, str]], text: str, path: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        server.stub.ImagePrepare(pb.ImagePrepareRequest(image_json=text, target_name="base"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{path}: ")
    assert path in violations(info.value)


# -- the three spellings of every documented key -------------------------------------


def _words(pascal: str) -> list[str]:
    return re.findall(r"MiB|GiB|[A-Z]+(?![a-z])|[A-Z][a-z]*|\d+", pascal)


def spellings(pascal: str) -> list[str]:
    """PascalCase as Go clients send it, camelCase and snake_case."""
    words = _words(pascal)
    return [pascal, words[0].lower() + "".join(words[1:]), "_".join(w.lower() for w in words)]


def test_spellings_helper() -> None:
    assert spellings("MemoryMiB") == ["MemoryMiB", "memoryMiB", "memory_mib"]
    assert spellings("CPUHotAddEnabled") == ["CPUHotAddEnabled", "cpuHotAddEnabled", "cpu_hot_add_enabled"]
    assert spellings("IPPolicy") == ["IPPolicy", "ipPolicy", "ip_policy"]
    assert spellings("StaticIP") == ["StaticIP", "staticIP", "static_ip"]


def documented_keys() -> list[tuple[str, str]]:
    """(payload field, PascalCase key) of every row of the payload tables."""
    if not PAYLOADS.is_file():
        return []
    keys: list[tuple[str, str]] = []
    field = ""
    for line in PAYLOADS.read_text().splitlines():
        if m := re.match(r"^## (\w+_json) ", line):
            field = m.group(1)
        elif line.startswith("## "):
            field = ""
        elif field and (m := re.match(r"^\| (\w+) \|", line)) and m.group(1) != "key":
            keys.append((field, m.group(1)))
    return keys


NESTED = [
    ("class_json", "DiskDefaults", "SizeGiB"),
    ("class_json", "PerformanceProfile", "CPUHotAddEnabled"),
    ("class_json", "PerformanceProfile", "HyperThreadingPolicy"),
    ("class_json", "SecurityProfile", "TPMEnabled"),
    ("class_json", "SecurityProfile", "VTDEnabled"),
    ("class_json", "ResourceLimits", "MemoryReservationMiB"),
    ("class_json", "ResourceLimits", "CPULimit"),
    ("desired_json", "UserData", "CloudInitData"),
    ("desired_json", "MetaData", "MetaDataYAML"),
]
CUSTOMIZE = ["Hostname", "Domain", "TimeZone", "Networks", "UserData", "Tags"]
DESIRED = ["Name", "Class", "Image", "Networks", "Disks", "UserData", "MetaData", "Placement", "Tags"]
PROBE = {"__probe__": 1}


def _recognised(
    h: ProviderHarness, violations: Callable[[grpc.RpcError], dict[str, str]], field: str, obj: dict[str, Any], key_path: str
) -> None:
    """Send a payload whose key is given a nonsense value: the answer may
    complain about the value, never that the key is unknown."""
    payload: Any = [obj] if field in ("networks_json", "disks_json") else obj
    with pytest.raises(grpc.RpcError) as info:
        call(h, field, json.dumps(payload))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = {p for p, d in violations(info.value).items() if "Extra inputs" in d}
    prefix = f"{field}[0]" if field in ("networks_json", "disks_json") else field
    assert f"{prefix}.{key_path}" not in unknown, f"{key_path} is not recognised in {field}"


def test_payload_tables_were_found() -> None:
    fields = {f for f, _ in documented_keys()}
    assert fields == {"class_json", "image_json", "networks_json", "disks_json", "placement_json"}
    assert len(documented_keys()) >= 30


@pytest.mark.parametrize(
    ("field", "key"), documented_keys() + [("customize_json", k) for k in CUSTOMIZE] + [("desired_json", k) for k in DESIRED]
)
def test_every_documented_key_in_three_spellings(
    server: ProviderHarness, violations: Callable[[grpc.RpcError], dict[str, str]], field: str, key: str
) -> None:
    spelled = spellings(key)
    if field == "customize_json":  # documented in camelCase
        assert spelled[1] in {"hostname", "domain", "timeZone", "networks", "userData", "tags"}
    for name in spelled:
        _recognised(server, violations, field, {name: PROBE}, name)


@pytest.mark.parametrize(("field", "outer", "inner"), NESTED)
def test_nested_keys_in_three_spellings(
    server: ProviderHarness, violations: Callable[[grpc.RpcError], dict[str, str]], field: str, outer: str, inner: str
) -> None:
    for o, i in zip(spellings(outer), spellings(inner), strict=True):
        _recognised(server, violations, field, {o: {i: PROBE}}, f"{o}.{i}")


def test_a_go_client_a_python_client_and_a_js_client_mean_the_same_vm(server: ProviderHarness) -> None:
    pascal = {
        "class_json": {"CPU": 4, "MemoryMiB": 4096, "Firmware": "EFI", "SecurityProfile": {"TPMEnabled": True}},
        "image_json": {"URL": "https://example.test/noble.qcow2", "Format": "QCOW2", "ChecksumType": "SHA512"},
        "networks_json": [
            {
                "NetworkName": "default",
                "IPPolicy": "static",
                "StaticIP": "10.0.0.5",
                "Prefix": 24,
                "MacAddress": "52:54:00:AA:BB:CC",
            }
        ],
        "disks_json": [{"SizeGiB": 20, "Type": "thin", "Name": "root"}],
        "placement_json": {"Datastore": "default", "StoragePod": "", "Host": "node1"},
    }
    snake = {
        "class_json": {"cpu": 4, "memory_mib": 4096, "firmware": "uefi", "security_profile": {"tpm_enabled": True}},
        "image_json": {"url": "https://example.test/noble.qcow2", "format": "qcow2", "checksum_type": "sha512"},
        "networks_json": [
            {
                "network_name": "default",
                "ip_policy": "static",
                "static_ip": "10.0.0.5",
                "prefix": 24,
                "mac_address": "52:54:00:aa:bb:cc",
            }
        ],
        "disks_json": [{"size_gib": 20, "type": "thin", "name": "root"}],
        "placement_json": {"datastore": "default", "storage_pod": "", "host": "node1"},
    }
    camel = {
        "class_json": {"cpu": 4, "memoryMiB": 4096, "firmware": "UEFI", "securityProfile": {"tpmEnabled": True}},
        "image_json": {"url": "https://example.test/noble.qcow2", "format": "qcow2", "checksumType": "sha512"},
        "networks_json": [
            {
                "networkName": "default",
                "ipPolicy": "static",
                "staticIP": "10.0.0.5",
                "prefix": 24,
                "macAddress": "52:54:00:aa:bb:cc",
            }
        ],
        "disks_json": [{"sizeGiB": 20, "type": "thin", "name": "root"}],
        "placement_json": {"datastore": "default", "storagePod": "", "host": "node1"},
    }
    seen = []
    for n, payload in enumerate((pascal, snake, camel)):
        server.stub.Create(pb.CreateRequest(name=f"same-{n}", **{k: json.dumps(v) for k, v in payload.items()}))
        seen.append(server.backend.specs["create"].model_copy(update={"name": ""}))  # type: ignore[attr-defined]
    assert seen[0] == seen[1] == seen[2]
    spec = seen[0]
    assert (spec.vm_class.cpu, spec.vm_class.memory_mib, spec.vm_class.firmware) == (4, 4096, specs.Firmware.UEFI)
    assert spec.vm_class.security_profile == specs.SecurityProfile(tpm_enabled=True)
    assert (spec.image.source, spec.image.format) == ("url", "qcow2")
    assert spec.networks[0].mac_address == "52:54:00:aa:bb:cc"
    assert spec.disks[0].size_gib == 20
    assert spec.placement.host == "node1"


def test_kubernetes_quantities_in_a_clone_class(server: ProviderHarness) -> None:
    resp = server.stub.Clone(
        pb.CloneRequest(source_vm_id="src", target_name="k8s-copy", class_json='{"cpu": 2, "memory": "4Gi", "firmware": "UEFI"}')
    )
    assert resp.target_vm_id == "k8s-copy"
    cls = server.backend.specs["clone"].vm_class  # type: ignore[attr-defined]
    assert (cls.cpu, cls.memory_mib, cls.firmware) == (2, 4096, specs.Firmware.UEFI)


@pytest.mark.parametrize(
    ("quantity", "mib"), [("4Gi", 4096), ("512Mi", 512), ("1Ti", 2**20), ("2097152Ki", 2048), ("1073741824", 1024), ("2G", 1907)]
)
def test_quantities(quantity: str, mib: int) -> None:
    assert specs.parse("class_json", json.dumps({"memory": quantity}), specs.VMClass).memory_mib == mib


def test_32_bit_limits_are_inclusive(server: ProviderHarness) -> None:
    server.stub.Create(pb.CreateRequest(name="big", class_json=json.dumps({"CPU": INT32_MAX, "MemoryMiB": INT32_MAX})))
    assert server.backend.specs["create"].vm_class.memory_mib == INT32_MAX  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgument, match=r"class_json\.CPU"):
        specs.parse("class_json", json.dumps({"CPU": INT32_MAX + 1}), specs.VMClass)
    with pytest.raises(InvalidArgument, match=r"class_json\.ResourceLimits\.CPULimit"):
        specs.parse("class_json", json.dumps({"ResourceLimits": {"CPULimit": -(2**31) - 1}}), specs.VMClass)


@pytest.mark.parametrize("empty", ["", "   ", "null"])
def test_empty_means_not_given(server: ProviderHarness, empty: str) -> None:
    fields = ("class_json", "image_json", "networks_json", "disks_json", "placement_json")
    server.stub.Create(pb.CreateRequest(name="defaults", **dict.fromkeys(fields, empty)))
    spec = server.backend.specs["create"]  # type: ignore[attr-defined]
    assert spec.vm_class == specs.VMClass()
    assert spec.image.source == "blank"
    assert (spec.networks, spec.disks) == ([], [])
    assert spec.placement == specs.Placement()
    server.stub.Clone(
        pb.CloneRequest(source_vm_id="src", target_name="plain", class_json=empty, placement_json=empty, customize_json=empty)
    )
    assert server.backend.specs["clone"].customize == specs.Customization()  # type: ignore[attr-defined]


def test_reconfigure_receives_the_desired_vm(server: ProviderHarness) -> None:
    desired = {
        "Name": "src",
        "Class": {"CPU": 3, "MemoryMiB": 2048},
        "Disks": [{"SizeGiB": 30}],
        "UserData": {"CloudInitData": "#cloud-config"},
    }
    server.stub.Reconfigure(pb.ReconfigureRequest(id="src", desired_json=json.dumps(desired)))
    got = server.backend.specs["reconfigure"]  # type: ignore[attr-defined]
    assert (got.vm_class.cpu, got.disks[0].size_gib, got.user_data.cloud_init_data) == (3, 30, "#cloud-config")
    described = server.stub.Describe(pb.DescribeRequest(id="src"))
    assert json.loads(described.provider_raw_json) == {"cpu": 3, "memory_mib": 2048, "name": "src"}


@pytest.mark.parametrize(
    ("request_", "path", "problem"),
    [
        (pb.CreateRequest(name="a" * 254), "name", "longer than 253"),
        (pb.CreateRequest(name="vm", tags=["t"] * 17), "tags", "at most 16"),
        (pb.CreateRequest(name="vm", tags=["t" * 64]), "tags[0]", "longer than 63"),
        (pb.CreateRequest(name="vm", tags=["a\x00"]), "tags[0]", "control characters"),
        (pb.CreateRequest(name="vm", user_data=b"x" * 262_145), "user_data", "at most 262144"),
        (pb.SnapshotCreateRequest(vm_id="src", name_hint="s\x00"), "name_hint", "control characters"),
        (pb.SnapshotCreateRequest(vm_id="src", description="a\x00b"), "description", "control characters"),
        (
            pb.ImagePrepareRequest(image_json='{"URL": "https://a.test/i.qcow2"}', target_name="i", storage_hint="p\x00"),
            "storage_hint",
            "control characters",
        ),
        (
            pb.ExportDiskRequest(vm_id="src", destination_url="https://a.test/x", credentials={"bogus": "v"}),
            "credentials",
            "unknown key(s) bogus for https URLs",
        ),
        (
            pb.ImportDiskRequest(source_url="s3://b/k", target_name="d", credentials={"token": "t"}),
            "credentials",
            "unknown key(s) token for s3 URLs",
        ),
        (pb.ExportDiskRequest(vm_id="src", destination_url="s3://bucket"), "destination_url", "names no object key"),
        (
            pb.ExportDiskRequest(vm_id="src", destination_url="https://a.test/x", credentials={"token": "t\r\nX-Evil: 1"}),
            "credentials.token",
            "control characters",
        ),
        (pb.ExportDiskRequest(vm_id="src", destination_url="https://a.test:99999/x"), "destination_url", "not a valid URL"),
    ],
)
def test_request_strings_are_checked_and_bounded(server: ProviderHarness, request_: Any, path: str, problem: str) -> None:
    before = sum(server.backend.calls.values())  # type: ignore[attr-defined]
    rpc = {
        "CreateRequest": "Create",
        "SnapshotCreateRequest": "SnapshotCreate",
        "ImagePrepareRequest": "ImagePrepare",
        "ExportDiskRequest": "ExportDisk",
        "ImportDiskRequest": "ImportDisk",
    }
    with pytest.raises(grpc.RpcError) as info:
        getattr(server.stub, rpc[type(request_).__name__])(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{path}: ")
    assert problem in info.value.details()
    assert sum(server.backend.calls.values()) == before  # type: ignore[attr-defined]


def test_a_description_may_span_lines(server: ProviderHarness) -> None:
    server.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id="src", name_hint="lines", description="one\n\ttwo"))


# -- what VirtRigaud's manager marshals -------------------------------------------------------

GO_CLASS = {
    "CPU": 2,
    "MemoryMiB": 512,
    "Firmware": "",
    "DiskDefaults": None,
    "GuestToolsPolicy": "",
    "ExtraConfig": None,
    "PerformanceProfile": None,
    "SecurityProfile": None,
    "ResourceLimits": None,
}
GO_IMAGE = {"TemplateName": "debian-12", "Path": "", "URL": "", "Format": "template", "Checksum": "", "ChecksumType": "sha256"}
GO_NIC = {
    "Name": "nic0",
    "Portgroup": "",
    "NetworkName": "default",
    "Bridge": "",
    "VLAN": 0,
    "Model": "",
    "MacAddress": "",
    "IPPolicy": "",
    "StaticIP": "",
    "Prefix": 0,
    "Gateway": "",
    "DNS": "",
    "PCISlotNumber": None,
}


def test_go_zero_values_mean_not_given() -> None:
    spec = CreateSpec.model_validate(
        {
            "name": "vm",
            "class_json": json.dumps(GO_CLASS),
            "image_json": json.dumps(GO_IMAGE | {"ChecksumType": ""}),
            "networks_json": json.dumps([GO_NIC]),
            "disks_json": "null",
        }
    )
    assert (spec.vm_class.cpu, spec.vm_class.memory_mib, spec.vm_class.firmware) == (2, 512, None)
    assert (spec.image.template_name, spec.image.format, spec.image.checksum_type.value) == ("debian-12", "", "sha256")
    assert spec.networks[0].ip_policy is None
    assert spec.disks == []


def test_image_prepare_takes_the_vmimage_resource_spec() -> None:
    resource = {
        "source": {"libvirt": {"url": "https://example.test/noble.qcow2", "format": "qcow2", "checksumType": "sha256"}},
        "prepare": {"onMissing": "Import", "timeout": "30m0s", "storage": {"libvirt": {"storagePool": "fast"}}},
        "metadata": {"displayName": "Noble", "tags": {"os": "ubuntu"}},
        "distribution": {"name": "ubuntu", "version": "24.04"},
    }
    spec = ImagePrepareSpec.model_validate({"image_json": json.dumps(resource), "target_name": "noble"})
    assert (spec.image.url, spec.image.format, spec.storage_hint) == ("https://example.test/noble.qcow2", "qcow2", "fast")
    proxmox = {"source": {"proxmox": {"templateID": 9000, "storage": "local-lvm"}}}
    spec = ImagePrepareSpec.model_validate({"image_json": json.dumps(proxmox), "target_name": "t", "storage_hint": "other"})
    assert (spec.image.template_name, spec.storage_hint) == ("9000", "other")


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ({"http": {"url": "https://example.test/x.qcow2", "headers": {"X-Token": "t"}}}, "source.http.headers"),
        (
            {"http": {"url": "https://example.test/x", "authentication": {"bearer": {"secretRef": {"name": "s"}}}}},
            "source.http.authentication",
        ),
        ({"registry": {"image": "quay.io/x"}}, "source.registry"),
        ({"dataVolume": {"name": "dv"}}, "source.dataVolume"),
        ({"vsphere": {"ovaURL": "https://example.test/x.ova"}}, "source.vsphere.ovaURL"),
        ({}, "source"),
        ({"libvirt": {"path": "/a"}, "http": {"url": "https://example.test/b"}}, "source"),
        ({"libvirt": {"url": "ftp://example.test/x"}}, "URL"),
    ],
)
def test_image_resources_the_provider_cannot_use_are_refused_by_path(source: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        ImagePrepareSpec.model_validate({"image_json": json.dumps({"source": source}), "target_name": "t"})
    assert where in str(info.value)


def test_clone_takes_the_manager_resource_forms() -> None:
    spec = CloneSpec.model_validate(
        {
            "source_vm_id": "a",
            "target_name": "b",
            "class_json": json.dumps(
                {
                    "cpu": 2,
                    "memory": "4Gi",
                    "diskDefaults": {"type": "thin", "size": "40Gi"},
                    "resourceLimits": {"memoryLimit": "8Gi"},
                    "securityProfile": {"encryptionPolicy": {"enabled": True, "keyProvider": "kms"}},
                }
            ),
            "placement_json": json.dumps({"name": "spread"}),
            "customize_json": json.dumps(
                {
                    "hostname": "web",
                    "userData": {"cloudInit": {"inline": "#cloud-config\n"}},
                    "networks": [{"name": "eth0", "dhcp": True}],
                }
            ),
        }
    )
    c = spec.vm_class
    assert (c.memory_mib, c.disk_defaults and c.disk_defaults.size_gib) == (4096, 40)
    assert c.resource_limits is not None
    assert c.resource_limits.memory_limit_mib == 8192
    assert c.security_profile is not None
    profile = c.security_profile
    assert (profile.encryption_enabled, profile.key_provider) == (True, "kms")
    assert spec.customize.user_data == "#cloud-config\n"
    assert spec.customize.networks[0].dhcp


@pytest.mark.parametrize(
    ("size", "gib"),
    [("40Gi", 40), ("40G", 38), ("1536Mi", 2), ("1Gi", 1), ("1", 1), ("1073741825", 2), ("2T", 1863)],
)
def test_a_disk_quantity_rounds_up_to_whole_gib(size: str, gib: int) -> None:
    # a disk is at least what was asked
    vm_class = specs.VMClass.model_validate({"diskDefaults": {"size": size}, "memory": "1536Mi"})
    assert vm_class.disk_defaults is not None
    assert vm_class.disk_defaults.size_gib == gib
    assert vm_class.memory_mib == 1536


def test_memory_quantities_still_round_down_to_mib() -> None:
    vm_class = specs.VMClass.model_validate({"memory": "1G", "resourceLimits": {"memoryLimit": "2G"}})
    assert vm_class.memory_mib == 953
    assert vm_class.resource_limits is not None
    assert vm_class.resource_limits.memory_limit_mib == 1907


def test_a_zero_disk_quantity_is_refused() -> None:
    with pytest.raises(ValidationError, match="outside 1Gi"):
        specs.VMClass.model_validate({"diskDefaults": {"size": "0"}})


@pytest.mark.parametrize(
    ("customize", "where"),
    [
        ({"userData": {"cloudInit": {"secretRef": {"name": "s"}}}}, "secretRef"),
        ({"userData": {"ignition": {"inline": "{}"}}}, "ignition"),
        ({"sysprep": {"enabled": True}}, "sysprep"),
        ({"guestCommands": [{"command": "ls"}]}, "guestCommands"),
        ({"networks": [{"name": "eth0", "macAddress": "52:54:00:00:00:01"}]}, "macAddress"),
        ({"networks": [{"name": "eth0", "dhcp": True, "ipAddress": "10.0.0.2"}]}, "dhcp"),
    ],
)
def test_customizations_the_provider_cannot_apply_are_refused(customize: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        CloneSpec.model_validate({"source_vm_id": "a", "target_name": "b", "customize_json": json.dumps(customize)})
    assert where in str(info.value)
