"""The container image (Containerfile), run as VirtRigaud's manager runs a
provider pod: as UID 65532 on a read-only root filesystem with a writable
/tmp, all capabilities dropped, on the host's network; Create, Describe and
Delete over gRPC against fakepve (HTTPS, credentials in files mounted
read-only) and against libvirt's test hypervisor; SIGTERM stops it with exit
status 0 within the grace period. Also as deploy/'s example Deployment
says to run it (its security context, variables, mounts, probes, preStop).

Build the image first: ``bash tools/build-image.sh`` (``VMP_IMAGE`` names
another tag). Without podman or the image these tests skip, saying why;
with ``VMP_REQUIRE_TESTBED=1`` (``make test`` sets it, and so CI) they fail
instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vmp_testplugins import deploy
from vmp_testplugins.skips import missing

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.testing import wait_task

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("VMP_IMAGE", "vm-provider:dev")
UID = 65532
GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds
TOKEN_ID = "vmp@pve!image"
TOKEN_SECRET = "1mage-t0ken-secret"


def _missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (bash tools/build-image.sh --setup-host)"
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        return f"image {IMAGE} is not built (bash tools/build-image.sh)"
    return None


_why = _missing()
pytestmark = [pytest.mark.skipif(_why is not None, reason=missing(_why or "")), pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


# How the manager's pods run (and deploy/'s): UID 65532, read-only root,
# /tmp writable, no capabilities, no privilege escalation.
POD_FLAGS = ["--read-only", f"--user={UID}", "--tmpfs=/tmp", "--cap-drop=all", "--security-opt=no-new-privileges"]


class Container:
    """One provider container, started like a pod of the manager's."""

    def __init__(
        self, backend: str, endpoint: str, env: dict[str, str], mounts: dict[Path, str], tls: tuple[Path, Any] | None = None
    ) -> None:
        """Started as the manager starts it: ``--port --health-port``,
        PROVIDER_TYPE / PROVIDER_ENDPOINT, the Secret's files mounted read-only;
        with ``tls`` (a directory of tls.crt, tls.key, ca.crt and the test PKI)
        mounted at /etc/virtrigaud/tls, else with the manager's plaintext
        opt-out. On the host's network, so the ports are free ones."""
        self.name = f"vmp-image-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.health_port = free_port()
        args = [f"--port={self.port}", f"--health-port={self.health_port}"]
        env = {"PROVIDER_TYPE": backend, "PROVIDER_ENDPOINT": endpoint, **env}
        if tls is None:
            env["VIRTRIGAUD_PROVIDER_INSECURE"] = "true"
        else:
            mounts = {**mounts, tls[0]: "/etc/virtrigaud/tls"}
        flags = ["--network=host", *POD_FLAGS, f"--name={self.name}"]
        for key, value in env.items():
            flags.append(f"--env={key}={value}")
        for source, target in mounts.items():
            flags.append(f"--volume={source}:{target}:ro")
        started = podman("run", "--detach", *flags, IMAGE, *args)
        assert started.returncode == 0, started.stderr
        target = f"127.0.0.1:{self.port}"
        if tls is None:
            self.channel = grpc.insecure_channel(target)
        else:
            pki = tls[1]
            creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key, pki.client_cert)
            self.channel = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])
        self.stub = pb_grpc.ProviderStub(self.channel)

    def logs(self) -> str:
        out = podman("logs", self.name)
        return out.stdout + out.stderr

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def wait_serving(self, timeout: float = 60) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.running(), f"the container stopped:\n{self.logs()}"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not serving after {timeout}s:\n{self.logs()}")

    def stop(self) -> tuple[int, float]:
        """SIGTERM, as the kubelet sends it; the exit status and the seconds it took."""
        began = time.monotonic()
        podman("kill", "--signal=TERM", self.name)
        waited = podman("wait", self.name, timeout=GRACE_SECONDS + 30)
        return int(waited.stdout.strip()), time.monotonic() - began

    def remove(self) -> None:
        self.channel.close()
        podman("rm", "--force", "--time=0", self.name)


@pytest.fixture
def start() -> Iterator[Any]:
    started: list[Container] = []

    def make(
        backend: str, endpoint: str, env: dict[str, str], mounts: dict[Path, str] | None = None, tls: Any = None
    ) -> Container:
        c = Container(backend, endpoint, env, mounts or {}, tls)
        started.append(c)
        c.wait_serving()
        return c

    yield make
    for c in started:
        c.remove()


def readable(directory: Path, files: dict[str, str], mode: int = 0o644, group: int | None = None) -> Path:
    """A directory UID 65532 can read (as a Secret's volume is), holding
    ``files`` with ``mode``, of ``group`` if given (as the kubelet makes a
    Secret volume's files with a pod's fsGroup)."""
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    for name, text in files.items():
        (directory / name).write_text(text)
        (directory / name).chmod(mode)
        if group is not None:
            os.chown(directory / name, -1, group)
    return directory


def lifecycle(c: Container) -> None:
    """Create, Describe and Delete over gRPC, the probes; then SIGTERM ends it with status 0."""
    exercise(c, probes=("/healthz", "/readyz"))
    stopped(c, *c.stop(), grace=GRACE_SECONDS)


def exercise(c: Container, probes: tuple[str, ...]) -> None:
    """Create, Describe and Delete over gRPC; each of ``probes`` answers 200."""
    created = c.stub.Create(
        pb.CreateRequest(
            name="image-vm",
            class_json=json.dumps({"CPU": 1, "MemoryMiB": 256}),
            disks_json=json.dumps([{"SizeGiB": 1}]),
        ),
        timeout=30,
    )
    wait_task(c.stub, created.task, timeout=60)
    assert created.id
    described = c.stub.Describe(pb.DescribeRequest(id=created.id), timeout=30)
    assert described.exists, described
    deleted = c.stub.Delete(pb.DeleteRequest(id=created.id), timeout=30)
    wait_task(c.stub, deleted.task, timeout=60)
    assert not c.stub.Describe(pb.DescribeRequest(id=created.id), timeout=30).exists

    for path in probes:  # liveness and readiness
        with urllib.request.urlopen(f"http://127.0.0.1:{c.health_port}{path}", timeout=5) as reply:
            assert reply.status == 200, path


def stopped(c: Container, status: int, seconds: float, grace: float) -> None:
    """It exited 0 within ``grace``, with nothing unexpected or secret in its log."""
    logs = c.logs()
    assert status == 0, logs
    assert seconds < grace, f"stopped after {seconds:.1f}s"
    assert "Traceback" not in logs, logs
    assert TOKEN_SECRET not in logs


def test_proxmox_against_fakepve(start: Any, fakepve: Any, fakepve_cafile: str, tmp_path: Path) -> None:
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    creds = readable(tmp_path / "credentials", {"token_id": TOKEN_ID, "token_secret": TOKEN_SECRET + "\n"})
    pki = readable(tmp_path / "pve-ca", {"ca.crt": Path(fakepve_cafile).read_text()})
    env = {"VM_PROVIDER_PROXMOX_CA_FILE": "/etc/pve-ca/ca.crt"}
    c = start("proxmox", fakepve.url, env, {creds: "/etc/virtrigaud/credentials", pki: "/etc/pve-ca"})
    lifecycle(c)


def test_libvirt_against_its_test_hypervisor_over_mutual_tls(start: Any, pki: Any, tmp_path: Path) -> None:
    """With the Provider's TLS Secret mounted: mutual TLS 1.3, as the manager dials."""
    files = {"tls.crt": pki.server_cert.read_text(), "tls.key": pki.server_key.read_text(), "ca.crt": pki.ca.read_text()}
    tls = readable(tmp_path / "tls", files)
    c = start("libvirt", "test:///default", {}, tls=(tls, pki))
    assert "mutual TLS 1.3+" in c.logs()
    plain = grpc.insecure_channel(f"127.0.0.1:{c.port}")
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ProviderStub(plain).Validate(pb.ValidateRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()
    lifecycle(c)


def test_image_runs_as_65532_and_writes_only_tmp() -> None:
    config = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"][-1] == "vm-provider"
    # Inside: who it runs as, that / is read-only, that what the provider
    # needs besides Python loads (libvirt, qemu-img, boto3's S3 and STS
    # models, both backends), and where its state directory lands.
    probe = """
import os, shutil, subprocess, tempfile, boto3, libvirt
from pathlib import Path
from provider_core import config
from vm_provider_libvirt.settings import LibvirtSettings as Settings
assert os.getuid() == 65532, os.getuid()
try:
    Path("/opt/vm-provider/x").write_text("x")
    raise SystemExit("the root filesystem is writable")
except OSError:
    pass
assert tempfile.gettempdir() == "/tmp"
state = config.default_state_dir("libvirt", Settings(uri="test:///default"))
assert str(state).startswith("/tmp/"), state
state.mkdir(parents=True)
subprocess.run(["qemu-img", "--version"], check=True, capture_output=True)
assert shutil.which("gcc") is None and shutil.which("cc") is None, "a compiler ships"
boto3.client("s3", region_name="us-east-1")
boto3.client("sts", region_name="us-east-1")
libvirt.open("test:///default").close()
import psycopg, psycopg_pool  # state_url: Debian's libpq5 behind psycopg
assert psycopg.pq.__impl__ == "python" and psycopg.pq.version() >= 150000, psycopg.pq.version()
print("ok")
"""
    flags = ["--rm", "--network=host", *POD_FLAGS]
    ran = podman("run", *flags, "--entrypoint=python3", IMAGE, "-c", probe)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == "ok", ran.stdout
    listed = podman("run", *flags, IMAGE, "backends", "libvirt", "proxmox")
    assert listed.returncode == 0, listed.stdout + listed.stderr


def test_running_md_start_up_check_runs_as_written() -> None:
    """docs/running.md's start-up check of the image, run as written."""
    text = (ROOT / "docs" / "running.md").read_text()
    section = text.split("## Container image", 1)[1].split("\n## ", 1)[0]
    samples = [b for b in re.findall(r"```sh\n(.*?)```", section, flags=re.S) if b.startswith("podman run")]
    check = shlex.split(samples[0])
    assert check[-3:] == ["backends", "libvirt", "proxmox"], check
    ran = podman(*[IMAGE if word == "vm-provider:dev" else word for word in check[1:]])
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith("libvirt: "), ran.stdout


def pod_flags(kustomization: str) -> list[str]:
    """podman's flags for what the Deployment's pod and container ask of the runtime."""
    spec, container = deploy.pod(kustomization), deploy.container(kustomization)
    security = spec["securityContext"] | container["securityContext"]
    # Each field either becomes a flag or needs none under podman (its
    # default seccomp profile; the image's group; fsGroup for Secret volumes).
    handled = {"readOnlyRootFilesystem", "runAsUser", "runAsNonRoot", "runAsGroup", "fsGroup"}
    handled |= {"capabilities", "allowPrivilegeEscalation", "seccompProfile"}
    assert set(security) <= handled, f"not translated: {set(security) - handled}"
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["runAsGroup"] == security["fsGroup"] == security["runAsUser"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    flags = [f"--user={security['runAsUser']}"]
    flags += ["--read-only"] if security["readOnlyRootFilesystem"] else []
    flags += ["--cap-drop=all"] if security["capabilities"]["drop"] == ["ALL"] else []
    flags += [] if security["allowPrivilegeEscalation"] else ["--security-opt=no-new-privileges"]
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    flags += [f"--tmpfs={m['mountPath']}" for m in container["volumeMounts"] if m["name"] in empty]
    return flags


def test_deploy_example_runs_as_its_deployment_says(
    start: Any, fakepve: Any, fakepve_cafile: str, pki: Any, tmp_path: Path
) -> None:
    """deploy/examples/proxmox's Deployment, its container run as the kubelet
    would: its security context, variables, Secrets at its mount paths
    (their files of its fsGroup, with its defaultMode), its probes; then preStop's command and SIGTERM, within
    terminationGracePeriodSeconds. Differences, all forced by the test bed:
    the host's network and free ports instead of 9443 and 8080, fakepve's
    address and CA, and the test PKI's client name admitted."""
    kustomization = "examples/proxmox"
    spec, container = deploy.pod(kustomization), deploy.container(kustomization)
    assert sorted(pod_flags(kustomization)) == sorted(POD_FLAGS)
    assert [a.split("=")[0] for a in container["args"]] == ["--port", "--health-port"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["tls"] == "/etc/virtrigaud/tls"

    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    volumes = {v["name"]: v["secret"]["defaultMode"] for v in spec["volumes"] if "secret" in v}
    group = spec["securityContext"]["fsGroup"]
    secret = {"token_id": TOKEN_ID, "token_secret": TOKEN_SECRET + "\n"}
    creds = readable(tmp_path / "credentials", secret, volumes["credentials"], group)
    ca = readable(tmp_path / "pve-ca", {"ca.crt": Path(fakepve_cafile).read_text()})
    files = {"tls.crt": pki.server_cert.read_text(), "tls.key": pki.server_key.read_text(), "ca.crt": pki.ca.read_text()}
    tls = readable(tmp_path / "tls", files, volumes["tls"], group)
    env = deploy.environment(kustomization)
    backend = env.pop("PROVIDER_TYPE")
    del env["PROVIDER_ENDPOINT"]
    assert env.pop("VIRTRIGAUD_PROVIDER_ALLOWED_SANS") == "virtrigaud-manager"
    env |= {"VIRTRIGAUD_PROVIDER_ALLOWED_SANS": "controller", "VM_PROVIDER_PROXMOX_CA_FILE": "/etc/pve-ca/ca.crt"}
    c = start(backend, fakepve.url, env, {creds: mounts["credentials"], ca: "/etc/pve-ca"}, tls=(tls, pki))
    logs = c.logs()
    assert "mutual TLS 1.3+" in logs
    assert any(json.loads(line).get("level") == "INFO" for line in logs.splitlines() if line.startswith("{"))  # LOG_FORMAT=json
    assert "launched by VirtRigaud as provider vm-providers/pve-lab" in logs

    exercise(c, probes=(container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]))
    began = time.monotonic()
    hook = podman("exec", c.name, *container["lifecycle"]["preStop"]["exec"]["command"], timeout=60)
    assert hook.returncode == 0, hook.stderr
    status, _ = c.stop()
    stopped(c, status, time.monotonic() - began, grace=spec["terminationGracePeriodSeconds"])
