"""HTTP requests per RPC of the Proxmox backend, with 10, 500 and 10,000 VMs.

Serves the backend on a real vm-provider server (127.0.0.1, port 0) against
the Proxmox API simulator fakepve (HTTPS with its own CA, tasks finishing
at once), calls each RPC like a client, and counts the requests the
simulator received. Prints the table, then ListVMs at each size: its time
over gRPC, the time of its one API request alone (the backend's own client
and connection), and the provider's own part (the difference), in wall
clock and in CPU time. fakepve, the provider and the client share this
process, so the CPU time of the provider's own part is the difference too;
it is what the goal is checked on, since wall clock on a shared machine
also measures the other work there. Exits 1 when ListVMs is not one
request, Describe is more than three (a VM whose node this provider does
not know yet included), or the provider's own CPU time for ListVMs is 1 s
or more.

    .venv/bin/python bench/proxmox_requests.py [--sizes 10 500 10000]

Needs fakepve[crypto] (a test dependency of the project) and the backend
installed (pip install -e backends/proxmox).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from fakepve import FakePve, settle  # type: ignore[import-untyped]
from fakepve.certs import make_cert  # type: ignore[import-untyped]

from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "proxmox" / "tests"))
from pvesim import add_second_node_and_shared_dir

TOKEN_ID = "bench@pve!provider"
TOKEN_SECRET = "bench-secret"
SIZES = (10, 500, 10_000)
LIST_ROUNDS = 30
#: The provider's own CPU time for ListVMs (beyond its one API request) stays below this.
OWN_LIST_LIMIT = 1.0


class Simulator:
    """fakepve on its own event loop in a thread (its public API only)."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="fakepve-bench-")
        self.cafile, keyfile, _ = make_cert(self.tmp.name, hosts=("127.0.0.1",))
        self.pve = FakePve(user="root@pam", password="secret", host="127.0.0.1", port=0)
        self.pve.time_scale = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.pve.start(self.cafile, keyfile))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.run(settle())
        self.run(self.pve.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.tmp.cleanup()


def populate(pve: Any, count: int) -> None:
    add_second_node_and_shared_dir(pve)
    pve.add_vm(9000, "tmpl", template=True, config={"scsi0": "local-lvm:base-9000-disk-0,size=2G", "tags": "vm-provider"})
    for i in range(count):
        vmid = 1000 + i
        running = i % 2 == 0
        vm = pve.add_vm(
            vmid,
            f"vm-{i}",
            node="pve2" if i % 3 == 0 else "pve1",
            status="running" if running else "stopped",
            config={
                "scsi0": f"local-lvm:vm-{vmid}-disk-0,size=8G",
                "tags": "vm-provider",
                "agent": "1",
                "cores": 2,
                "memory": "2048",
            },
        )
        if running:
            vm.agent = {}


class Counter:
    def __init__(self, pve: Any, h: ProviderHarness) -> None:
        self.pve = pve
        self.h = h
        self.rows: dict[str, int] = {}

    def measure(self, label: str, call: Callable[[], Any], wait: bool = True) -> Any:
        """Requests the RPC caused, including its task's work (and the
        client's TaskStatus polls, one each at time scale 0)."""
        mark = len(self.pve.requests)
        resp = call()
        task = getattr(resp, "task", None)
        if wait and task is not None and task.id:
            self.h.wait(task)
        self.rows[label] = len(self.pve.requests) - mark
        return resp


class ListTimes(NamedTuple):
    """Medians of ListVMs over gRPC and of its one API request alone, in
    seconds: wall clock, and CPU time of this whole process (fakepve, the
    provider and the client; the same fakepve work on both sides)."""

    wall: float
    wall_request: float
    cpu: float
    cpu_request: float

    @property
    def own_wall(self) -> float:
        return self.wall - self.wall_request

    @property
    def own_cpu(self) -> float:
        return self.cpu - self.cpu_request


def run_size(count: int, snippets: Path) -> tuple[dict[str, int], ListTimes]:
    sim = Simulator()
    pve = sim.pve
    try:
        pve.apitokens[TOKEN_ID] = TOKEN_SECRET
        populate(pve, count)
        settings = {
            "endpoint": pve.url,
            "token_id": TOKEN_ID,
            "token_secret": TOKEN_SECRET,
            "ca_file": sim.cafile,
            "node": "pve1",
            "import_storage": "cloud",
            "snippets_storage": "cloud",
            "snippets_dir": str(snippets),
        }
        with ProviderHarness.for_backend("proxmox", settings) as h:
            s, c = h.stub, Counter(pve, h)
            c.measure("ListVMs", lambda: s.ListVMs(pb.ListVMsRequest()))
            c.measure("Describe (running, agent)", lambda: s.Describe(pb.DescribeRequest(id="1000")))
            c.measure("Describe (stopped)", lambda: s.Describe(pb.DescribeRequest(id="1001")))
            # made after the provider read the cluster's VM list: their node is not known yet
            pve.add_vm(
                800, "late", node="pve2", status="running", config={"scsi0": "local-lvm:vm-800-disk-0,size=8G", "agent": "1"}
            ).agent = {}
            c.measure("Describe (node not yet known, running)", lambda: s.Describe(pb.DescribeRequest(id="800")))
            c.measure("Describe (node now known, running)", lambda: s.Describe(pb.DescribeRequest(id="800")))
            pve.add_vm(801, "late-stopped", node="pve2", config={"scsi0": "local-lvm:vm-801-disk-0,size=8G", "agent": "1"})
            c.measure("Describe (node not yet known, stopped)", lambda: s.Describe(pb.DescribeRequest(id="801")))
            c.measure("Describe (missing VM)", lambda: s.Describe(pb.DescribeRequest(id="999")))
            new = c.measure(
                "Create (blank)", lambda: s.Create(pb.CreateRequest(name="bench-new", disks_json='[{"SizeGiB": 4}]'))
            ).id
            c.measure("Create (again: idempotent)", lambda: s.Create(pb.CreateRequest(name="bench-new")))
            c.measure(
                "Create (blank, one NIC)",
                lambda: s.Create(pb.CreateRequest(name="bench-nic", networks_json='[{"Bridge": "vmbr0"}]')),
            )
            c.measure(
                "Create (from template)",
                lambda: s.Create(pb.CreateRequest(name="bench-tpl", image_json='{"TemplateName": "tmpl"}')),
            )
            c.measure("Power ON", lambda: s.Power(pb.PowerRequest(id=new, op=pb.POWER_OP_ON)))
            c.measure("Power ON (already on)", lambda: s.Power(pb.PowerRequest(id=new, op=pb.POWER_OP_ON)))
            c.measure("Power REBOOT", lambda: s.Power(pb.PowerRequest(id=new, op=pb.POWER_OP_REBOOT)))
            c.measure("Power SHUTDOWN_GRACEFUL", lambda: s.Power(pb.PowerRequest(id=new, op=pb.POWER_OP_SHUTDOWN_GRACEFUL)))
            c.measure("Reconfigure", lambda: s.Reconfigure(pb.ReconfigureRequest(id=new, desired_json='{"Class": {"CPU": 2}}')))
            snap = c.measure("SnapshotCreate", lambda: s.SnapshotCreate(pb.SnapshotCreateRequest(vm_id=new, name_hint="s1")))
            c.measure(
                "SnapshotRevert", lambda: s.SnapshotRevert(pb.SnapshotRevertRequest(vm_id=new, snapshot_id=snap.snapshot_id))
            )
            c.measure(
                "SnapshotDelete", lambda: s.SnapshotDelete(pb.SnapshotDeleteRequest(vm_id=new, snapshot_id=snap.snapshot_id))
            )
            c.measure("GetDiskInfo", lambda: s.GetDiskInfo(pb.GetDiskInfoRequest(vm_id=new)))
            c.measure("HardwareUpgrade", lambda: s.HardwareUpgrade(pb.HardwareUpgradeRequest(id=new, target_version=9)))
            c.measure("Clone (full)", lambda: s.Clone(pb.CloneRequest(source_vm_id=new, target_name="bench-clone")))
            image = json.dumps({"URL": "https://images.example.invalid/noble.qcow2", "Checksum": "a" * 64})
            c.measure("ImagePrepare", lambda: s.ImagePrepare(pb.ImagePrepareRequest(image_json=image, target_name="noble")))
            started = s.Power(pb.PowerRequest(id="1001", op=pb.POWER_OP_ON))  # stopped: a start task
            c.measure("TaskStatus (UPID)", lambda: s.TaskStatus(pb.TaskStatusRequest(task=started.task)), wait=False)
            c.measure("Delete", lambda: s.Delete(pb.DeleteRequest(id=new)))
            c.measure("Validate", lambda: s.Validate(pb.ValidateRequest()))
            wall: dict[str, list[float]] = {"list": [], "raw": []}
            cpu: dict[str, list[float]] = {"list": [], "raw": []}
            api = h.backend.client  # type: ignore[attr-defined]

            def timed(what: str, call: Callable[[], Any]) -> Any:
                t0, c0 = time.perf_counter(), time.process_time()
                got = call()
                wall[what].append(time.perf_counter() - t0)
                cpu[what].append(time.process_time() - c0)
                return got

            for _ in range(LIST_ROUNDS if count <= 1000 else LIST_ROUNDS // 3):
                vms = timed("list", lambda: s.ListVMs(pb.ListVMsRequest()).vms)
                timed("raw", lambda: api.get("cluster/resources", type="vm"))  # the one API request alone
            assert len(vms) >= count
            return c.rows, ListTimes(*(statistics.median(d[k]) for d in (wall, cpu) for k in ("list", "raw")))
    finally:
        sim.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of VMs in the cluster")
    sizes: list[int] = sorted(parser.parse_args().sizes)
    results: dict[int, dict[str, int]] = {}
    list_time: dict[int, ListTimes] = {}
    with tempfile.TemporaryDirectory(prefix="bench-snippets-") as snippets:
        for count in sizes:
            results[count], list_time[count] = run_size(count, Path(snippets))
    labels = list(results[sizes[0]])
    width = max(len(label) for label in labels)
    print("HTTP requests per RPC (Proxmox API simulator; tasks polled to the end)\n")
    print(f"{'RPC':<{width}}  " + "  ".join(f"{n:>6} VMs" for n in sizes))
    for label in labels:
        print(f"{label:<{width}}  " + "  ".join(f"{results[n][label]:>10}" for n in sizes))
    rows = [
        ("ListVMs over gRPC, wall clock", lambda t: t.wall),
        ("its one API request alone", lambda t: t.wall_request),
        ("the provider's own part", lambda t: t.own_wall),
        ("ListVMs, CPU time", lambda t: t.cpu),
        ("its one API request, CPU time", lambda t: t.cpu_request),
        ("the provider's own CPU time", lambda t: t.own_cpu),
    ]
    print("\nListVMs, medians (ms)" + " " * 14 + "  ".join(f"{n:>6} VMs" for n in sizes))
    for label, pick in rows:
        print(f"  {label:<33}" + "  ".join(f"{pick(list_time[n]) * 1000:10.1f}" for n in sizes))
    print("(the API request alone: GET /cluster/resources?type=vm from the backend's own client; CPU time")
    print(" of this process, where fakepve, the provider and the client run: fakepve's part is on both sides)")
    own = {n: list_time[n].own_cpu for n in sizes}
    problems = [f"ListVMs made {results[n]['ListVMs']} requests with {n} VMs" for n in sizes if results[n]["ListVMs"] != 1]
    problems += [
        f"{label} made {results[n][label]} requests with {n} VMs"
        for n in sizes
        for label in labels
        if label.startswith("Describe")
        if results[n][label] > 3
    ]
    problems += [
        f"ListVMs took the provider {own[n]:.2f} s of CPU of its own with {n} VMs" for n in sizes if own[n] >= OWN_LIST_LIMIT
    ]
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
