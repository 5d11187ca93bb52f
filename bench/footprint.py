"""The provider image's footprint, to size a pod's resources (deploy/,
docs/deploying.md "Sizing").

The image runs as deploy/provider/deployment.yaml runs it (UID 65532,
read-only root, /tmp a tmpfs, all capabilities dropped, ``--port``
``--health-port``, PROVIDER_TYPE / PROVIDER_ENDPOINT, JSON logs), on the
host's network, serving libvirt's test hypervisor (in the process) or a
Proxmox simulator (fakepve, HTTPS on 127.0.0.1, a process of its own).
bench/load.py's clients then run the life of VMs against it (Create,
Describe, Power, ListVMs, Delete, TaskStatus polling): ``--clients`` at
once (10, as many as VirtRigaud's manager reconciles against one provider)
for ``--seconds`` per round, after a warm-up round.

Printed per backend: the resident memory of the container's processes at
rest after start, its peak during the load, the CPU the provider used per
call and in cores while loaded, the calls per second. Nothing leaves this
machine.

    .venv/bin/python bench/footprint.py [--backends libvirt proxmox] [--clients 10] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import free_port, run_round

IMAGE = os.environ.get("VMP_IMAGE", "vm-provider:dev")
TICKS = os.sysconf("SC_CLK_TCK")
PVE_PASSWORD = "f00tprint-pass"


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, timeout=120).stdout.strip()


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


class Peak(threading.Thread):
    """Samples the resident memory of ``pids`` every 0.2 s; keeps the highest."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, rss_mib(self.pids))


def fakepve(work: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    from fakepve.certs import make_cert

    cert, key, _ = make_cert(str(work), hosts=("127.0.0.1",))
    (work / "guests.json").write_text('{"guests": []}')
    port = free_port()
    cmd = [sys.executable, "-m", "fakepve", str(work / "guests.json"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--password", PVE_PASSWORD, "--time-scale", "0", "--cert", cert, "--key", key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # "fakepve listening on ..."
    return proc, f"https://127.0.0.1:{port}", Path(cert)


def start(backend: str, work: Path) -> tuple[str, str, subprocess.Popen[bytes] | None]:
    name = f"vmp-footprint-{uuid.uuid4().hex[:8]}"
    port, health = free_port(), free_port()
    flags = ["--network=host", "--read-only", "--user=65532", "--tmpfs=/tmp", "--cap-drop=all"]
    flags += [
        "--security-opt=no-new-privileges",
        f"--name={name}",
        "--env=LOG_FORMAT=json",
        "--env=VIRTRIGAUD_PROVIDER_INSECURE=true",
    ]
    pve = None
    if backend == "libvirt":
        flags += ["--env=PROVIDER_TYPE=libvirt", "--env=PROVIDER_ENDPOINT=test:///default"]
    else:
        pve, url, ca = fakepve(work)
        creds = work / "credentials"
        creds.mkdir(mode=0o755)
        (creds / "username").write_text("root@pam")
        (creds / "password").write_text(PVE_PASSWORD)
        for f in [*creds.iterdir(), ca]:
            f.chmod(0o644)
        work.chmod(0o755)
        flags += [
            "--env=PROVIDER_TYPE=proxmox",
            f"--env=PROVIDER_ENDPOINT={url}",
            "--env=VM_PROVIDER_PROXMOX_CA_FILE=/etc/pve-ca.pem",
        ]
        flags += [f"--volume={creds}:/etc/virtrigaud/credentials:ro", f"--volume={ca}:/etc/pve-ca.pem:ro"]
    podman("run", "--detach", *flags, IMAGE, f"--port={port}", f"--health-port={health}")
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
    finally:
        channel.close()
    return name, target, pve


def measure(backend: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="vmp-footprint-") as tmp:
        name, target, pve = start(backend, Path(tmp))
        try:
            pids = tree(int(podman("inspect", "--format", "{{.State.Pid}}", name)))
            time.sleep(2)
            at_rest = rss_mib(pids)
            asyncio.run(run_round(target, args.clients, args.seconds, 0))  # warm-up, not counted
            peak = Peak(pids)
            peak.start()
            cpu = cpu_seconds(pids)
            r, elapsed = asyncio.run(run_round(target, args.clients, args.seconds, 1))
            cpu = cpu_seconds(pids) - cpu
            peak.done.set()
            peak.join()
            errors = sum(r.errors.values())
            print(
                f"{backend:8} {args.clients} clients: at rest {at_rest:.0f} MiB, peak {peak.peak:.0f} MiB; "
                f"{r.calls / elapsed:.0f} calls/s, CPU {cpu / max(r.calls, 1) * 1e3:.2f} ms/call, "
                f"{cpu / elapsed:.2f} cores; errors {errors}"
            )
        finally:
            subprocess.run(["podman", "rm", "--force", "--time=0", name], capture_output=True, check=False)
            if pve is not None:
                pve.terminate()
                pve.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["libvirt", "proxmox"], choices=["libvirt", "proxmox"])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    socket.setdefaulttimeout(None)
    for backend in args.backends:
        measure(backend, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
