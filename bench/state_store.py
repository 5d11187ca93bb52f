"""What the PostgreSQL state store costs against the SQLite file, in one run.

Two ``vm-provider`` processes on the simulator backend (``task_seconds =
0``: each Create is a task of the core, whose record is written before
the answer), one with the default SQLite store in a state directory, one
with ``state_url`` naming a fresh database in the test bed's PostgreSQL on
loopback (``testbed/postgres.sh``; ``--url`` names another server; the
database is created and dropped by the run). Rounds alternate between the
two so that noise hits both alike.

A third provider names the same database with ``synchronous_commit =
off`` (commits do not wait for the WAL's flush to disk): what a deployment
that sets it on the provider's role gets.

Prints, for each store: mutating calls (Create of a new name: a per-VM
lock, across processes with PostgreSQL, and a task record) per second with
p50/p99 latency, from ``--clients`` concurrent callers; then TaskStatus
calls per second with p50/p99 over the tasks made. Goal: PostgreSQL adds
at most 2 ms to a mutating call at p50.

    .venv/bin/python bench/state_store.py [--clients 4] [--rounds 4] [--calls 200] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
from vmp_testplugins.testbed import database_url, postgres_url

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

GOAL_MS = 2.0


class Provider:
    """A ``vm-provider`` process on the simulator, its port read from its start line."""

    def __init__(self, label: str, tmp: Path, env: dict[str, str]) -> None:
        self.label = label
        config = tmp / f"{label}.toml"
        with socket.socket() as sock:  # a free port, handed to the provider
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config.write_text(f'[server]\nlisten = "127.0.0.1:{self.port}"\n[backends.sim]\ntask_seconds = 0\n')
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VM_PROVIDER_")}
        environ.update(env, XDG_STATE_HOME=str(tmp / f"{label}-state"), VM_PROVIDER_CONFIG=str(config))
        exe = Path(sys.executable).with_name("vm-provider")
        self.proc = subprocess.Popen([str(exe), "--backend", "sim", "--log-level", "WARNING"], env=environ)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.ProviderStub(self.channel)  # type: ignore[no-untyped-call]
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.tasks: list[str] = []

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(30)


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def run_round(p: Provider, clients: int, calls: int, kind: str) -> tuple[float, list[float]]:
    """``calls`` calls of ``kind`` from ``clients`` callers: (calls per second, latencies in ms)."""
    vm_class = json.dumps({"CPU": 1, "MemoryMiB": 64})

    def create(_: int) -> float:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        reply: list[Any] = []
        ms = timed(lambda: reply.append(p.stub.Create(pb.CreateRequest(name=name, class_json=vm_class), timeout=30)))
        p.tasks.append(reply[0].task.id)
        return ms

    tasks = itertools.cycle(p.tasks or [""])

    def status(_: int) -> float:
        ref = pb.TaskRef(id=next(tasks))
        return timed(lambda: p.stub.TaskStatus(pb.TaskStatusRequest(task=ref), timeout=30))

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(create if kind == "create" else status, range(calls)))
    return calls / (time.perf_counter() - start), latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=200, help="calls per round and store")
    parser.add_argument("--url", help="a PostgreSQL server to make the database in (default: the test bed's)")
    args = parser.parse_args()

    admin = args.url or postgres_url()
    name = f"vmp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url(admin, name)
    providers: list[Provider] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vmp-bench-") as tmp:
            providers = [
                Provider("sqlite", Path(tmp), {}),
                Provider("postgresql", Path(tmp), {"VM_PROVIDER_SERVER_STATE_URL": url}),
                # The same database, commits not waiting for the WAL's flush:
                # what ALTER ROLE ... SET synchronous_commit = off gives.
                Provider("pg-async", Path(tmp), {"VM_PROVIDER_SERVER_STATE_URL": url + "?options=-csynchronous_commit%3Doff"}),
            ]
            results: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
            for p in providers:  # warm up: connections, pools, first records
                run_round(p, args.clients, 20, "create")
            for kind in ("create", "status"):
                for r in range(args.rounds):
                    for p in providers if r % 2 == 0 else providers[::-1]:  # alternate the order
                        rate, lat = run_round(p, args.clients, args.calls, kind)
                        rates, lats = results.setdefault((p.label, kind), ([], []))
                        rates.append(rate)
                        lats.extend(lat)
            print(f"{args.clients} clients, {args.rounds} rounds of {args.calls} calls per store and kind")
            print(f"{'store':<12}{'call':<12}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
            p50: dict[tuple[str, str], float] = {}
            for (label, kind), (rates, lats) in results.items():
                p50[label, kind] = statistics.median(lats)
                shown = "Create" if kind == "create" else "TaskStatus"
                print(f"{label:<12}{shown:<12}{statistics.median(rates):>10.0f}{p50[label, kind]:>10.2f}{p99(lats):>10.2f}")
            for label in ("postgresql", "pg-async"):
                added = p50[label, "create"] - p50["sqlite", "create"]
                verdict = "met" if added <= GOAL_MS else "NOT met"
                print(f"{label} adds {added:.2f} ms per mutating call at p50 (goal: at most {GOAL_MS:g} ms): {verdict}")
    finally:
        for p in providers:
            p.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
