"""ListVMs and Describe through vm-provider against a bare libvirt-python loop.

``--vms`` (200) domains ``vmpb-list-NNN`` are made on the real daemon
(the test bed's own, ``testbed/libvirtd.sh start``) through vm-provider's Create: 1 vCPU, 128 MiB, direct
kernel boot of the test-bed guest, a 1 GiB blank qcow2 root disk, a NIC on
the ``default`` network. ``--running`` (3) of them are started and the last
of those paused once they hold DHCP leases, so states differ. Then, in
interleaved rounds (shuffled order, one unrecorded warm-up round):

- ``ListVMs``: the RPC on ``vm-provider --backend libvirt`` (a subprocess on
  the test bed's daemon) against a bare loop reading what VMInfo carries, the
  cheapest way libvirt-python offers: one ``getAllDomainStats`` (state,
  disk capacities), the XML of each domain (name, UUID, vCPUs, memory,
  disks, NICs and MACs, our metadata to keep vm-provider's domains only),
  the DHCP leases once per network;
- ``Describe all``: Describe of every VM in turn (``--clients`` callers at
  once, 1 by default) against a bare lookup by UUID + state + XML (+ the
  leases of its networks when it runs, the ARP table when they know
  nothing) for each, every Describe on its own: nothing kept between them;
- ``GetCapabilities`` as many times as Describe all: no backend behind it,
  so it shows what gRPC and the server alone cost per call;
- ``Describe all`` through a bare gRPC server (grpc's thread pool, in a
  process of its own) whose Describe does the bare loop's work for one VM:
  the same libvirt work behind gRPC, without the framework. The provider's
  ratio to it is the framework's own cost on the real daemon.

Both run first with ``--small`` (50) domains, then with all of them: the
growth between the two sizes is the cost per domain, which must be about
the same on both sides. A child process then counts the libvirt calls each
side makes at each size (libvirt-python's C module wrapped; the provider
runs in that child through ProviderHarness for this). Prints the wall-time
ratios provider / bare of the medians (goal <= 1.3) and exits 1 when one
misses it. Other users of the daemon do not disturb it: both sides skip
domains that are not vm-provider's or vanish meanwhile.

Every domain and volume made is removed at the end, also on failure or
Ctrl-C; leftovers of an interrupted run are removed at the start.

    bash testbed/libvirtd.sh start && .venv/bin/python bench/libvirt_list_describe.py [--rounds 25] [--clients 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import libvirt
from libvirtd import (
    URI,
    bare_describe,
    bare_list,
    guest_dir,
    open_daemon,
    remove,
    start_bare,
    start_provider,
    start_some,
    sweep,
    wait,
)

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

T = TypeVar("T")
PREFIX = "vmpb-list-"
GOAL = 1.3
#: libvirt functions answered inside the client library (cached names and
#: UUIDs, reference counting, error and event plumbing): no daemon round trip.
LOCAL = ("Free", "Ref", "GetName", "GetUUID", "GetUUIDString", "GetID", "IsAlive", "LastError", "ErrorHandler")

# -- through vm-provider ------------------------------------------------------------------


def provider_list(stub: pb_grpc.ProviderStub) -> list[pb.VMInfo]:
    return list(stub.ListVMs(pb.ListVMsRequest(), timeout=120).vms)


def provider_describe(stub: pb_grpc.ProviderStub, vm_id: str) -> pb.DescribeResponse:
    answer: pb.DescribeResponse = stub.Describe(pb.DescribeRequest(id=vm_id), timeout=30)
    return answer


def each(call: Callable[[str], T], ids: list[str], pool: ThreadPoolExecutor | None = None) -> list[T]:
    """``call`` for every id: in turn, or spread over the pool's threads."""
    return [call(i) for i in ids] if pool is None else list(pool.map(call, ids))


BACKEND_SETTINGS = {"uri": URI, "domain_type": "qemu"}
"""``qemu``: this host's KVM does not run guests; skip the backend's probe boot."""


def create(stub: pb_grpc.ProviderStub, name: str, guest: Path) -> str:
    extra = {
        "libvirt.kernel": str(guest / "vmlinuz"),
        "libvirt.initrd": str(guest / "initrd.img"),
        "libvirt.cmdline": f"console=ttyS0 quiet vmp.hostname={name}",
    }
    vm_class = {"CPU": 1, "MemoryMiB": 128, "DiskDefaults": {"SizeGiB": 1}, "ExtraConfig": extra}
    resp = stub.Create(pb.CreateRequest(name=name, class_json=json.dumps(vm_class), tags=["vmpb"]), timeout=120)
    wait(stub, resp.task)
    return str(resp.id)


def create_many(stub: pb_grpc.ProviderStub, names: list[str], guest: Path) -> list[str]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda n: create(stub, n, guest), names))


# -- counting libvirt calls -----------------------------------------------------------------


class CountingModule:
    """libvirt-python's C module, counting each function called through it."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._module, name)
        if not callable(real) or name.startswith("virEvent"):
            return real

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.counts[name] += 1
            return real(*args, **kwargs)

        return counted

    def measure(self, work: Callable[[], object]) -> dict[str, int]:
        """The daemon-bound calls ``work`` made, by function."""
        before = self.counts.copy()
        work()
        after = self.counts - before
        return {k: v for k, v in sorted(after.items()) if not k.endswith(LOCAL)}


def count_calls(ids_file: Path) -> None:
    """Child process: count the libvirt calls of both sides, print JSON."""
    import logging

    from provider_core.testing import ProviderHarness

    logging.basicConfig(level=logging.WARNING)
    libvirt.registerErrorHandler(lambda *_: None, None)
    counter = CountingModule(libvirt.libvirtmod)
    libvirt.libvirtmod = counter
    ids = json.loads(ids_file.read_text())
    conn = libvirt.open(URI)
    out: dict[str, dict[str, int]] = {"bare ListVMs": counter.measure(lambda: bare_list(conn))}
    out["bare Describe all"] = counter.measure(lambda: each(lambda i: bare_describe(conn, i), ids))
    with ProviderHarness.for_backend("libvirt", BACKEND_SETTINGS) as h:
        stub = h.stub
        stub.Validate(pb.ValidateRequest(), timeout=60)  # connects and reads the host's facts
        # The first pass fills whatever the backend keeps between calls; the
        # second is what the timed rounds (after their warm-up) pay.
        out["provider ListVMs first"] = counter.measure(lambda: provider_list(stub))
        out["provider ListVMs"] = counter.measure(lambda: provider_list(stub))
        out["provider Describe all first"] = counter.measure(lambda: each(lambda i: provider_describe(stub, i), ids))
        out["provider Describe all"] = counter.measure(lambda: each(lambda i: provider_describe(stub, i), ids))
    conn.close()
    print(json.dumps(out))


def counted(ids: list[str], work: Path) -> dict[str, dict[str, int]]:
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps(ids))
    cmd = [sys.executable, __file__, "--count-calls", str(ids_file)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, timeout=300).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- the benchmark ------------------------------------------------------------------------


def rounds(jobs: dict[str, Callable[[], Iterable[object]]], expect: dict[str, int], n: int) -> dict[str, list[float]]:
    """Run every job ``n`` times (after one warm-up), interleaved in a
    shuffled order each round; check each answers ``expect`` items."""
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(n + 1):
        order = list(jobs)
        random.shuffle(order)
        for key in order:
            start = time.perf_counter()
            result = jobs[key]()
            elapsed = time.perf_counter() - start
            got = sum(1 for x in result if _ours(x))
            if got != expect[key]:
                raise RuntimeError(f"{key}: {got} of our VMs in the answer, expected {expect[key]}")
            if r:
                times[key].append(elapsed)
    return times


def _ours(item: object) -> bool:
    if isinstance(item, pb.VMInfo):
        return item.name.startswith(PREFIX)
    if isinstance(item, pb.DescribeResponse):
        return item.exists
    if isinstance(item, pb.GetCapabilitiesResponse):
        return True
    return str(item["name"]).startswith(PREFIX)  # type: ignore[index]


def measure(
    conn: libvirt.virConnect, stub: pb_grpc.ProviderStub, bare: pb_grpc.ProviderStub, ids: list[str], n: int, clients: int
) -> dict[str, list[float]]:
    """Time both sides; Describe all with ``clients`` callers at once."""
    with ThreadPoolExecutor(clients) as threads:
        pool = threads if clients > 1 else None
        jobs: dict[str, Callable[[], Iterable[object]]] = {
            "ListVMs provider": lambda: provider_list(stub),
            "ListVMs bare": lambda: bare_list(conn),
            "Describe all provider": lambda: each(lambda i: provider_describe(stub, i), ids, pool),
            "Describe all bare": lambda: each(lambda i: bare_describe(conn, i), ids, pool),
            "Describe all bare-grpc": lambda: each(lambda i: provider_describe(bare, i), ids, pool),
            # The server's own cost: as many round trips that never reach the backend.
            "GetCapabilities provider": lambda: each(
                lambda _: stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30), ids, pool
            ),
        }
        return rounds(jobs, dict.fromkeys(jobs, len(ids)), n)


def report(results: dict[int, dict[str, list[float]]], calls: dict[int, dict[str, dict[str, int]]]) -> dict[str, float]:
    sizes = sorted(results)
    med = {n: {k: statistics.median(v) * 1000 for k, v in results[n].items()} for n in sizes}
    ratios = {}
    print(f"\n{'':22}{'domains':>8}{'provider ms':>13}{'bare ms':>10}{'ratio':>7}   per-round ratios")
    for op in ("ListVMs", "Describe all"):
        for n in sizes:
            p, b = med[n][f"{op} provider"], med[n][f"{op} bare"]
            per_round = [x / y for x, y in zip(results[n][f"{op} provider"], results[n][f"{op} bare"], strict=True)]
            print(f"{op:22}{n:8}{p:13.1f}{b:10.1f}{p / b:7.2f}   " + " ".join(f"{r:.2f}" for r in per_round))
            ratios[f"{op} {n}"] = p / b
    small, big = sizes[0], sizes[-1]
    grown = big - small
    floor = med[big]["GetCapabilities provider"]
    print(
        f"\n{big} GetCapabilities (gRPC and the server, no backend): {floor:.1f} ms, that is "
        f"{floor / med[big]['Describe all provider']:.0%} of the provider's Describe all"
    )
    through = med[big]["Describe all bare-grpc"]
    print(
        f"{big} Describe through a bare gRPC server doing the bare work (no framework): {through:.1f} ms;"
        f" provider / that = {med[big]['Describe all provider'] / through:.2f}"
    )
    print(f"\ncost per domain (growth of the median from {small} to {big} domains):")
    for op in ("ListVMs", "Describe all"):
        slope = {side: (med[big][f"{op} {side}"] - med[small][f"{op} {side}"]) / grown for side in ("provider", "bare")}
        print(
            f"  {op:14} provider {slope['provider'] * 1000:6.0f} us  bare {slope['bare'] * 1000:6.0f} us"
            f"  ratio {slope['provider'] / slope['bare']:.2f}"
        )
    print("\nlibvirt calls reaching the daemon (calls answered inside the client library left out):")
    for op, unit in (("ListVMs", "per domain (growth)"), ("Describe all", "per Describe")):
        for side in ("provider", "bare"):
            key = f"{side} {op}"
            line = f"  {key:22} " + "  ".join(f"{sum(calls[n][key].values()):5} at {n}" for n in sizes)
            print(f"{line}  = {_per_domain(calls, key, op, small, big):.2f} {unit}")
            if f"{key} first" in calls[big]:
                print(f"  {'':22} first pass: {_per_domain(calls, f'{key} first', op, small, big):.2f} {unit}")
            print(f"  {'':22} at {big}: " + ", ".join(f"{k.removeprefix('vir')} {v}" for k, v in calls[big][key].items()))
    return ratios


def _per_domain(calls: dict[int, dict[str, dict[str, int]]], key: str, op: str, small: int, big: int) -> float:
    total = {n: sum(calls[n][key].values()) for n in (small, big)}
    return (total[big] - total[small]) / (big - small) if op == "ListVMs" else total[big] / big


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=200, help="domains at the full size")
    parser.add_argument("--small", type=int, default=50, help="domains at the small size")
    parser.add_argument("--running", type=int, default=3, help="VMs started (the last one then paused)")
    parser.add_argument("--rounds", type=int, default=25, help="recorded rounds per size")
    parser.add_argument("--clients", type=int, default=1, help="concurrent callers for Describe all (both sides)")
    parser.add_argument("--count-calls", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_calls:
        count_calls(args.count_calls)
        return 0
    if not 0 < args.small < args.vms or not 2 <= args.running <= args.small or args.clients < 1:
        parser.error("need 0 < --small < --vms, 2 <= --running <= --small and --clients >= 1")
    conn = open_daemon()
    if conn is None:
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on kill too
    left = sweep(conn, PREFIX)
    if left:
        print(f"removed {left} domains left by an earlier run")
    guest = guest_dir()
    names = [f"{PREFIX}{i:03d}" for i in range(args.vms)]
    sizes = [args.small, args.vms]
    results: dict[int, dict[str, list[float]]] = {}
    calls: dict[int, dict[str, dict[str, int]]] = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmp-bench-list-") as tmp:
        work = Path(tmp)
        proc, address = start_provider(work, BACKEND_SETTINGS)
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.ProviderStub(channel)  # type: ignore[no-untyped-call]
        bare_proc, bare_address = start_bare(work)
        bare_channel = grpc.insecure_channel(bare_address)
        bare = pb_grpc.ProviderStub(bare_channel)  # type: ignore[no-untyped-call]
        try:
            ids: list[str] = []
            for size in sizes:
                t0 = time.monotonic()
                ids += create_many(stub, names[len(ids) : size], guest)
                print(f"{size} domains defined through Create ({time.monotonic() - t0:.1f} s)", end="")
                if size == sizes[0]:
                    print(f"; {start_some(conn, ids[: args.running])}", end="")
                print(f"; {args.rounds} rounds")
                results[size] = measure(conn, stub, bare, ids, args.rounds, args.clients)
                calls[size] = counted(ids, work)
        finally:
            try:
                t0 = time.monotonic()
                removed = remove(conn, stub if proc.poll() is None else None, PREFIX)
                print(f"removed {removed} domains and their volumes ({time.monotonic() - t0:.1f} s)")
            finally:
                channel.close()
                bare_channel.close()
                for p in (proc, bare_proc):
                    p.terminate()
                    p.wait(30)
                conn.close()
    ratios = report(results, calls)
    big = sizes[-1]
    ok = all(ratios[f"{op} {big}"] <= GOAL for op in ("ListVMs", "Describe all"))
    print(
        f"\nprovider / bare at {big} domains: ListVMs {ratios[f'ListVMs {big}']:.2f}, "
        f"Describe all {ratios[f'Describe all {big}']:.2f}  (goal <= {GOAL}; {time.monotonic() - began:.0f} s in all)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
