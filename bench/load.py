"""A bounded load test: many clients running mixed RPCs against the
``vm-provider`` command, on the sim backend and on libvirt's test driver.

Each of ``--clients`` (200) concurrent clients loops, for ``--seconds`` (60)
per round, through the life of a VM of its own: Create, Describe a few
times, Power on, ListVMs now and then, GetCapabilities and Validate now
and then, Power off, Delete, waiting for every task by polling TaskStatus
as a client does. ``--rounds`` (3) rounds run against one provider process,
after a warm-up round of the same load whose RSS is not compared (the
first minutes of a process fill its allocator's arenas, gRPC's and
libvirt's caches: growth that stops is not a leak); after each round every
task handed out must have ended (none stuck) and the provider's RSS is
read. Goals: no error at all (warm-up included), no stuck task, RSS growth
from the first measured round to the last under 5 %. Prints each round's calls per
second, p50/p99 latency, errors by RPC and code, and RSS; exits 1 when a
goal is missed.

The provider runs as users run it (``vm-provider --backend NAME``, a
process of its own on 127.0.0.1); the clients share a few channels in one
asyncio process. Nothing leaves this machine.

    .venv/bin/python bench/load.py [--backends sim libvirt] [--clients 200] [--seconds 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

RSS_GOAL = 0.05
CHANNELS = 8
TASK_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def start(backend: str, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = work / "plugins.toml"
    config.write_text(f'[server]\nstate_dir = "{work / "state"}"\nlog_level = "WARNING"\n')
    exe = Path(sys.executable).with_name("vm-provider")
    cmd = [str(exe), "--backend", backend, "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stderr=(work / "provider.log").open("wb"))
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        channel.close()
    return proc, target


class Round:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {}
        self.errors: Counter[tuple[str, str]] = Counter()
        self.tasks: list[str] = []
        self.calls = 0


async def call(r: Round, stub: pb_grpc.ProviderStub, rpc: str, request: object) -> object | None:
    started = time.perf_counter()
    try:
        answer = await getattr(stub, rpc)(request, timeout=120)
    except grpc.aio.AioRpcError as err:
        r.errors[(rpc, err.code().name)] += 1
        return None
    r.latencies.setdefault(rpc, []).append(time.perf_counter() - started)
    r.calls += 1
    return answer


async def wait(r: Round, stub: pb_grpc.ProviderStub, task: pb.TaskRef | None) -> bool:
    if task is None or not task.id:
        return True
    r.tasks.append(task.id)
    end = time.monotonic() + TASK_TIMEOUT
    while time.monotonic() < end:
        status = await call(r, stub, "TaskStatus", pb.TaskStatusRequest(task=task))
        if status is None:
            return False
        assert isinstance(status, pb.TaskStatusResponse)
        if status.done:
            if status.error:
                r.errors[("task", status.error[:60])] += 1
            return not status.error
        await asyncio.sleep(0.1)
    r.errors[("task", "still running after 60 s")] += 1
    return False


async def client(r: Round, stub: pb_grpc.ProviderStub, n: int, end: float, round_no: int) -> None:
    for i in itertools.count():
        if time.monotonic() >= end:
            return
        name = f"load-{round_no}-{n}-{i}"
        created = await call(r, stub, "Create", pb.CreateRequest(name=name, class_json=json.dumps({"CPU": 1, "MemoryMiB": 128})))
        if not isinstance(created, pb.CreateResponse) or not await wait(
            r, stub, created.task if created.HasField("task") else None
        ):
            continue
        vm = created.id
        for _ in range(3):
            await call(r, stub, "Describe", pb.DescribeRequest(id=vm))
        powered = await call(r, stub, "Power", pb.PowerRequest(id=vm, op=pb.POWER_OP_ON))
        if isinstance(powered, pb.TaskResponse):
            await wait(r, stub, powered.task if powered.HasField("task") else None)
        await call(r, stub, "Describe", pb.DescribeRequest(id=vm))
        if i % 5 == n % 5:
            await call(r, stub, "ListVMs", pb.ListVMsRequest())
        if i % 10 == n % 10:
            await call(r, stub, "GetCapabilities", pb.GetCapabilitiesRequest())
            await call(r, stub, "Validate", pb.ValidateRequest())
        off = await call(r, stub, "Power", pb.PowerRequest(id=vm, op=pb.POWER_OP_OFF))
        if isinstance(off, pb.TaskResponse):
            await wait(r, stub, off.task if off.HasField("task") else None)
        deleted = await call(r, stub, "Delete", pb.DeleteRequest(id=vm))
        if isinstance(deleted, pb.TaskResponse):
            await wait(r, stub, deleted.task if deleted.HasField("task") else None)


async def run_round(target: str, clients: int, seconds: float, round_no: int) -> tuple[Round, float]:
    r = Round()
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    stubs = [pb_grpc.ProviderStub(c) for c in channels]  # type: ignore[no-untyped-call]
    started = time.monotonic()
    end = started + seconds
    await asyncio.gather(*(client(r, stubs[n % CHANNELS], n, end, round_no) for n in range(clients)))
    elapsed = time.monotonic() - started
    # every task handed out has ended
    stuck = 0
    for task_id in r.tasks:
        status = await stubs[0].TaskStatus(pb.TaskStatusRequest(task=pb.TaskRef(id=task_id)), timeout=30)
        stuck += not status.done
    if stuck:
        r.errors[("task", "stuck")] += stuck
    for c in channels:
        await c.close()
    return r, elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def bench(backend: str, args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="vmp-load-") as tmp:
        proc, target = start(backend, Path(tmp))
        try:
            rss: list[int] = []
            errors: Counter[tuple[str, str]] = Counter()
            for n in range(0 if args.warmup else 1, args.rounds + 1):
                r, elapsed = asyncio.run(run_round(target, args.clients, args.seconds, n))
                time.sleep(1.0)
                if n == 0:
                    errors += r.errors
                    print(
                        f"{backend:8} warm-up: errors {sum(r.errors.values())}, provider RSS {rss_kib(proc.pid) / 1024:.1f} MiB"
                    )
                    continue
                rss.append(rss_kib(proc.pid))
                everything = [v for vs in r.latencies.values() for v in vs]
                describe = r.latencies.get("Describe", [])
                print(
                    f"{backend:8} round {n}: {r.calls / elapsed:7.0f} calls/s, {len(r.tasks)} tasks, "
                    f"p50 {pct(everything, 0.5):6.1f} ms, p99 {pct(everything, 0.99):7.1f} ms "
                    f"(Describe p99 {pct(describe, 0.99):6.1f} ms), errors {sum(r.errors.values())}, "
                    f"provider RSS {rss[-1] / 1024:.1f} MiB"
                )
                errors += r.errors
            growth = (rss[-1] - rss[0]) / rss[0]
            for (rpc, code), count in sorted(errors.items()):
                print(f"{backend:8}   error: {rpc} {code} x{count}")
            ok = not errors and growth < RSS_GOAL
            print(
                f"{backend:8} summary: errors {sum(errors.values())} (goal 0), "
                f"RSS round 1 -> {args.rounds}: {growth * 100:+.1f} % (goal < {RSS_GOAL * 100:.0f} %): "
                f"{'met' if ok else 'MISSED'}"
            )
            return ok
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["sim", "libvirt"], choices=["sim", "libvirt"])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="compare RSS from the very first round")
    args = parser.parse_args()
    os.environ.pop("LIBVIRT_DEFAULT_URI", None)  # the libvirt backend's own default: test:///default
    results = [bench(backend, args) for backend in args.backends]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
