"""How long the provider's event loop stops serving while calls run.

The provider serves every call on one event loop; work that blocks it
(a SQLite commit waiting, a long answer converted) holds up every other
call meanwhile. This bench measures that directly: a provider on the sim
backend (``task_seconds = 0``, task records in a SQLite state directory)
runs in a child process, as ``vm-provider`` runs it (``ProviderServer`` on
uvloop), with a ticker task on its loop that sleeps 1 ms at a time and
records how late it wakes. The parent makes ``--vms`` (10,000) VMs through
Create, then runs, in ``--rounds`` interleaved rounds, phases of calls from
``--clients`` callers (one channel each) and reads the ticker's lateness
(max and p99) over each phase, and the longest pause of the garbage
collector (which stops every thread, the loop's too) in it:

- ``GetCapabilities``: no backend call, no record: the baseline, what
  serving calls costs the loop by itself;
- ``ListVMs``: every VM listed, ``--lists`` calls per client;
- ``Create, lock held``: a Create of a new VM per call (a task record
  each), while another connection to the task records holds SQLite's write
  lock for 20 ms in every 100 (as a backup, or a disk slow to flush,
  would): what a task record waiting costs everyone else.

Prints each phase's lateness and its ratio to the baseline's of the same
run. There is no goal: the figures are in docs/running.md ("At scale").

    .venv/bin/python bench/loop_stall.py [--vms 10000] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

TICK = 0.001
LOCK_HELD, LOCK_EVERY = 0.020, 0.100


# -- the provider's side (a child process) ---------------------------------------------


class Ticker:
    """How late a task sleeping TICK at a time wakes on the loop."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self.lock = threading.Lock()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(TICK)
            with self.lock:
                self.late.append(loop.time() - start - TICK)

    def take(self) -> list[float]:
        with self.lock:
            late, self.late = self.late, []
        return late


class Collections:
    """The longest pause of the garbage collector (which stops every thread)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._began = 0.0
        gc.callbacks.append(self.note)

    def note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._began)

    def take(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest


def hold_lock(db: Path, stop: threading.Event) -> None:
    """Hold the task records' write lock LOCK_HELD seconds in every LOCK_EVERY."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(LOCK_HELD)
            conn.rollback()
            time.sleep(LOCK_EVERY - LOCK_HELD)
    finally:
        conn.close()


def child(state_dir: str) -> None:
    """Serve; answer the parent's lines on stdin: ``mark``, ``report``, ``lock on|off``, ``quit``."""
    from provider_core import plugins
    from provider_core.config import ServerSettings
    from provider_core.server import ProviderServer, new_event_loop

    settings = ServerSettings(listen="127.0.0.1:0", state_dir=Path(state_dir), access_log=False, metrics=False)
    backend = plugins.load("sim", {"task_seconds": 0, "download_images": False, "storage_gib": 10**9}, environ={})
    loop = new_event_loop(settings.event_loop)
    ticker = Ticker()
    collections = Collections()

    async def start() -> ProviderServer:
        server = ProviderServer(backend, "sim", settings)
        await server.start()
        return server

    server = loop.run_until_complete(start())
    loop.create_task(ticker.run())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    print(json.dumps({"port": server.port}), flush=True)
    stop = threading.Event()
    holder: threading.Thread | None = None
    for line in sys.stdin:
        command = line.split()
        if command == ["mark"]:
            ticker.take()
            collections.take()
            answer: Any = "ok"
        elif command == ["report"]:
            late = sorted(ticker.take())
            answer = {"max": late[-1], "p99": late[int(len(late) * 0.99)], "gc": collections.take()}
        elif command == ["lock", "on"]:
            stop.clear()
            holder = threading.Thread(target=hold_lock, args=(Path(state_dir) / "tasks.sqlite3", stop), daemon=True)
            holder.start()
            answer = "ok"
        elif command == ["lock", "off"]:
            stop.set()
            if holder is not None:
                holder.join()
            answer = "ok"
        else:
            break
        print(json.dumps(answer), flush=True)
    asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(30)


# -- the clients' side -------------------------------------------------------------------


class Provider:
    def __init__(self, state_dir: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", state_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.port = self.ask("")["port"]

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        try:
            self.ask("quit") if self.proc.poll() is None else None
        except (OSError, ValueError):
            pass
        self.proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300, help="GetCapabilities and Create calls per client and phase")
    parser.add_argument("--lists", type=int, default=3, help="ListVMs calls per client and phase")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0

    with tempfile.TemporaryDirectory(prefix="vmp-bench-loop-") as tmp:
        provider = Provider(tmp)
        channels = [grpc.insecure_channel(f"127.0.0.1:{provider.port}") for _ in range(args.clients)]
        stubs = [pb_grpc.ProviderStub(c) for c in channels]  # type: ignore[no-untyped-call]
        vm_class = json.dumps({"CPU": 1, "MemoryMiB": 64})
        try:
            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda n: stubs[n % len(stubs)].Create(
                            pb.CreateRequest(name=f"vm-{n:05d}", class_json=vm_class), timeout=60
                        ),
                        range(args.vms),
                    )
                )
            print(f"{args.vms} VMs made in {time.perf_counter() - started:.1f} s")

            def capabilities(stub: Any) -> None:
                for _ in range(args.calls):
                    stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=60)

            def listing(stub: Any) -> None:
                for _ in range(args.lists):
                    stub.ListVMs(pb.ListVMsRequest(), timeout=120)

            def creating(stub: Any) -> None:
                for _ in range(args.calls):
                    name = f"new-{uuid.uuid4().hex[:12]}"
                    stub.Create(pb.CreateRequest(name=name, class_json=vm_class), timeout=60)

            phases = {
                "GetCapabilities": (capabilities, False),
                "ListVMs": (listing, False),
                "Create, lock held": (creating, True),
            }
            found: dict[str, list[dict[str, float]]] = {name: [] for name in phases}
            for r in range(args.rounds):
                order = list(phases) if r % 2 == 0 else list(phases)[::-1]
                for name in order:
                    work, lock = phases[name]
                    if lock:
                        provider.ask("lock on")
                    provider.ask("mark")
                    with ThreadPoolExecutor(len(stubs)) as pool:
                        list(pool.map(work, stubs))
                    found[name].append(provider.ask("report"))
                    if lock:
                        provider.ask("lock off")
        finally:
            for channel in channels:
                channel.close()
            provider.stop()

    base = statistics.median(f["max"] for f in found["GetCapabilities"])
    print(f"{args.clients} clients, {args.rounds} rounds; the loop's lateness over each phase (a ticker sleeping 1 ms)")
    print(f"{'phase':<20}{'max ms':>10}{'p99 ms':>10}{'max / baseline':>16}{'longest GC ms':>15}")
    for name, figures in found.items():
        worst = statistics.median(f["max"] for f in figures)
        p99 = statistics.median(f["p99"] for f in figures)
        collected = statistics.median(f["gc"] for f in figures)
        print(f"{name:<20}{worst * 1000:>10.1f}{p99 * 1000:>10.1f}{worst / base:>16.1f}{collected * 1000:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
