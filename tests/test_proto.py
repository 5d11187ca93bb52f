"""The generated protocol matches the wire numbers deployed clients encode.

The reference is ``docs/spec/provider-v1-wire-numbers.md``, parsed
here, compared field by field against the descriptors the server uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from provider_core.pb import provider_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
WIRE_SPEC = ROOT / "docs" / "spec" / "provider-v1-wire-numbers.md"

SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
}

Fields = dict[str, tuple[int, str, str]]


def _separator(line: str) -> bool:
    return re.fullmatch(r"\|[\s|:-]+\|", line.strip()) is not None


class WireSpec:
    """The tables of the wire-numbers document."""

    def __init__(self, text: str) -> None:
        self.package = ""
        self.rpcs: dict[str, tuple[str, str]] = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.messages: dict[str, Fields] = {}
        section = ""
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if m := re.match(r"^Package `([\w.]+)`", line):
                self.package = m.group(1)
            elif m := re.match(r"^##+ (.+)$", line):
                section = m.group(1).strip()
                if section.startswith("Enum "):
                    self.enums[section.removeprefix("Enum ")] = {}
                elif not section.startswith(("Service ", "Messages")):
                    self.messages[section] = {}
            elif line.startswith("|") and not _separator(line):
                if i + 1 < len(lines) and _separator(lines[i + 1]):  # a header row
                    continue
                cells = [c.strip() for c in line.strip("|").split("|")]
                if section.startswith("Service "):
                    self.rpcs[cells[0]] = (cells[1], cells[2])
                elif section.startswith("Enum "):
                    self.enums[section.removeprefix("Enum ")][cells[0]] = int(cells[1])
                else:
                    self.messages[section][cells[0]] = (int(cells[1]), cells[2], cells[3])


@pytest.fixture(scope="module")
def wire() -> WireSpec:
    spec = WireSpec(WIRE_SPEC.read_text())
    assert spec.rpcs, "the wire spec did not parse"
    assert spec.messages
    assert spec.enums
    return spec


def _relative(full_name: str) -> str:
    return full_name.removeprefix(pb.DESCRIPTOR.package + ".")


def _all_messages() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(desc: Descriptor) -> None:
        found[_relative(desc.full_name)] = desc
        for nested in desc.nested_types:
            walk(nested)

    for desc in pb.DESCRIPTOR.message_types_by_name.values():
        walk(desc)
    return found


def _type_name(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _relative(field.message_type.full_name)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _relative(field.enum_type.full_name)
    return SCALARS[field.type]


def _fields(desc: Descriptor) -> Fields:
    return {f.name: (f.number, _type_name(f), "repeated" if f.is_repeated else "singular") for f in desc.fields}


def test_package(wire: WireSpec) -> None:
    assert pb.DESCRIPTOR.package == wire.package == "provider.v1"


def test_the_same_messages_exist(wire: WireSpec) -> None:
    assert sorted(_all_messages()) == sorted(wire.messages)


def test_every_field_number_type_and_label(wire: WireSpec) -> None:
    ours = _all_messages()
    for name, fields in wire.messages.items():
        assert _fields(ours[name]) == fields, f"message {name} differs from the wire spec"


def test_enums(wire: WireSpec) -> None:
    ours = {_relative(e.full_name): {v.name: v.number for v in e.values} for e in pb.DESCRIPTOR.enum_types_by_name.values()}
    assert ours == wire.enums


def test_rpc_signatures(wire: WireSpec) -> None:
    service = pb.DESCRIPTOR.services_by_name["Provider"]
    assert service.full_name == "provider.v1.Provider"
    ours = {m.name: (_relative(m.input_type.full_name), _relative(m.output_type.full_name)) for m in service.methods}
    assert ours == wire.rpcs
    assert not any(m.client_streaming or m.server_streaming for m in service.methods)


def test_the_parser_reads_what_the_document_holds(wire: WireSpec) -> None:
    # Guards the parser itself: a table it skipped would make the checks above vacuous.
    text = WIRE_SPEC.read_text()
    assert len(wire.rpcs) == 18
    assert len(wire.messages) == text.count("\n### ")
    assert wire.messages["VMInfo"]["provider_raw"] == (9, "VMInfo.ProviderRawEntry", "repeated")
    assert wire.messages["Empty"] == {}


def test_generated_code_has_not_drifted_from_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, "tools/gen_proto.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_image_prepare_answers_both_revisions() -> None:
    """ImagePrepareResponse (the revision VirtRigaud's manager speaks since
    v0.3.10) extends TaskResponse (the revision before): a client of either
    reads the task from an answer of either."""
    new = pb.ImagePrepareResponse(task=pb.TaskRef(id="t-1"), prepared_image_id="default/base", prepared_image_path="/p/base")
    old = pb.TaskResponse.FromString(new.SerializeToString())
    assert old.task.id == "t-1"
    back = pb.ImagePrepareResponse.FromString(pb.TaskResponse(task=pb.TaskRef(id="t-2")).SerializeToString())
    assert (back.task.id, back.prepared_image_id, back.prepared_image_path) == ("t-2", "", "")
    method = pb.DESCRIPTOR.services_by_name["Provider"].methods_by_name["ImagePrepare"]
    assert method.output_type.name == "ImagePrepareResponse"


def test_the_staging_revision_of_transfers(wire: WireSpec) -> None:
    """The revision VirtRigaud's manager speaks since v0.3.10 adds the
    staging backend, transfer mode and storage options to both transfer
    requests and three lists to GetCapabilities; a request of the revision
    before reads as the same request with them empty."""
    staging = {"backend_type": (8, "string", "singular"), "transfer_mode": (9, "string", "singular")}
    staging["storage_options_json"] = (10, "string", "singular")
    for message in ("ExportDiskRequest", "ImportDiskRequest"):
        assert {k: v for k, v in wire.messages[message].items() if k in staging} == staging
    lists = ("supported_export_backends", "supported_import_backends", "supported_transfer_modes")
    caps = wire.messages["GetCapabilitiesResponse"]
    assert [caps[name] for name in lists] == [(n, "string", "repeated") for n in (14, 15, 16)]
    old = pb.ExportDiskRequest(vm_id="vm", destination_url="pvc://claim/a.qcow2", format="qcow2").SerializeToString()
    again = pb.ExportDiskRequest.FromString(old)
    assert (again.backend_type, again.transfer_mode, again.storage_options_json) == ("", "", "")
