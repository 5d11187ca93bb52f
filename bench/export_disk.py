"""ExportDisk through vm-provider against the same work done by hand.

A 1 GiB qcow2 volume holding ~300 MiB of random data, the disk of a stopped
domain on the real libvirt daemon, is exported as qcow2 to an HTTP sink on
127.0.0.1, in turns:

- by hand: ``qemu-img convert`` to a file, ``sha256sum`` of it, ``curl -T``
  upload of it; and the same tuned (no flush of the scratch file, OpenSSL's
  SHA256 instead of coreutils');
- through vm-provider: the ExportDisk RPC on ``vm-provider --backend
  libvirt`` running as a subprocess on the test bed's daemon.

Prints each run, the throughput ratio (provider / by hand; goal >= 0.8) of
the best runs, and the provider process's peak RSS (VmHWM). The received
files are checked against the checksums both ways reported.

    bash testbed/libvirtd.sh start && .venv/bin/python bench/export_disk.py [--runs 3] [--data-mib 300]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import libvirt
from libvirtd import URI, HttpSink, MiB, make_domain, make_image, memory_mib, start_provider

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def by_hand(source: str, work: Path, url: str, tuned: bool) -> tuple[float, str]:
    """Convert, hash, upload. ``tuned``: no flush of the scratch file
    (``-t unsafe -W``, as vm-provider converts) and OpenSSL's SHA256, which
    uses the CPU's SHA instructions (coreutils' sha256sum does not)."""
    out = work / "by-hand.qcow2"
    start = time.perf_counter()
    flags = ["-t", "unsafe", "-W"] if tuned else []
    subprocess.run(["qemu-img", "convert", "-U", *flags, "-O", "qcow2", source, str(out)], check=True)
    hasher = ["openssl", "dgst", "-sha256", "-r"] if tuned else ["sha256sum"]
    digest = subprocess.run([*hasher, str(out)], check=True, capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["curl", "-sS", "--fail", "-T", str(out), url], check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed, digest


def report(label: str, run: int, seconds: float, received: Path, times: dict[str, list[float]]) -> None:
    size = received.stat().st_size
    print(f"{label:15} run {run + 1}: {seconds:6.2f} s  {size / MiB / seconds:7.1f} MiB/s")
    times[label].append(seconds)
    received.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=300)
    args = parser.parse_args()
    for tool in ("qemu-img", "sha256sum", "curl"):
        if shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        print(f"{URI} does not answer ({exc.get_error_message()}): bash testbed/libvirtd.sh start", file=sys.stderr)
        return 2

    tag = f"vmp-bench-export-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="vmp-bench-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        raw = make_image(work, args.data_mib)
        dom, vol = make_domain(conn, raw, tag)
        raw.unlink()
        proc, address = start_provider(work, {"download_dir": str(work / "scratch")}, loopback_urls=True)
        idle = memory_mib(proc.pid)[1]
        try:
            with HttpSink(work / "sink") as sink, grpc.insecure_channel(address) as channel:
                stub = pb_grpc.ProviderStub(channel)  # type: ignore[no-untyped-call]
                info = subprocess.run(
                    ["qemu-img", "info", "--output=json", "-U", vol.path()], capture_output=True, text=True, check=True
                )
                image_mib = json.loads(info.stdout)["actual-size"] / MiB
                print(f"source: {vol.path()} (1 GiB virtual, {image_mib:.0f} MiB allocated); {args.runs} run(s) each\n")
                times: dict[str, list[float]] = {"by hand": [], "by hand, tuned": [], "vm-provider": []}
                for run in range(args.runs):
                    for label, tuned in (("by hand", False), ("by hand, tuned", True)):
                        name = f"hand-{run}.qcow2"
                        seconds, digest = by_hand(vol.path(), work, sink.url(name), tuned)
                        assert digest == sha256(sink.root / name), "by hand: checksum mismatch"
                        report(label, run, seconds, sink.root / name, times)

                    name = f"ours-{run}.qcow2"
                    start = time.perf_counter()
                    resp = stub.ExportDisk(
                        pb.ExportDiskRequest(vm_id=dom.UUIDString(), destination_url=sink.url(name), format="qcow2"),
                        timeout=600,
                    )
                    seconds = time.perf_counter() - start
                    assert not resp.task.id, "the export did not finish within its deadline"
                    assert resp.checksum == sha256(sink.root / name), "vm-provider: checksum mismatch"
                    (sink.root / f"{name}.sha256").unlink(missing_ok=True)
                    report("vm-provider", run, seconds, sink.root / name, times)
            rss = memory_mib(proc.pid)[1]
        finally:
            proc.terminate()
            proc.wait(30)
            dom.undefine()
            vol.delete(0)
            conn.close()

    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = best["by hand"] / best["vm-provider"]
    print("\nthroughput ratio vm-provider / by hand         (best runs, median runs)")
    print(f"  against by hand:         {ratio:5.2f} {median['by hand'] / median['vm-provider']:5.2f}   (goal >= 0.8)")
    against_tuned = (best["by hand, tuned"] / best["vm-provider"], median["by hand, tuned"] / median["vm-provider"])
    print(f"  against by hand, tuned:  {against_tuned[0]:5.2f} {against_tuned[1]:5.2f}")
    print(f"provider peak RSS (VmHWM): {rss:.0f} MiB after exporting {image_mib:.0f} MiB ({idle:.0f} MiB once started)")
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
