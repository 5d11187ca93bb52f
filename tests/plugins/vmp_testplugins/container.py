"""The container image (Containerfile) run with podman as VirtRigaud's
manager runs a provider pod: as UID 65532 on a read-only root filesystem
with a writable /tmp, all capabilities dropped, no privilege escalation, on
the host's network (so its ports are free ones of this host), Secrets'
files mounted read-only.

``VMP_IMAGE`` names the image (default ``vm-provider:dev``, as
``tools/build-image.sh`` tags it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from provider_core.pb import provider_pb2_grpc as pb_grpc

from .sshd import free_port

IMAGE = os.environ.get("VMP_IMAGE", "vm-provider:dev")
UID = 65532
GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds

# How the manager's pods run (and deploy/'s): UID 65532, read-only root,
# /tmp writable, no capabilities, no privilege escalation.
POD_FLAGS = ["--read-only", f"--user={UID}", "--tmpfs=/tmp", "--cap-drop=all", "--security-opt=no-new-privileges"]


def image_missing() -> str | None:
    """Why the image cannot run here (None when it can)."""
    if shutil.which("podman") is None:
        return "podman is not installed (bash tools/build-image.sh --setup-host)"
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        return f"image {IMAGE} is not built (bash tools/build-image.sh)"
    return None


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


class Container:
    """One provider container, started like a pod of the manager's."""

    def __init__(
        self,
        backend: str,
        endpoint: str,
        env: dict[str, str],
        mounts: dict[Path, str],
        tls: tuple[Path, Any] | None = None,
        *,
        user: str | None = None,
        groups: tuple[int, ...] = (),
        writable: dict[Path, str] | None = None,
    ) -> None:
        """Started as the manager starts it: ``--port --health-port``,
        PROVIDER_TYPE / PROVIDER_ENDPOINT, the Secret's files (``mounts``)
        mounted read-only; with ``tls`` (a directory of tls.crt, tls.key,
        ca.crt and the test PKI) mounted at /etc/virtrigaud/tls, else with
        the manager's plaintext opt-out. ``user`` (``UID[:GID]``) replaces
        UID 65532, ``groups`` are supplementary groups (a pod's fsGroup),
        ``writable`` are volumes mounted read-write (migration claims)."""
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
        if user is not None:
            flags = [f"--user={user}" if f.startswith("--user=") else f for f in flags]
        flags += [f"--group-add={g}" for g in groups]
        for key, value in env.items():
            flags.append(f"--env={key}={value}")
        for source, target in mounts.items():
            flags.append(f"--volume={source}:{target}:ro")
        for source, target in (writable or {}).items():
            flags.append(f"--volume={source}:{target}:rw")
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


class Containers:
    """Starts containers (each serving before it is returned) and removes
    them all when the ``with`` block ends: a test module's ``start``
    fixture."""

    def __init__(self) -> None:
        self.started: list[Container] = []

    def __call__(
        self, backend: str, endpoint: str, env: dict[str, str], mounts: dict[Path, str] | None = None, tls: Any = None, **kw: Any
    ) -> Container:
        c = Container(backend, endpoint, env, mounts or {}, tls, **kw)
        self.started.append(c)
        c.wait_serving()
        return c

    def __enter__(self) -> Containers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for c in self.started:
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
