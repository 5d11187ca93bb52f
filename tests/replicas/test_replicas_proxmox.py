"""Two providers on one Proxmox endpoint (fakepve) sharing one database."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import wait_task

TOKEN_ID, TOKEN_SECRET = "root@pam!replicas", "replicas-secret"


@pytest.fixture
def pve_settings(fakepve: Any, fakepve_cafile: str) -> dict[str, Any]:
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    return {"endpoint": fakepve.url, "token_id": TOKEN_ID, "token_secret": TOKEN_SECRET, "ca_file": fakepve_cafile}


def create_request(name: str) -> pb.CreateRequest:
    vm_class, disks = json.dumps({"CPU": 1, "MemoryMiB": 256}), json.dumps([{"SizeGiB": 1}])
    return pb.CreateRequest(name=name, class_json=vm_class, disks_json=disks)


def named(pve: Any, name: str) -> list[Any]:
    return [vm for vm in pve.vms if vm.name == name]


def test_twenty_creates_of_one_name_over_two_replicas_make_one_vm(
    replicas: Callable[..., Any], database: str, pve_settings: dict[str, Any], fakepve: Any
) -> None:
    a = replicas("proxmox", pve_settings, database)
    b = replicas("proxmox", pve_settings, database)

    def create(i: int) -> pb.CreateResponse:
        stub = (a if i % 2 else b).stub
        return stub.Create(create_request("one-of-twenty"), timeout=60)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(create, range(20)))
    ids = {r.id for r in answers}
    assert len(ids) == 1, ids
    for i, r in enumerate(answers):  # a task is answered by either replica
        wait_task((b if i % 2 else a).stub, r.task if r.HasField("task") else None, timeout=60)
    assert len(named(fakepve, "one-of-twenty")) == 1
    assert a.stub.Describe(pb.DescribeRequest(id=ids.pop()), timeout=10).exists
