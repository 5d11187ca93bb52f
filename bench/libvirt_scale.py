"""ListVMs, Describe and ExportDisk through vm-provider with thousands of domains.

Runs on the real daemon (the test bed's own, ``testbed/libvirtd.sh start``). ``vm-provider --backend
libvirt`` runs as users run it: the command, in a subprocess, serving gRPC
on 127.0.0.1 (settings from the environment: ``uri``, ``domain_type =
qemu``, ``download_dir``; in plugins.toml ``allow_addresses = ["loopback"]``
for the export's sink). The script makes ``--vms`` domains
``vmpb-scale-NNNNN`` through its Create, ``--threads`` (8) calls at a time:
1 vCPU, 128 MiB, direct kernel boot of the test-bed guest, one NIC on the
``default`` network and one 1 GiB raw disk, the cheapest disk Create makes
(a sparse file libvirt makes in the daemon; the qcow2 disk of
libvirt_list_describe.py costs a ``qemu-img`` run: about 33 ms a Create
here instead of 15). ``--running`` (2) of them are started, the last one
then paused, so that states differ and Describe and ListVMs look up
addresses. Every domain and volume made is removed at the end through the
provider's Delete (``--threads`` at a time), also on failure, Ctrl-C or
SIGTERM; leftovers of an interrupted run are removed at the start. The
Create and Delete rates are printed.

Measured, in one run, against baselines of the same run:

- **ListVMs, cold**: the first ListVMs of a provider process started
  afresh (``--rounds`` times: a new ``vm-provider``, SERVING, its channel
  opened with a GetCapabilities, so nothing of any domain is kept yet),
  against a bare libvirt-python loop making the same reads
  (``getAllDomainStats``, each domain's XML, the DHCP leases once), in a
  shuffled order each round. Goal: the medians' ratio at most 1.3. Also
  printed: the second ListVMs of that process, right after the first, and
  a ListVMs of the long-running provider after ``--idle`` (3) seconds
  without a read, longer than the 2 s the libvirt backend reuses a
  domain's XML read for: cold again for the XML reads, though not for
  what the process keeps besides.
- **ListVMs, warm**: ``--warm`` (5) ListVMs back to back after one, each
  call's time printed. Goal: the median under 1 s.
- **Describe all**: Describe of every VM once from ``--clients`` (10)
  concurrent callers on one channel, as the deployed manager runs 10
  reconciles at once; each pass starts ``--idle`` seconds after the last
  read of any domain, so no XML read is recent at its start. Latency p50
  and p99 over every call of ``--rounds`` passes, and calls per second, of
  the provider against a bare gRPC server (``grpc.server`` with a
  ThreadPoolExecutor of 2 x ``--clients`` threads, in a process of its own)
  whose Describe does the same libvirt work (lookup by UUID, state, XML,
  leases of a running VM's networks), nothing kept between calls. Goals:
  provider p99 under 50 ms, its throughput at least 0.8 of the bare
  server's. Each provider pass is followed at once by a second one (the
  XML reads of the first then are recent while it lasts under 2 s) to show
  what the read cache gives Describe.
- **Describe all during ExportDisk**: the same passes while the provider
  exports a 1 GiB qcow2 disk holding ``--export-data-mib`` (300) MiB of
  random data, the disk of a domain defined by hand, as qcow2 to an HTTP
  sink on 127.0.0.1 (as export_disk.py does), export after export until
  the pass ends. Goal: the provider's p99 at most twice the quiet one. The
  bare server's passes during exports show what the machine itself loses
  (the sink runs in this process, beside the Describe callers: both
  servers' passes during exports bear that alike).
- **Memory**: resident memory (VmRSS, and its peak VmHWM) of the
  long-running provider process after all of that, and of libvirtd.

Prints a summary with each goal met or missed. Exits 0 whether goals are
met or not (1 with ``--strict`` when one is missed), 1 on an error, 2 when
the daemon does not answer. Other users of the daemon do not disturb the
counts: both sides look only at ``vmpb-scale-*`` domains. A daemon restart
in the middle of a run makes it fail; what it made is still removed.

About 2 minutes with 1,000 domains on 2 vCPUs; with 10,000 (2 rounds by
default) 8 to 9 minutes: Create about 10 ms a domain with 8 threads here,
each ListVMs and Describe pass ten times as long as with 1,000.

    bash testbed/libvirtd.sh start && .venv/bin/python bench/libvirt_scale.py --vms 1000 [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import libvirt
from libvirtd import (
    CHANNEL_OPTIONS,
    URI,
    HttpSink,
    bare_list,
    cpu_seconds,
    daemon_pid,
    guest_dir,
    make_domain,
    make_image,
    memory_mib,
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
Server = tuple[pb_grpc.ProviderStub, int]
"""A gRPC server to call, and its process."""
Timed = tuple[float, tuple[float, ...]]
"""Seconds a call took, and the CPU seconds processes used meanwhile."""
PREFIX = "vmpb-scale-"
EXPORT_NAME = f"{PREFIX}export"
"""The domain made by hand whose disk is exported (not a Create'd VM)."""
SETTINGS = {"domain_type": "qemu"}
"""``qemu``: this host's KVM does not run guests; skip the backend's probe boot."""
GOAL_COLD = 1.3
GOAL_WARM_S = 1.0
GOAL_P99_MS = 50.0
GOAL_THROUGHPUT = 0.8
GOAL_EXPORT_P99 = 2.0


# -- calls ------------------------------------------------------------------------------------


def retried(call: Callable[[], T], tries: int = 3) -> T:
    """``call()``, again after UNAVAILABLE (what a client does when the daemon
    restarted under the provider: Create and Delete are idempotent)."""
    for attempt in range(tries):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == tries - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def all_of(fn: Callable[[Any], T], items: Iterable[Any], threads: int) -> list[T]:
    """``fn`` of every item, ``threads`` at a time; on an error or Ctrl-C the
    calls not yet begun are dropped instead of waited for."""
    pool = ThreadPoolExecutor(threads)
    try:
        out = list(pool.map(fn, items))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return out


def metered(call: Callable[[], T], pids: tuple[int | None, ...]) -> tuple[T, tuple[float, ...]]:
    """``call()``, and the CPU seconds each process (None: unknown) used meanwhile."""
    before = [cpu_seconds(p) if p else math.nan for p in pids]
    out = call()
    return out, tuple(cpu_seconds(p) - b if p else math.nan for p, b in zip(pids, before, strict=True))


def create(stub: pb_grpc.ProviderStub, name: str, guest: Path) -> str:
    extra = {
        "libvirt.kernel": str(guest / "vmlinuz"),
        "libvirt.initrd": str(guest / "initrd.img"),
        "libvirt.cmdline": f"console=ttyS0 quiet vmp.hostname={name}",
    }
    request = pb.CreateRequest(
        name=name,
        class_json=json.dumps({"CPU": 1, "MemoryMiB": 128, "ExtraConfig": extra}),
        disks_json=json.dumps([{"SizeGiB": 1, "Type": "raw"}]),
        tags=["vmpb"],
    )

    def once() -> str:
        resp = stub.Create(request, timeout=120)
        wait(stub, resp.task)
        return str(resp.id)

    return retried(once)


def list_ours(stub: pb_grpc.ProviderStub, expect: int) -> float:
    """Seconds one ListVMs takes; checks it lists all ``expect`` of our VMs."""
    start = time.perf_counter()
    vms = stub.ListVMs(pb.ListVMsRequest(), timeout=600).vms
    elapsed = time.perf_counter() - start
    got = sum(1 for vm in vms if vm.name.startswith(PREFIX))
    if got != expect:
        raise RuntimeError(f"ListVMs listed {got} of our {expect} VMs")
    return elapsed


def bare_list_ours(conn: libvirt.virConnect, expect: int) -> float:
    start = time.perf_counter()
    vms = bare_list(conn)
    elapsed = time.perf_counter() - start
    got = sum(1 for vm in vms if str(vm["name"]).startswith(PREFIX))
    if got != expect:
        raise RuntimeError(f"the bare loop listed {got} of our {expect} VMs")
    return elapsed


# -- Describe all -----------------------------------------------------------------------------


@dataclass
class Pass:
    """One Describe of every VM: each call's latency (s) and the wall time."""

    latencies: list[float]
    wall: float
    cpu: tuple[float, float] = (math.nan, math.nan)
    """CPU seconds the server process and libvirtd used meanwhile."""
    export_share: float = 0.0
    """Share of the wall time an ExportDisk was in flight."""

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall


def describe_all(server: Server, ids: list[str], clients: int) -> Pass:
    stub, pid = server
    latencies = [0.0] * len(ids)

    def one(i: int) -> None:
        start = time.perf_counter()
        answer = stub.Describe(pb.DescribeRequest(id=ids[i]), timeout=60)
        latencies[i] = time.perf_counter() - start
        if not answer.exists:
            raise RuntimeError(f"Describe says VM {ids[i]} does not exist")

    start = time.perf_counter()
    _, cpu = metered(lambda: all_of(one, range(len(ids)), clients), (pid, daemon_pid()))
    return Pass(latencies, time.perf_counter() - start, (cpu[0], cpu[1]))


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Exports:
    """ExportDisk of one VM's disk through the provider, export after export,
    in a thread, until stopped; remembers when each was in flight."""

    stub: pb_grpc.ProviderStub
    vm_id: str
    sink: HttpSink
    spans: list[tuple[float, float]] = field(default_factory=list)
    sent: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exports", daemon=True)

    def __enter__(self) -> Exports:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None and exc[0] is None:
            raise RuntimeError(f"ExportDisk failed: {self.error}") from self.error

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                name = f"export-{n}.qcow2"
                start = time.perf_counter()
                resp = self.stub.ExportDisk(
                    pb.ExportDiskRequest(vm_id=self.vm_id, destination_url=self.sink.url(name), format="qcow2"), timeout=600
                )
                wait(self.stub, resp.task, timeout=600)
                self.spans.append((start, time.perf_counter()))
                self.sent += (self.sink.root / name).stat().st_size
                for done in (name, f"{name}.sha256"):
                    (self.sink.root / done).unlink(missing_ok=True)
                n += 1
        except BaseException as exc:  # handed to the main thread at exit
            self.error = exc

    def share(self, start: float, end: float) -> float:
        """Share of [start, end] some export was in flight."""
        now = time.perf_counter()
        spans = [*self.spans, (self.spans[-1][1] if self.spans else start, now)]  # the one still running
        busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)
        return min(1.0, busy / (end - start))


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Run:
    """Everything measured, in seconds."""

    vms: int
    clients: int
    threads: int
    create: float = 0.0
    delete: float = 0.0
    cold: list[Timed] = field(default_factory=list)
    """First ListVMs of a fresh provider (CPU: the provider's, libvirtd's)."""
    cold_second: list[float] = field(default_factory=list)
    """Its second ListVMs, at once."""
    expired: list[float] = field(default_factory=list)
    """ListVMs of the long-running provider after --idle seconds."""
    bare: list[Timed] = field(default_factory=list)
    """The bare loop (CPU: this process's, libvirtd's)."""
    warm: list[Timed] = field(default_factory=list)
    passes: dict[str, list[Pass]] = field(default_factory=dict)
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)


def cold_rounds(run: Run, conn: libvirt.virConnect, stub: pb_grpc.ProviderStub, work: Path, rounds: int, idle: float) -> None:
    for r in range(rounds):
        fresh, address = start_provider(work / f"fresh-{r}", SETTINGS)
        try:
            with grpc.insecure_channel(address, CHANNEL_OPTIONS) as channel:
                first = pb_grpc.ProviderStub(channel)  # type: ignore[no-untyped-call]
                first.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)  # the channel is up; no domain read
                for side in random.sample(["provider", "bare"], 2):
                    if side == "provider":
                        run.cold.append(metered(partial(list_ours, first, run.vms), (fresh.pid, daemon_pid())))
                    else:
                        run.bare.append(metered(partial(bare_list_ours, conn, run.vms), (os.getpid(), daemon_pid())))
                run.cold_second.append(list_ours(first, run.vms))
            run.memory[f"fresh provider after 2 ListVMs (round {r + 1})"] = memory_mib(fresh.pid)
        finally:
            fresh.terminate()
            fresh.wait(30)
        time.sleep(idle)
        run.expired.append(list_ours(stub, run.vms))
        print(
            f"  round {r + 1}: fresh provider {run.cold[-1][0]:.2f} s then {run.cold_second[-1]:.2f} s;"
            f" bare loop {run.bare[-1][0]:.2f} s (ratio {run.cold[-1][0] / run.bare[-1][0]:.2f});"
            f" long-running provider after {idle:g} s idle {run.expired[-1]:.2f} s"
        )


def describe_rounds(
    run: Run,
    servers: dict[str, Server],
    ids: list[str],
    export: tuple[str, HttpSink],
    rounds: int,
    idle: float,
) -> None:
    kinds = ("provider", "bare-grpc", "provider export", "bare-grpc export")
    run.passes = {k: [] for k in (*kinds, "provider repeat")}
    for r in range(rounds):
        order = list(kinds)
        random.shuffle(order)
        for kind in order:
            server, _, during = kind.partition(" ")
            time.sleep(idle)
            if during:
                with Exports(servers["provider"][0], export[0], export[1]) as exports:
                    time.sleep(0.5)  # the export under way (qemu-img converting) before the pass
                    start = time.perf_counter()
                    one = describe_all(servers[server], ids, run.clients)
                    one.export_share = exports.share(start, time.perf_counter())
            else:
                one = describe_all(servers[server], ids, run.clients)
            run.passes[kind].append(one)
            line = f"  round {r + 1} {kind:17} {one.wall:6.2f} s  {one.rate:6.0f}/s  p50 {pct(one.latencies, 0.5) * 1e3:5.1f} ms"
            line += f"  p99 {pct(one.latencies, 0.99) * 1e3:6.1f} ms"
            if during:
                line += f"  (an export in flight {one.export_share:.0%} of it)"
            print(line)
            if kind == "provider":
                again = describe_all(servers[server], ids, run.clients)
                run.passes["provider repeat"].append(again)
                print(
                    f"  round {r + 1} {'provider repeat':17} {again.wall:6.2f} s  {again.rate:6.0f}/s"
                    f"  p50 {pct(again.latencies, 0.5) * 1e3:5.1f} ms  p99 {pct(again.latencies, 0.99) * 1e3:6.1f} ms"
                )


def reopened(conn: libvirt.virConnect) -> libvirt.virConnect:
    """``conn``, or a new connection when the daemon restarted meanwhile."""
    try:
        if conn.isAlive():
            conn.getLibVersion()
            return conn
    except libvirt.libvirtError:
        pass
    fresh = open_daemon()
    if fresh is None:
        raise RuntimeError(f"{URI} does not answer: cannot remove the {PREFIX}* domains (run this again to)")
    return fresh


def measure(args: argparse.Namespace, conn: libvirt.virConnect, work: Path) -> Run:
    run = Run(vms=args.vms, clients=args.clients, threads=args.threads)
    procs: list[subprocess.Popen[bytes]] = []
    channels: list[grpc.Channel] = []
    stub: pb_grpc.ProviderStub | None = None
    try:
        guest = guest_dir()
        raw = make_image(work, args.export_data_mib)
        make_domain(conn, raw, EXPORT_NAME)
        raw.unlink()
        (work / "scratch").mkdir()
        proc, address = start_provider(work / "main", {**SETTINGS, "download_dir": str(work / "scratch")}, loopback_urls=True)
        procs.append(proc)
        bare_proc, bare_address = start_bare(work, 2 * args.clients)
        procs.append(bare_proc)
        channels += [grpc.insecure_channel(address, CHANNEL_OPTIONS), grpc.insecure_channel(bare_address, CHANNEL_OPTIONS)]
        stub = pb_grpc.ProviderStub(channels[0])  # type: ignore[no-untyped-call]
        names = [f"{PREFIX}{i:05d}" for i in range(args.vms)]
        start = time.monotonic()
        ids = all_of(lambda n: create(stub, n, guest), names, args.threads)
        run.create = time.monotonic() - start
        print(
            f"{args.vms} domains made through Create in {run.create:.1f} s ({run.create / args.vms * 1e3:.1f} ms each,"
            f" {args.threads} at a time)"
        )
        if args.running:
            print(f"  {start_some(conn, ids[: args.running])}")
        run.memory["provider after Create"] = memory_mib(proc.pid)

        print(f"\nListVMs, cold: {args.rounds} rounds")
        cold_rounds(run, conn, stub, work, args.rounds, args.idle)
        print(f"\nListVMs, warm: {args.warm} calls after one")
        list_ours(stub, args.vms)
        run.warm = [metered(partial(list_ours, stub, args.vms), (proc.pid, daemon_pid())) for _ in range(args.warm)]
        print("  " + "  ".join(f"{s:.3f} s" for s, _ in run.warm))

        print(f"\nDescribe all, {args.clients} clients: {args.rounds} rounds")
        export_id = conn.lookupByName(EXPORT_NAME).UUIDString()
        with HttpSink(work / "sink") as sink:
            bare = pb_grpc.ProviderStub(channels[1])  # type: ignore[no-untyped-call]
            servers = {"provider": (stub, proc.pid), "bare-grpc": (bare, bare_proc.pid)}
            describe_rounds(run, servers, ids, (export_id, sink), args.rounds, args.idle)
        run.memory["provider at the end"] = memory_mib(proc.pid)
        pid = daemon_pid()
        if pid is not None:
            run.memory["libvirtd"] = memory_mib(pid)
    finally:
        try:
            conn = reopened(conn)
            sweep(conn, EXPORT_NAME)  # not vm-provider's: its Delete would refuse it
            through = stub is not None and procs[0].poll() is None
            start = time.monotonic()
            removed = remove(conn, stub if through else None, PREFIX, args.threads)
            run.delete = time.monotonic() - start
            how = f"{run.delete / max(removed, 1) * 1e3:.1f} ms each, {args.threads} at a time" if through else "by hand"
            print(f"\nremoved {removed} domains and their volumes in {run.delete:.1f} s ({how})")
        finally:
            for channel in channels:
                channel.close()
            for p in procs:
                p.terminate()
                p.wait(30)
    return run


# -- the report -------------------------------------------------------------------------------


def pooled(passes: list[Pass]) -> list[float]:
    return [x for p in passes for x in p.latencies]


def _cpu(timed: list[Timed], i: int) -> float:
    return statistics.median(cpu[i] for _, cpu in timed)


def details(run: Run, idle: float) -> None:
    """Where the time goes: wall and CPU time of each side."""
    med = statistics.median
    print(f"\nListVMs of {run.vms}, medians\n{'':57}{'CPU s':>25}")
    print(f"{'':50}{'wall s':>7}{'server':>15}{'libvirtd':>10}")
    for label, timed in (
        ("fresh provider, first call (cold)", run.cold),
        ("bare loop (CPU: this process)", run.bare),
        ("long-running provider, repeated", run.warm),
    ):
        print(f"  {label:48}{med(s for s, _ in timed):7.3f}{_cpu(timed, 0):15.2f}{_cpu(timed, 1):10.2f}")
    per_round = [c / b for (c, _), (b, _) in zip(run.cold, run.bare, strict=True)]
    print(
        f"  cold / bare: {_cpu(run.cold, 0) / _cpu(run.bare, 0):.2f} in CPU; per round "
        + " ".join(f"{x:.2f}" for x in per_round)
        + f" (median {med(per_round):.2f})"
    )
    print(f"  {'fresh provider, second call at once':48}{med(run.cold_second):7.3f}")
    print(f"  {f'long-running provider after {idle:g} s idle':48}{med(run.expired):7.3f}")

    p = run.passes
    print(f"\nDescribe all, {run.clients} clients, every call of every pass\n{'':83}{'CPU ms a call':>23}")
    print(f"{'':48}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}{'s a pass':>10}{'server':>14}{'libvirtd':>9}")
    for kind, passes in p.items():
        lat = pooled(passes)
        n = len(passes[0].latencies)
        server, daemon = (med(x.cpu[i] for x in passes) / n * 1e3 for i in (0, 1))
        print(
            f"  {kind:46}{pct(lat, 0.5) * 1e3:8.1f}{pct(lat, 0.99) * 1e3:8.1f}{med(x.rate for x in passes):9.0f}"
            f"{med(x.wall for x in passes):10.2f}{server:14.2f}{daemon:9.2f}"
        )
    quiet, loaded = pct(pooled(p["bare-grpc"]), 0.99), pct(pooled(p["bare-grpc export"]), 0.99)
    print(
        f"  bare gRPC p99 during ExportDisk / quiet: {loaded / quiet:.2f} (what the export costs outside the provider's process)"
    )
    print(f"\nresident memory, MiB{'':30}{'now':>6}{'peak':>6}")
    for key, (now, peak) in run.memory.items():
        print(f"  {key:48}{now:6.0f}{peak:6.0f}")


def summary(run: Run, idle: float) -> bool:
    """Print the goals, each met or missed; return whether all were met."""
    med = statistics.median
    cold, bare = med(s for s, _ in run.cold), med(s for s, _ in run.bare)
    warm = [s for s, _ in run.warm]
    p = run.passes
    p99 = {k: pct(pooled(v), 0.99) * 1e3 for k, v in p.items()}
    p50 = {k: pct(pooled(v), 0.5) * 1e3 for k, v in p.items()}
    rate = {k: med(x.rate for x in v) for k, v in p.items()}
    wall = {k: med(x.wall for x in v) for k, v in p.items()}
    rows: list[tuple[str, str, str, bool | None]] = [
        (
            "ListVMs cold / bare loop",
            f"{cold / bare:.2f}  ({cold:.2f} s / {bare:.2f} s)",
            f"<= {GOAL_COLD}",
            cold / bare <= GOAL_COLD,
        ),
        (
            f"ListVMs after {idle:g} s idle / bare loop",
            f"{med(run.expired) / bare:.2f}  ({med(run.expired):.2f} s)",
            "reported",
            None,
        ),
        (
            "ListVMs warm, per call",
            f"{med(warm):.3f} s  (max {max(warm):.3f} s)",
            f"< {GOAL_WARM_S:g} s",
            med(warm) < GOAL_WARM_S,
        ),
        (
            f"Describe all, {run.clients} clients, p99",
            f"{p99['provider']:.1f} ms  (p50 {p50['provider']:.1f} ms, {wall['provider']:.2f} s a pass)",
            f"< {GOAL_P99_MS:g} ms",
            p99["provider"] < GOAL_P99_MS,
        ),
        (
            "Describe throughput / bare gRPC",
            f"{rate['provider'] / rate['bare-grpc']:.2f}  ({rate['provider']:.0f}/s / {rate['bare-grpc']:.0f}/s)",
            f">= {GOAL_THROUGHPUT}",
            rate["provider"] / rate["bare-grpc"] >= GOAL_THROUGHPUT,
        ),
        (
            "Describe p99 during ExportDisk / quiet",
            f"{p99['provider export'] / p99['provider']:.2f}  ({p99['provider export']:.1f} ms / {p99['provider']:.1f} ms)",
            f"<= {GOAL_EXPORT_P99:g}",
            p99["provider export"] / p99["provider"] <= GOAL_EXPORT_P99,
        ),
    ]
    for label, key in (("provider RSS", "provider at the end"), ("libvirtd RSS", "libvirtd")):
        if key in run.memory:
            now, peak = run.memory[key]
            rows.append((label, f"{now:.0f} MiB  (peak {peak:.0f} MiB)", "reported", None))
    for label, seconds in (("Create", run.create), ("Delete", run.delete)):
        each = f"{seconds / run.vms * 1e3:.1f} ms each, {run.threads} at a time"
        rows.append((label, f"{seconds:.1f} s  ({each})", "reported", None))

    print(f"\n{run.vms} domains{'':34}{'measured':48}{'goal':>10}")
    for label, value, goal, met in rows:
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"  {label:40} {value:48} {goal:>10}  {verdict}".rstrip())
    return all(met is not False for *_, met in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=1000, help="domains to make")
    parser.add_argument("--clients", type=int, default=10, help="concurrent Describe callers")
    parser.add_argument("--threads", type=int, default=8, help="concurrent Create and Delete calls")
    parser.add_argument("--running", type=int, default=2, help="VMs started (the last one then paused); 0: none")
    parser.add_argument(
        "--rounds", type=int, help="rounds of cold ListVMs and of Describe all (default: 3, 2 from 5,000 domains)"
    )
    parser.add_argument("--warm", type=int, default=5, help="repeated ListVMs calls")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds without a read before a cold measurement")
    parser.add_argument("--export-data-mib", type=int, default=300, help="random data in the exported 1 GiB disk")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.vms < 5000 else 2
    if args.vms < max(args.running, 1) or args.running == 1 or min(args.clients, args.threads, args.rounds, args.warm) < 1:
        parser.error("need --vms >= --running, --running 0 or >= 2, and --clients, --threads, --rounds, --warm >= 1")
    conn = open_daemon()
    if conn is None:
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on kill too
    left = sweep(conn, PREFIX)
    if left:
        print(f"removed {left} domains left by an earlier run")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmp-bench-scale-") as tmp:
        run = measure(args, conn, Path(tmp))
    details(run, args.idle)
    met = summary(run, args.idle)
    print(f"\n{time.monotonic() - began:.0f} s in all")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
