"""The backend against the libvirt-python of an older libvirt (8.0: Ubuntu
22.04, RHEL 9.0).

libvirt-python makes its ``VIR_*`` constants from the API XML of the
libvirt it is built against, so on a host with libvirt 8.0 every constant
added later is missing, and a module reading one at import (or on a common
path) fails there. These tests put a stand-in for the ``libvirt`` module in
``sys.modules``: the real module with every constant newer than 8.0 hidden,
import the whole backend afresh against it, and run a VM's life on libvirt's
test driver through the RPCs.

Which constants are newer than 8.0 comes from the installed libvirt's API
description, ``libvirt-api.xml`` (the file libvirt-python is generated
from; ``pkg-config --variable=libvirt_api libvirt``, package libvirt-dev):
each ``<enum>`` and ``<macro>`` there carries the ``version`` that
introduced it (libvirt's "Since:" annotations). A ``VIR_*`` name the module
has and that file does not list is hidden too, its age being unknown.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

#: The oldest libvirt the backend supports (Ubuntu 22.04, RHEL 9.0).
OLDEST = (8, 0, 0)
DEFAULT_API_XML = Path("/usr/share/libvirt/api/libvirt-api.xml")


def api_xml() -> Path:
    """Where the installed libvirt's API description lies."""
    if shutil.which("pkg-config"):
        found = subprocess.run(
            ["pkg-config", "--variable=libvirt_api", "libvirt"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found:
            return Path(found)
    return DEFAULT_API_XML


def since(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def newer_names(module: types.ModuleType, xml: Path) -> frozenset[str]:
    """The module's ``VIR_*`` names that libvirt introduced after OLDEST,
    or that the API description does not list."""
    known: dict[str, tuple[int, ...]] = {}
    for el in ET.parse(xml).getroot().iter():
        name = el.get("name", "")
        if el.tag in ("enum", "macro") and name.startswith("VIR_"):
            known[name] = since(el.get("version", "0.0.0"))
    return frozenset(n for n in dir(module) if n.startswith("VIR_") and known.get(n, (999,)) > OLDEST)


class OlderLibvirt(types.ModuleType):
    """The real libvirt module as libvirt-python built against an older
    libvirt shows it: the hidden names do not exist."""

    def __init__(self, real: types.ModuleType, hidden: frozenset[str]) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        self._hidden = hidden

    def __getattr__(self, name: str) -> Any:
        if name in self._hidden:
            raise AttributeError(f"module 'libvirt' has no attribute {name!r} (introduced after libvirt 8.0)")
        return getattr(self._real, name)

    def __dir__(self) -> list[str]:
        return [n for n in dir(self._real) if n not in self._hidden]


@pytest.fixture(scope="module")
def hidden() -> frozenset[str]:
    xml = api_xml()
    if not xml.exists():
        pytest.fail(f"no libvirt API description at {xml}: install libvirt-dev (testbed/install.sh does)")
    return newer_names(libvirt, xml)


@pytest.fixture
def older(hidden: frozenset[str]) -> Iterator[OlderLibvirt]:
    """The stand-in as ``libvirt`` while the backend is imported afresh;
    the real module and the backend's modules as they were afterwards."""
    saved = {n: m for n, m in sys.modules.items() if n == "libvirt" or n.startswith("vm_provider_libvirt")}
    for name in saved:
        del sys.modules[name]
    stand_in = OlderLibvirt(libvirt, hidden)
    sys.modules["libvirt"] = stand_in
    try:
        yield stand_in
    finally:
        for name in [n for n in sys.modules if n == "libvirt" or n.startswith("vm_provider_libvirt")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_the_stand_in_hides_what_came_after_8_0(older: OlderLibvirt, hidden: frozenset[str]) -> None:
    """What the other tests rely on: constants libvirt added after 8.0 are
    gone (TPM undefine 8.9, NVRAM reset 8.1), older ones are there."""
    assert "VIR_DOMAIN_UNDEFINE_TPM" in hidden
    assert "VIR_DOMAIN_START_RESET_NVRAM" in hidden
    assert not hasattr(older, "VIR_DOMAIN_UNDEFINE_TPM")
    with pytest.raises(AttributeError):
        exec("import libvirt\nlibvirt.VIR_DOMAIN_UNDEFINE_TPM", {})
    assert older.VIR_DOMAIN_UNDEFINE_NVRAM == libvirt.VIR_DOMAIN_UNDEFINE_NVRAM  # 0.9.5
    assert older.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT  # 4.5
    assert older.virDomain is libvirt.virDomain


def test_every_module_of_the_backend_imports(older: OlderLibvirt) -> None:
    import vm_provider_libvirt

    names = [m.name for m in pkgutil.walk_packages(vm_provider_libvirt.__path__, "vm_provider_libvirt.")]
    assert "vm_provider_libvirt.removal" in names
    for name in names:
        module = importlib.import_module(name)
        assert getattr(module, "libvirt", older) is older, f"{name} imported another libvirt"
    removal: Any = sys.modules["vm_provider_libvirt.removal"]
    assert not removal.UNDEFINE_ALL & libvirt.VIR_DOMAIN_UNDEFINE_TPM
    assert removal.UNDEFINE_ALL & libvirt.VIR_DOMAIN_UNDEFINE_NVRAM


def test_a_vm_lives_and_goes_on_the_older_module(older: OlderLibvirt, test_uri: str) -> None:
    """Create (with cloud-init data, a data disk, a NIC), power, snapshot,
    reconfigure, list, clone and delete, each through the RPCs."""
    with ProviderHarness.for_backend("libvirt", {"uri": test_uri}) as h:
        assert type(h.backend).__module__.startswith("vm_provider_libvirt")
        assert sys.modules["vm_provider_libvirt.removal"].libvirt is older
        resp = h.stub.Create(
            pb.CreateRequest(
                name="older",
                class_json=json.dumps({"CPU": 1, "MemoryMiB": 256}),
                disks_json=json.dumps([{"SizeGiB": 1, "Name": "data"}]),
                user_data=b"#cloud-config\n",
            ),
            timeout=60,
        )
        h.wait(resp.task)
        vm_id = resp.id
        h.wait(h.stub.Power(pb.PowerRequest(id=vm_id, op=pb.POWER_OP_ON)).task)
        snap = h.stub.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=vm_id, name_hint="s1"))
        h.wait(snap.task)
        desired = json.dumps({"Class": {"CPU": 2, "MemoryMiB": 256}})
        h.wait(h.stub.Reconfigure(pb.ReconfigureRequest(id=vm_id, desired_json=desired)).task)
        listed = h.stub.ListVMs(pb.ListVMsRequest())
        assert vm_id in {vm.id for vm in listed.vms}
        h.wait(h.stub.Power(pb.PowerRequest(id=vm_id, op=pb.POWER_OP_OFF)).task)
        clone = h.stub.Clone(pb.CloneRequest(source_vm_id=vm_id, target_name="older-copy"))
        h.wait(clone.task)
        for gone in (clone.target_vm_id, vm_id):
            h.wait(h.stub.Delete(pb.DeleteRequest(id=gone)).task)
            assert not h.stub.Describe(pb.DescribeRequest(id=gone)).exists
        with pytest.raises(grpc.RpcError) as err:
            h.stub.Describe(pb.DescribeRequest(id=""))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
