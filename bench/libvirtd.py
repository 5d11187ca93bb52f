"""What the benchmarks on the real libvirt daemon share: the test bed's own
(``testbed/libvirtd.sh start``), never the machine's ``qemu:///system``.

- The provider as users run it: ``vm-provider --backend libvirt`` (or
  another backend) in a subprocess, on 127.0.0.1, settings from the
  environment (:func:`start_provider`).
- The bare side: what ListVMs and Describe answer, read with plain
  libvirt-python (:func:`bare_list`, :func:`bare_describe`), and a bare gRPC
  server (grpc's thread pool, in a process of its own) doing
  :func:`bare_describe` for each Describe (:func:`start_bare`; this file run
  as ``libvirtd.py --serve-bare PORT_FILE``).
- Domains made through Create, tasks waited for, and everything a benchmark
  made found again by its name prefix and removed (:func:`sweep`).
- ExportDisk's source: a 1 GiB qcow2 volume holding random data, the disk of
  a stopped domain defined by hand (:func:`make_image`, :func:`make_domain`),
  and the loopback HTTP sink it is exported to (:data:`HttpSink`).
- Memory and CPU time of a process (:func:`memory_mib`, :func:`cpu_seconds`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import libvirt
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vmp_testplugins.testbed import libvirtd_pid, libvirtd_uri

from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

URI = libvirtd_uri()
MiB = 1 << 20
GiB = 1 << 30
MARK = "{https://vm-provider.dev/xmlns/libvirt/1}vm"
"""vm-provider's metadata element: its ListVMs lists the domains carrying it."""
ACTIVE = frozenset(
    {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTDOWN}
)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]
"""A ListVMs of thousands of VMs is larger than gRPC's default 4 MiB limit."""

__all__ = [
    "ACTIVE",
    "CHANNEL_OPTIONS",
    "GiB",
    "HttpSink",
    "MiB",
    "URI",
    "bare_describe",
    "bare_list",
    "cpu_seconds",
    "daemon_pid",
    "free_port",
    "guest_dir",
    "leases",
    "make_domain",
    "make_image",
    "memory_mib",
    "open_daemon",
    "remove",
    "start_bare",
    "start_provider",
    "start_some",
    "sweep",
    "wait",
]

# -- the bare loop ------------------------------------------------------------------------


def _attr(node: ET.Element, path: str, attr: str) -> str:
    found = node.find(path)
    return "" if found is None else found.get(attr, "").lower()


def _nics(root: ET.Element) -> list[tuple[str, str, str]]:
    """(MAC, type, network or bridge) of each NIC in a domain's XML."""
    out = []
    for iface in root.iterfind("devices/interface"):
        source = iface.find("source")
        name = "" if source is None else source.get("network") or source.get("bridge") or ""
        out.append((_attr(iface, "mac", "address"), iface.get("type", ""), name))
    return out


def _facts(root: ET.Element) -> dict[str, Any]:
    """What a client wants of a domain's XML: identity, size, disks, NICs."""
    return {
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        "vcpus": int(root.findtext("vcpu") or 0),
        "memory_kib": int(root.findtext("currentMemory") or 0),
        "disks": [
            (_attr(d, "target", "dev"), _attr(d, "source", "file") or _attr(d, "source", "dev"), _attr(d, "driver", "type"))
            for d in root.iterfind("devices/disk")
            if d.get("device") != "cdrom"
        ],
        "nics": _nics(root),
    }


def leases(conn: libvirt.virConnect, network: str) -> dict[str, list[str]]:
    """The network's DHCP leases: addresses by lower-case MAC."""
    table: dict[str, list[str]] = {}
    for lease in conn.networkLookupByName(network).DHCPLeases():
        table.setdefault(str(lease["mac"]).lower(), []).append(str(lease["ipaddr"]))
    return table


def bare_list(conn: libvirt.virConnect) -> list[dict[str, Any]]:
    """What ListVMs answers, for vm-provider's domains, in plain libvirt-python:
    one ``getAllDomainStats`` (state, disk capacities), the XML of each domain,
    the DHCP leases once per network."""
    stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BLOCK, 0)
    found: dict[str, dict[str, list[str]]] = {}
    out = []
    for dom, st in stats:
        try:
            root = ET.fromstring(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # gone since the listing (other users of the daemon)
            raise
        if root.find(f"metadata/{MARK}") is None:
            continue
        vm = _facts(root)
        size = {st.get(f"block.{i}.name"): st.get(f"block.{i}.capacity", 0) for i in range(st.get("block.count", 0))}
        vm["disks"] = [(*d, size.get(d[0], 0)) for d in vm["disks"]]
        vm["state"] = st["state.state"]
        vm["ips"] = []
        if vm["state"] in ACTIVE:
            for mac, kind, network in vm["nics"]:
                if kind == "network":
                    if network not in found:
                        found[network] = leases(conn, network)
                    vm["ips"] += found[network].get(mac, [])
        out.append(vm)
    return out


def bare_describe(conn: libvirt.virConnect, vm_id: str) -> dict[str, Any]:
    """What Describe answers for one VM, in plain libvirt-python: lookup by
    UUID, state, XML (+ the leases of its networks when it runs, the ARP
    table when they know nothing). Nothing is kept between calls."""
    dom = conn.lookupByUUIDString(vm_id)
    state, reason = dom.state()
    root = ET.fromstring(dom.XMLDesc(0))
    vm = _facts(root) | {"state": state, "reason": reason, "ips": [], "console": ""}
    if state in ACTIVE:
        for mac, kind, network in vm["nics"]:
            if kind == "network":
                vm["ips"] += leases(conn, network).get(mac, [])
        if not vm["ips"]:
            try:
                arp = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP, 0)
            except libvirt.libvirtError:
                arp = {}
            vm["ips"] = [a["addr"] for iface in arp.values() for a in iface.get("addrs") or []]
        graphics = root.find("devices/graphics")
        if graphics is not None:
            vm["console"] = f"{graphics.get('type')}://127.0.0.1:{graphics.get('port')}"
    return vm


# -- a bare gRPC server doing the bare work -------------------------------------------------


class BareDescribe(pb_grpc.ProviderServicer):
    """Describe answered by :func:`bare_describe` in grpc's thread pool: the
    same libvirt work behind gRPC, no framework (no spec models, capability
    checks, locks, tasks or error table)."""

    WORDS = {libvirt.VIR_DOMAIN_RUNNING: "On", libvirt.VIR_DOMAIN_BLOCKED: "On", libvirt.VIR_DOMAIN_PAUSED: "Suspended"}

    def __init__(self, conn: libvirt.virConnect) -> None:
        self.conn = conn

    def Describe(self, request: pb.DescribeRequest, context: Any) -> pb.DescribeResponse:
        vm = bare_describe(self.conn, request.id)
        return pb.DescribeResponse(
            exists=True,
            power_state=self.WORDS.get(vm["state"], "Off"),
            ips=vm["ips"],
            console_url=vm["console"],
            provider_raw_json=json.dumps(vm, sort_keys=True),
        )


def serve_bare(port_file: Path, workers: int) -> None:
    """Run :class:`BareDescribe` on 127.0.0.1 until killed; write its port."""
    server = grpc.server(ThreadPoolExecutor(workers))
    pb_grpc.add_ProviderServicer_to_server(BareDescribe(libvirt.open(URI)), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.with_suffix(".tmp").write_text(str(port))
    port_file.with_suffix(".tmp").rename(port_file)
    server.wait_for_termination()


def start_bare(work: Path, workers: int = 8) -> tuple[subprocess.Popen[bytes], str]:
    """The bare server in a process of its own, with ``workers`` threads."""
    port_file = work / "bare.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port_file), "--workers", str(workers)])
    end = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise RuntimeError("the bare gRPC server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


# -- vm-provider, as users run it -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_provider(
    work: Path, settings: dict[str, str], loopback_urls: bool = False, backend: str = "libvirt"
) -> tuple[subprocess.Popen[bytes], str]:
    """``vm-provider --backend <backend>`` on a free port of 127.0.0.1, with
    ``settings`` as ``VM_PROVIDER_<BACKEND>_<SETTING>`` (libvirt's ``uri``
    defaults to the test bed's daemon); returned once its health says
    SERVING (its backend's connection is open then). ``loopback_urls``: its
    plugins.toml allows URLs on 127.0.0.1 (``[server] allow_addresses``),
    where the benchmarks' HTTP and S3 servers listen."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "plugins.toml"
    config.write_text('[server]\nallow_addresses = ["loopback"]\n' if loopback_urls else "")
    port = free_port()
    env = {**os.environ, "VM_PROVIDER_SERVER_STATE_DIR": str(work / "state")}
    table = {"uri": URI, **settings} if backend == "libvirt" else settings
    env.update({f"VM_PROVIDER_{backend.upper()}_{k.upper()}": v for k, v in table.items()})
    exe = Path(sys.executable).with_name("vm-provider")
    cmd = [str(exe), "--backend", backend, "--config", str(config), "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, env=env, cwd=work)
    address = f"127.0.0.1:{port}"
    end = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vm-provider exited with {proc.returncode}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, address
            except grpc.RpcError:
                pass
            if time.monotonic() > end:
                proc.terminate()
                raise RuntimeError("vm-provider did not report SERVING within 60 s")
            time.sleep(0.1)


def wait(stub: pb_grpc.ProviderStub, task: pb.TaskRef, timeout: float = 120) -> None:
    """Until the task (if any) is done; raise when it failed."""
    end = time.monotonic() + timeout
    while task.id:
        status = stub.TaskStatus(pb.TaskStatusRequest(task=task), timeout=10)
        if status.done:
            if status.error:
                raise RuntimeError(f"task {task.id}: {status.error}")
            return
        if time.monotonic() > end:
            raise RuntimeError(f"task {task.id} not done after {timeout} s")
        time.sleep(0.05)


def memory_mib(pid: int) -> tuple[float, float]:
    """Resident memory of a process now (VmRSS) and at its peak (VmHWM), MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, all its threads;
    NaN when it is gone (a daemon restarted meanwhile)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_pid() -> int | None:
    """libvirtd's pid, as the test bed's script records it."""
    return libvirtd_pid()


# -- the daemon and what is made on it ------------------------------------------------------


def open_daemon() -> libvirt.virConnect | None:
    """A connection to the test bed's daemon, or None (said on stderr) when it does not answer."""
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions; do not print them too
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as exc:
        print(f"{URI} does not answer ({exc.get_error_message()}): bash testbed/libvirtd.sh start", file=sys.stderr)
        return None


def guest_dir() -> Path:
    """The test-bed guest (kernel and initrd), built or taken from its cache."""
    script = Path(__file__).resolve().parent.parent / "testbed" / "build-guest.sh"
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def start_some(conn: libvirt.virConnect, ids: list[str], timeout: float = 40) -> str:
    """Start the VMs, wait for their leases, pause the last; say what was reached."""
    doms = [conn.lookupByUUIDString(i) for i in ids]
    for dom in doms:
        dom.create()
    macs = {ET.fromstring(d.XMLDesc(0)).find("devices/interface/mac").get("address") for d in doms}  # type: ignore[union-attr]
    end = time.monotonic() + timeout
    while macs - set(leases(conn, "default")) and time.monotonic() < end:
        time.sleep(0.5)
    leased = len(macs) - len(macs - set(leases(conn, "default")))
    doms[-1].suspend()
    return f"{len(doms) - 1} running, 1 paused, {leased} of them with a DHCP lease"


def remove(conn: libvirt.virConnect, stub: pb_grpc.ProviderStub | None, prefix: str, threads: int = 4) -> int:
    """Delete every domain named ``prefix*`` through the provider's Delete
    (``threads`` at a time; skipped without a stub), then :func:`sweep` what
    is left. Returns how many domains there were."""
    doms = [d for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    if stub is not None and doms:

        def delete(dom: libvirt.virDomain) -> None:
            try:
                wait(stub, stub.Delete(pb.DeleteRequest(id=dom.UUIDString()), timeout=60).task)
            except (grpc.RpcError, RuntimeError) as exc:
                print(f"  Delete {dom.name()}: {exc}", file=sys.stderr)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(delete, doms))
    sweep(conn, prefix)
    return len(doms)


def sweep(conn: libvirt.virConnect, prefix: str) -> int:
    """Destroy and undefine every domain named ``prefix*``, delete every
    volume of the ``default`` pool named so, by hand; return how many domains."""
    doms = [d for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    for dom in doms:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    pool = conn.storagePoolLookupByName("default")
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith(prefix):
            vol.delete(0)
    return len(doms)


def make_image(work: Path, data_mib: int) -> Path:
    """A sparse 1 GiB raw file with ``data_mib`` random 1 MiB blocks spread over it."""
    raw = work / "source.raw"
    rng = random.Random(7)
    with raw.open("wb") as f:
        f.truncate(GiB)
        for block in sorted(rng.sample(range(GiB // MiB), data_mib)):
            f.seek(block * MiB)
            f.write(os.urandom(MiB))
    return raw


def make_domain(conn: libvirt.virConnect, raw: Path, name: str) -> tuple[libvirt.virDomain, libvirt.virStorageVol]:
    """A stopped domain ``name`` (defined by hand: not vm-provider's) whose
    disk is a 1 GiB qcow2 volume ``name.qcow2`` of the default pool holding
    ``raw``'s data."""
    pool = conn.storagePoolLookupByName("default")
    xml = (
        f"<volume><name>{name}.qcow2</name><capacity unit='bytes'>{GiB}</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    vol = pool.createXML(xml, 0)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), vol.path()], check=True)
    dom = conn.defineXML(
        f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
        <os><type arch='x86_64'>hvm</type></os><devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{vol.path()}'/>
        <target dev='vda' bus='virtio'/></disk></devices></domain>"""
    )
    return dom, vol


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the bare gRPC Describe server")
    parser.add_argument("--serve-bare", type=Path, required=True, help="file to write the port to")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    serve_bare(args.serve_bare, args.workers)
