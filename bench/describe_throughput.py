"""Describe throughput through vm-provider against bare Python gRPC servers.

Servers, each in a process of its own:

- ``provider``: vm-provider's own server (``ProviderServer``, on the event
  loop the ``vm-provider`` command uses) on the libvirt backend with
  libvirt's test hypervisor (``test:///default``) holding a handful of
  domains (``--backend memory`` uses the test backend instead);
- ``provider-quiet``: the same with its metrics and access log off
  (``[server] metrics = false``, ``access_log = false``), to measure what
  they cost (goal: at most 5 % of ``provider``'s throughput). Both log at
  INFO as JSON lines to a file, as a pod's log is written;
- ``aio``: a bare ``grpc.aio`` server answering every Describe with the
  same DescribeResponse the provider gave, no framework around it;
- ``aio-uvloop``: the same on uvloop's event loop (the provider's);
- ``threads``: the same on ``grpc.server`` with a thread pool;
- ``handmade`` (libvirt only): a hand-written ``grpc.server`` thread-pool
  server doing a Describe's libvirt work on the test driver (state, XML,
  addresses), no framework.

One client process runs ``--clients`` concurrent callers (one channel
each) against one server at a time; rounds alternate between the servers
in a shuffled order so that noise hits all of them alike. Prints calls per
second and p50/p99 latency of each server, the CPU time each server spent
per call (all its threads, and its main thread alone: the event loop's for
the aio servers; Python runs one thread at a time, so this is where a
GIL-bound server's ceiling shows), and the provider's throughput as a share
of the fastest bare server (goal: at least 0.7).

With ``--tls`` every server serves mutual TLS from one throwaway CA: the
provider through its own TLS layer (provider_core.tls_proxy, TLS 1.3),
the bare servers with grpc's own TLS (``grpc.ssl_server_credentials``),
so that the cost of the layer shows against grpc's.

    .venv/bin/python bench/describe_throughput.py [--clients 8] [--rounds 6] [--seconds 2] [--tls]
        [--servers provider,provider-quiet]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

KINDS = ("provider", "provider-quiet", "aio", "aio-uvloop", "threads", "handmade")
PROVIDERS = ("provider", "provider-quiet")
BARE = ("aio", "aio-uvloop", "threads")
LIBVIRT_ONLY = ("handmade",)
GOAL = 0.7
OBSERVING_GOAL = 0.95
"""provider / provider-quiet: metrics and the access log cost at most 5 %."""


# -- the servers (each runs in a process of its own) -------------------------------------


class BareProvider(pb_grpc.ProviderServicer):
    """Describe answered with one canned response: gRPC and nothing else."""

    def __init__(self, response: pb.DescribeResponse) -> None:
        self.response = response


class BareAio(BareProvider):
    async def Describe(self, request: pb.DescribeRequest, context: Any) -> pb.DescribeResponse:
        return self.response


class BareThreads(BareProvider):
    def Describe(self, request: pb.DescribeRequest, context: Any) -> pb.DescribeResponse:
        return self.response


class Handmade(pb_grpc.ProviderServicer):
    """A hand-written thread-pool server doing a Describe's libvirt work on
    the test driver: state, XML and (running) addresses of the driver's own
    domain, whatever the id (the provider's VMs live in the provider's
    process), through a kept handle as the provider does, and a JSON of what
    it read. No framework."""

    def __init__(self) -> None:
        import libvirt

        self.libvirt = libvirt
        self.conn = libvirt.open("test:///default")
        self.dom = self.conn.lookupByName("test")  # kept, as the provider keeps its handles

    def Describe(self, request: pb.DescribeRequest, context: Any) -> pb.DescribeResponse:
        lv = self.libvirt
        dom = self.dom
        state, reason = dom.state()
        xml = dom.XMLDesc(0)
        ips: list[str] = []
        if state == lv.VIR_DOMAIN_RUNNING:
            found = dom.interfaceAddresses(lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
            ips = [str(a["addr"]) for iface in found.values() for a in iface.get("addrs") or []]
        raw = {"state": state, "reason": reason, "xml_bytes": len(xml)}
        words = {lv.VIR_DOMAIN_RUNNING: "On", lv.VIR_DOMAIN_PAUSED: "Suspended"}
        return pb.DescribeResponse(
            exists=True, power_state=words.get(state, "Off"), ips=ips, provider_raw_json=json.dumps(raw, sort_keys=True)
        )


# -- TLS (--tls) ---------------------------------------------------------------------------


def make_pki(where: Path) -> None:
    """A CA, a server certificate for localhost, a client certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(cn: str, key: Any, signer: Any, issuer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = issue("bench CA", ca_key, ca_key, ca_name, True)
    (where / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue("localhost" if name == "server" else "bench client", key, ca_key, ca_name, False)
        (where / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (where / f"{name}.key").write_bytes(pem_key(key))


def _server_port(server: Any, tls: Path | None) -> int:
    if tls is None:
        return int(server.add_insecure_port("127.0.0.1:0"))
    creds = grpc.ssl_server_credentials(
        [((tls / "server.key").read_bytes(), (tls / "server.pem").read_bytes())],
        root_certificates=(tls / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    return int(server.add_secure_port("127.0.0.1:0", creds))


def channel_args(tls: Path | None) -> tuple[Any, list[tuple[str, str]]]:
    """Client credentials (None: plaintext) and options for ``tls``."""
    if tls is None:
        return None, []
    creds = grpc.ssl_channel_credentials(
        (tls / "ca.pem").read_bytes(), (tls / "client.key").read_bytes(), (tls / "client.pem").read_bytes()
    )
    return creds, [("grpc.ssl_target_name_override", "localhost")]


def _announce(ready: Path, port: int) -> None:
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(ready)


async def _serve_provider(ready: Path, backend: str, state: Path, tls: Path | None, observed: bool) -> None:
    from provider_core import plugins
    from provider_core.config import ServerSettings
    from provider_core.server import ProviderServer

    table = {"uri": "test:///default"} if backend == "libvirt" else {}
    instance = plugins.load(backend, table, environ={})
    files = {"tls_cert": tls / "server.pem", "tls_key": tls / "server.key", "tls_client_ca": tls / "ca.pem"} if tls else {}
    settings = ServerSettings(
        listen="127.0.0.1:0", state_dir=state, log_level="INFO", log_format="json", metrics=observed, access_log=observed, **files
    )
    server = ProviderServer(instance, backend, settings)
    await server.start()
    _announce(ready, server.port)
    await asyncio.Event().wait()


async def _serve_aio(ready: Path, response: pb.DescribeResponse, tls: Path | None) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ProviderServicer_to_server(BareAio(response), server)  # type: ignore[no-untyped-call]
    port = _server_port(server, tls)
    await server.start()
    _announce(ready, port)
    await server.wait_for_termination()


def _serve_threads(ready: Path, servicer: pb_grpc.ProviderServicer, workers: int, tls: Path | None) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_ProviderServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = _server_port(server, tls)
    server.start()
    _announce(ready, port)
    server.wait_for_termination()


def serve(args: argparse.Namespace) -> None:
    import logging

    ready = Path(args.ready)
    tls = Path(args.tls_dir) if args.tls_dir else None
    if args.serve in PROVIDERS:
        from provider_core import logs
        from provider_core.server import run

        logs.configure("INFO", "json")
        state = Path(args.state) / args.serve
        run(_serve_provider(ready, args.backend, state, tls, observed=args.serve == "provider"))
        return
    logging.basicConfig(level=logging.WARNING)
    if args.serve == "handmade":
        _serve_threads(ready, Handmade(), args.clients * 2, tls)
        return
    response = pb.DescribeResponse.FromString(Path(args.response).read_bytes())
    if args.serve == "aio":
        asyncio.run(_serve_aio(ready, response, tls))
    elif args.serve == "aio-uvloop":
        import uvloop

        uvloop.run(_serve_aio(ready, response, tls))
    else:
        _serve_threads(ready, BareThreads(response), args.clients * 2, tls)


# -- the client ---------------------------------------------------------------------------


def start(kind: str, work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    ready = work / f"{kind}.port"
    cmd = [sys.executable, __file__, "--serve", kind, "--ready", str(ready), "--backend", args.backend]
    cmd += ["--state", str(work / "state"), "--response", str(work / "response.bin"), "--clients", str(args.clients)]
    if args.tls:
        cmd += ["--tls-dir", str(work)]
    with (work / f"{kind}.log").open("wb") as log:  # standard error: a provider's log lines
        proc = subprocess.Popen(cmd, stderr=log)
    end = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"the {kind} server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{ready.read_text()}"


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) used so far by process ``pid`` in all its
    threads, and by its main thread (the event loop's, for the aio servers)."""

    def read(stat: str) -> float:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return read(f"/proc/{pid}/stat"), read(f"/proc/{pid}/task/{pid}/stat")


async def load(
    target: str, ids: list[str], clients: int, seconds: float, warmup: float, pid: int, tls: Path | None = None
) -> tuple[int, float, list[float], tuple[float, float]]:
    """Run ``clients`` callers for ``seconds`` (after a warm-up); return
    calls, elapsed time, every call's latency and the server's CPU time
    meanwhile (all threads, main thread)."""
    creds, options = channel_args(tls)
    channels = [
        grpc.aio.secure_channel(target, creds, options) if creds else grpc.aio.insecure_channel(target) for _ in range(clients)
    ]
    latencies: list[float] = []
    measuring = False
    stop = False

    async def caller(n: int) -> None:
        stub = pb_grpc.ProviderStub(channels[n])  # type: ignore[no-untyped-call]
        requests = [pb.DescribeRequest(id=i) for i in ids]
        k = n
        while not stop:
            t0 = time.perf_counter()
            await stub.Describe(requests[k % len(requests)], timeout=30)
            if measuring:
                latencies.append(time.perf_counter() - t0)
            k += 1

    tasks = [asyncio.create_task(caller(n)) for n in range(clients)]
    await asyncio.sleep(warmup)
    measuring, begun, cpu_before = True, time.perf_counter(), cpu_seconds(pid)
    await asyncio.sleep(seconds)
    measuring, elapsed, cpu_after = False, time.perf_counter() - begun, cpu_seconds(pid)
    stop = True
    await asyncio.gather(*tasks)
    for ch in channels:
        await ch.close()
    return len(latencies), elapsed, latencies, (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])


def prepare(target: str, backend: str, vms: int, work: Path | None, tls: Path | None = None) -> list[str]:
    """Create the VMs on a provider; keep one Describe answer for the bare
    servers in ``work``."""
    creds, options = channel_args(tls)
    with grpc.secure_channel(target, creds, options) if creds else grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ProviderStub(channel)  # type: ignore[no-untyped-call]
        ids = []
        for n in range(vms):
            resp = stub.Create(pb.CreateRequest(name=f"bench-{n}", class_json='{"CPU": 1, "MemoryMiB": 256}'), timeout=60)
            while resp.task.id and not stub.TaskStatus(pb.TaskStatusRequest(task=resp.task), timeout=10).done:
                time.sleep(0.05)
            ids.append(resp.id)
        stub.Power(pb.PowerRequest(id=ids[0], op=pb.POWER_OP_ON), timeout=60)
        answer = stub.Describe(pb.DescribeRequest(id=ids[0]), timeout=10)
        assert answer.exists, f"{backend}: Describe of a VM just created says it does not exist"
        if work is not None:
            (work / "response.bin").write_bytes(answer.SerializeToString())
    return ids


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers, one channel each")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per server, interleaved")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured time before each round")
    parser.add_argument("--vms", type=int, default=5, help="domains to create and Describe in turn")
    parser.add_argument("--backend", default="libvirt", help="libvirt (test:///default) or memory (tests/plugins)")
    parser.add_argument("--tls", action="store_true", help="mutual TLS: the provider's layer vs grpc's own")
    parser.add_argument(
        "--servers", default=",".join(KINDS), help="the servers to compare, comma-separated (provider always runs)"
    )
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--response", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-describe-") as tmp:
        work = Path(tmp)
        tls = work if args.tls else None
        if tls:
            make_pki(work)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        targets: dict[str, str] = {}
        try:
            procs["provider"], targets["provider"] = start("provider", work, args)
            ids = dict.fromkeys(KINDS, prepare(targets["provider"], args.backend, args.vms, work, tls))
            wanted = {"provider", *args.servers.split(",")}
            kinds = [k for k in KINDS if k in wanted and (args.backend == "libvirt" or k not in LIBVIRT_ONLY)]
            for kind in kinds[1:]:
                procs[kind], targets[kind] = start(kind, work, args)
            if "provider-quiet" in kinds:
                ids["provider-quiet"] = prepare(targets["provider-quiet"], args.backend, args.vms, None, tls)
            calls = dict.fromkeys(kinds, 0)
            elapsed = dict.fromkeys(kinds, 0.0)
            latencies: dict[str, list[float]] = {k: [] for k in kinds}
            cpu = {k: [0.0, 0.0] for k in kinds}
            order = list(kinds)
            setup = f"{args.clients} concurrent clients, {args.rounds} rounds x {args.seconds:.1f}s per server"
            print(f"Describe, {setup}, backend {args.backend}" + (", mutual TLS" if tls else ""))
            for r in range(args.rounds):
                random.shuffle(order)
                line = []
                for kind in order:
                    run = load(targets[kind], ids[kind], args.clients, args.seconds, args.warmup, procs[kind].pid, tls)
                    n, t, lat, used = asyncio.run(run)
                    calls[kind] += n
                    elapsed[kind] += t
                    latencies[kind] += lat
                    cpu[kind][0] += used[0]
                    cpu[kind][1] += used[1]
                    line.append(f"{kind} {n / t:7.0f}/s")
                print(f"  round {r + 1}: " + "  ".join(line))
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(10)

    rate = {k: calls[k] / elapsed[k] for k in kinds}
    print()
    print(f"{'server':<16} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/call':>12} {'main thread':>12}")
    for kind in kinds:
        total, main_thread = (1e6 * c / max(1, calls[kind]) for c in cpu[kind])
        loop = f"{main_thread:.0f}" if kind not in ("threads", "handmade") else "-"  # those run calls in pool threads
        print(
            f"{kind:<16} {rate[kind]:9.0f} {pct(latencies[kind], 0.50):8.2f} {pct(latencies[kind], 0.99):8.2f}"
            f" {total:12.0f} {loop:>12}"
        )
    met = True
    bare = [k for k in BARE if k in rate]
    if bare:
        best = max(bare, key=rate.__getitem__)
        ratio = rate["provider"] / rate[best]
        print(f"\nprovider / {best} (the fastest bare server) = {ratio:.2f}  (goal >= {GOAL})")
        met = ratio >= GOAL
        for kind in LIBVIRT_ONLY:
            if kind in rate:
                print(f"{kind} / {best} = {rate[kind] / rate[best]:.2f}")
    if "provider-quiet" in rate:
        observing = rate["provider"] / rate["provider-quiet"]
        per_call = {k: cpu[k][0] / max(1, calls[k]) for k in PROVIDERS}
        share = per_call["provider-quiet"] / per_call["provider"]
        print(
            f"provider / provider-quiet (metrics and access log on / off): calls/s {observing:.3f},"
            f" CPU a call {1e6 * (per_call['provider'] - per_call['provider-quiet']):+.0f} us, so at most"
            f" {share:.3f} of the calls the same CPU serves quiet  (goal >= {OBSERVING_GOAL})"
        )
        met = met and observing >= OBSERVING_GOAL
    return 0 if met else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
