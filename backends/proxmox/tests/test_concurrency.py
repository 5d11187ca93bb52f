"""Several provider processes against one cluster: VMIDs never collide
(``nextid`` reserves nothing), and concurrent Creates of one name in one
provider make one VM."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from provider_core.pb import provider_pb2 as pb

PER_PROVIDER = 6


def run_all(jobs: list[Callable[[], str]]) -> list[str]:
    results: list[str] = []
    failures: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def worker(job: Callable[[], str]) -> None:
        start.wait()
        try:
            results.append(job())
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    return results


def test_two_providers_never_collide(provider: Any, ops_for: Any, settings: dict[str, Any], pve: Any) -> None:
    one, two = ops_for(provider(settings)), ops_for(provider(settings))

    def job(ops: Any, name: str) -> Callable[[], str]:
        return lambda: str(ops.create(name))

    ids = run_all([job(ops, f"{tag}-{i}") for ops, tag in ((one, "a"), (two, "b")) for i in range(PER_PROVIDER)])
    assert len(set(ids)) == 2 * PER_PROVIDER
    names = {pve.vm(int(i)).config["name"] for i in ids}
    assert names == {f"{tag}-{i}" for tag in "ab" for i in range(PER_PROVIDER)}
    listed = one.stub.ListVMs(pb.ListVMsRequest()).vms
    assert sorted(vm.id for vm in listed) == sorted(ids)


def test_same_name_at_once_makes_one_vm(ops: Any, pve: Any) -> None:
    ids = run_all([lambda: ops.create("twin")] * 4)
    assert len(set(ids)) == 1
    assert [vm.vmid for vm in pve.vms if vm.name == "twin"] == [int(ids[0])]
