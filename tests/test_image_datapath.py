"""The Proxmox node data path (SSH) from inside the container image, as a
pod runs it: the image against fakepve (HTTPS) with the SSH key and the
nodes' host keys in the credentials Secret (``ssh-privatekey``,
``known_hosts``, mounted read-only at /etc/virtrigaud/credentials as the
manager mounts it), the node played by a real OpenSSH server on 127.0.0.1
(``pvenode``: qemu-img and a ``pvesm`` stand-in over directory storages),
a migration claim (a host directory mounted read-write at
``/mnt/migration-storage/<claim>``, the default ``pvc_root``) and S3 (moto
on 127.0.0.1). ExportDisk of a VM's disk to both, then ImportDisk of each
back; every checksum the provider reports is the one this host computes.

Run as the pods that run it:

- VirtRigaud's manager: UID 65532 (the image's user), no fsGroup, the
  Secret's files root's with the default mode 0644
  (internal/controller/provider_controller.go sets only the container's
  securityContext and no ``defaultMode``);
- OpenShift's ``restricted-v2``: a UID of the namespace's range that no
  passwd file lists (1000870000), GID 0, the range's first ID as fsGroup;
  the Secret given ``defaultMode: 0400``, which the kubelet turns into
  0440 of group fsGroup (pkg/volume/volume_linux.go: read-only volumes get
  ``0440`` and the fsGroup).

And one that cannot work, with the answer it gets: the key 0400 of root
with no fsGroup, which no UID but root reads.

Build the image first: ``bash tools/build-image.sh`` (``VMP_IMAGE`` names
another tag); as root (sshd and podman). Without podman, the image or sshd
these tests skip, saying why; with ``VMP_REQUIRE_TESTBED=1`` they fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import paramiko
import pytest
import yaml
from vmp_testplugins.container import Container, Containers, image_missing, podman, readable
from vmp_testplugins.skips import missing
from vmp_testplugins.sshd import sshd_unavailable

from provider_core.conformance.servers import S3Server
from provider_core.pb import provider_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "proxmox" / "tests"))  # pvesim, pvenode
from pvenode import PveNode
from pvesim import add_second_node_and_shared_dir

ROOT = Path(__file__).resolve().parents[1]

_why = image_missing() or sshd_unavailable() or None
needs_image = pytest.mark.skipif(_why is not None, reason=missing(_why or ""))

TOKEN_ID = "vmp@pve!imagessh"
TOKEN_SECRET = "1mage-ssh-t0ken-secret"
S3_SECRET = "1mage-s3-secret"
BUCKET = "vmp-image-moves"
CLAIM = "mig"
VOLID = "cloud:100/vm-100-disk-0.qcow2"
CREDENTIALS = "/etc/virtrigaud/credentials"


@dataclass(frozen=True)
class Pod:
    """Who a pod runs as and how the kubelet lays out its volumes."""

    user: str
    """podman's ``--user``: UID[:GID]."""
    fs_group: int | None
    """The pod's fsGroup: a supplementary group of the process, the group
    of the Secret's files and of the claim."""
    secret_mode: int
    """The mode of the Secret's files in the pod (defaultMode, with 0440
    added by the kubelet where there is an fsGroup)."""
    claim_group: int
    """The group that may write the claim's directory."""


PODS = {
    "manager-uid-65532": Pod(user="65532", fs_group=None, secret_mode=0o644, claim_group=65532),
    "openshift-uid-without-passwd-entry": Pod(
        user="1000870000:0", fs_group=1000870000, secret_mode=0o440, claim_group=1000870000
    ),
}


@pytest.fixture
def start() -> Iterator[Containers]:
    with Containers() as started:
        yield started


@pytest.fixture
def node(tmp_path: Path) -> Iterator[PveNode]:
    n = PveNode(tmp_path / "node")
    with n.running():
        yield n


@pytest.fixture
def pve(fakepve: Any) -> Any:
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    add_second_node_and_shared_dir(fakepve)
    return fakepve


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def same_content(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0


def make_disk(node: PveNode, pve: Any) -> Path:
    """VM 100 with a 64 MiB qcow2 disk holding 8 MiB of data on storage cloud."""
    disk = node.path(VOLID)
    disk.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 8M", str(disk)], check=True, capture_output=True)
    pve.add_vm(100, "mover", status="stopped", config={"scsi0": f"{VOLID},size=64M", "memory": "512"})
    return disk


def documented() -> tuple[dict[str, str], dict[str, str]]:
    """docs/deploying.md's credentials Secret with the data path (its
    stringData) and the variables it adds to the container."""
    text = (ROOT / "docs" / "deploying.md").read_text()
    section = text.split("\n## Proxmox: the nodes' data path in a pod\n", 1)[1].split("\n## ", 1)[0]
    secret, env = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S))
    assert secret["kind"] == "Secret"
    return secret["stringData"], {e["name"]: e["value"] for e in env}


def test_the_pages_secret_and_variables_are_well_formed() -> None:
    """What the page shows parses as the provider reads it: a known_hosts
    file paramiko loads, SSH_HOSTS as JSON mapping node names to addresses."""
    secret, env = documented()
    hosts = paramiko.HostKeys()
    for line in secret["known_hosts"].splitlines():
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        assert entry is not None, line
        hosts.add(entry.hostnames[0], entry.key.get_name(), entry.key)
    addresses = json.loads(env["VM_PROVIDER_PROXMOX_SSH_HOSTS"])
    assert set(addresses) == {"pve1", "pve2"}
    assert all(hosts.lookup(a) for a in addresses.values())


def provider(
    start: Containers, pve: Any, cafile: str, node: PveNode, tmp_path: Path, pod: Pod, claims: Path, key_mode: int | None = None
) -> Container:
    """The image serving Proxmox with the node data path, its login and SSH
    files in the credentials Secret as docs/deploying.md shows it (this
    test bed's values in its keys), laid out for ``pod`` (the key of
    ``key_mode`` if given); the page's variables, with this bed's values."""
    shown, variables = documented()
    ours = {
        "token_id": TOKEN_ID,
        "token_secret": TOKEN_SECRET + "\n",
        "ssh-privatekey": node.sshd.client_key.read_text(),
        "known_hosts": node.sshd.known_hosts("known_hosts").read_text(),
    }
    assert set(shown) == set(ours), "the page's Secret has other keys than this test fills"
    creds = readable(tmp_path / "credentials", ours, pod.secret_mode, pod.fs_group)
    if key_mode is not None:
        (creds / "ssh-privatekey").chmod(key_mode)
    ca = readable(tmp_path / "pve-ca", {"ca.crt": Path(cafile).read_text()})
    env = {
        "VM_PROVIDER_PROXMOX_CA_FILE": "/etc/pve-ca/ca.crt",
        "VM_PROVIDER_PROXMOX_IMPORT_STORAGE": "cloud",
        "VM_PROVIDER_PROXMOX_SSH_PORT": str(node.sshd.port),
        "VM_PROVIDER_PROXMOX_NODE_TMP_DIR": str(node.tmp),
        "VM_PROVIDER_SERVER_ALLOW_ADDRESSES": '["loopback"]',  # moto's S3 on 127.0.0.1
    }
    assert set(variables) == {"VM_PROVIDER_PROXMOX_SSH_HOSTS"}
    nodes = json.loads(variables["VM_PROVIDER_PROXMOX_SSH_HOSTS"])
    env["VM_PROVIDER_PROXMOX_SSH_HOSTS"] = json.dumps(dict.fromkeys(nodes, "127.0.0.1"))  # every node is this host
    claim = claims / CLAIM  # writable by the pod's group: the setgid directory fsGroup makes of a volume
    os.chown(claim, 0, pod.claim_group)
    claim.chmod(0o2770)
    groups = () if pod.fs_group is None else (pod.fs_group,)
    return start(
        "proxmox",
        pve.url,
        env,
        {creds: CREDENTIALS, ca: "/etc/pve-ca"},
        user=pod.user,
        groups=groups,
        writable={claims / CLAIM: f"/mnt/migration-storage/{CLAIM}"},
    )


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    """Where the host keeps the migration claim's directory (``claims/mig``)."""
    (tmp_path / "claims" / CLAIM).mkdir(parents=True)
    return tmp_path / "claims"


def written_under_tmp(c: Container) -> list[str]:
    """Every file the provider wrote under /tmp (its only writable place)."""
    listed = podman("exec", c.name, "python3", "-c", FIND_FILES)
    assert listed.returncode == 0, listed.stderr
    return sorted(listed.stdout.split())


FIND_FILES = "import os\nfor d, _, fs in os.walk('/tmp'):\n    for f in fs: print(os.path.join(d, f))"


@needs_image
@pytest.mark.slow
@pytest.mark.parametrize("pod", PODS.values(), ids=PODS.keys())
def test_export_and_import_through_the_node(
    start: Containers, pve: Any, fakepve_cafile: str, node: PveNode, claims: Path, tmp_path: Path, pod: Pod
) -> None:
    disk = make_disk(node, pve)
    c = provider(start, pve, fakepve_cafile, node, tmp_path, pod, claims)
    ident = podman("exec", c.name, "id")
    uid = pod.user.split(":")[0]
    assert ident.stdout.startswith(f"uid={uid}"), ident.stdout + ident.stderr

    report = c.stub.Validate(pb.ValidateRequest(), timeout=60)
    assert report.ok, report.message
    assert "SSH data path (pvesm, qemu-img) on: pve1, pve2" in report.message

    # ExportDisk to the claim, then ImportDisk of that file back
    url = f"pvc://{CLAIM}/vmmigrations/ns1/move/export.qcow2"
    exported = c.stub.ExportDisk(
        pb.ExportDiskRequest(vm_id="100", destination_url=url, format="qcow2", compress=True, backend_type="pvc"), timeout=120
    )
    staged = claims / CLAIM / "vmmigrations/ns1/move/export.qcow2"
    assert exported.checksum == sha256(staged)
    assert same_content(disk, staged)
    imported = c.stub.ImportDisk(
        pb.ImportDiskRequest(
            source_url=url,
            target_name="from-claim",
            format="qcow2",
            backend_type="pvc",
            verify_checksum=True,
            expected_checksum=exported.checksum,
        ),
        timeout=120,
    )
    assert imported.disk_id == "cloud:import/from-claim.qcow2"
    assert sha256(node.path(imported.disk_id)) == imported.checksum == exported.checksum
    assert same_content(disk, node.path(imported.disk_id))

    # ExportDisk to S3, then ImportDisk of that object back
    with S3Server(BUCKET) as s3:
        creds = {"access_key_id": "AKIATEST", "secret_access_key": S3_SECRET, "endpoint_url": s3.url, "region": "us-east-1"}
        key = "vmmigrations/ns1/move/export.raw"
        exported = c.stub.ExportDisk(
            pb.ExportDiskRequest(
                vm_id="100", destination_url=f"s3://{BUCKET}/{key}", format="raw", backend_type="s3", credentials=creds
            ),
            timeout=120,
        )
        received = tmp_path / "received.raw"
        s3.client().download_file(BUCKET, key, str(received))
        imported = c.stub.ImportDisk(
            pb.ImportDiskRequest(
                source_url=f"s3://{BUCKET}/{key}",
                target_name="from-s3",
                format="raw",
                backend_type="s3",
                credentials=creds,
                verify_checksum=True,
                expected_checksum=sha256(received),
            ),
            timeout=120,
        )
    assert exported.checksum == sha256(received)
    assert same_content(disk, received)
    assert imported.disk_id == "cloud:import/from-s3.raw"
    assert sha256(node.path(imported.disk_id)) == imported.checksum == exported.checksum
    assert same_content(disk, node.path(imported.disk_id))
    assert list(node.tmp.iterdir()) == []  # the node's converted files are gone

    # Under $HOME and the temp dir (both /tmp) only the state directory and
    # stevedore's entry point cache stay: no known_hosts or key written by
    # the SSH client, no staged or downloaded disk left behind.
    written = written_under_tmp(c)
    kept = ("/tmp/.local/state/vm-provider/", "/tmp/.cache/python-entrypoints/")
    assert [f for f in written if not f.startswith(kept)] == [], written
    status, _ = c.stop()
    logs = c.logs()
    assert status == 0, logs
    assert "Traceback" not in logs, logs
    for secret in (TOKEN_SECRET, S3_SECRET, "PRIVATE KEY"):
        assert secret not in logs
    assert node.sshd.logins() >= 4  # Validate (two nodes), exports and imports


@needs_image
@pytest.mark.slow
def test_a_key_the_pod_cannot_read_is_named(
    start: Containers, pve: Any, fakepve_cafile: str, node: PveNode, claims: Path, tmp_path: Path
) -> None:
    """The key given mode 0400 (the Secret's ``items[].mode``) in a pod with
    no fsGroup: root's alone. Validate and ExportDisk name the file and say
    that the pod's user cannot read it: the operator's files must change
    (FAILED_PRECONDITION), not the network (UNAVAILABLE)."""
    pod = Pod(user="65532", fs_group=None, secret_mode=0o644, claim_group=65532)
    make_disk(node, pve)
    c = provider(start, pve, fakepve_cafile, node, tmp_path, pod, claims, key_mode=0o400)
    report = c.stub.Validate(pb.ValidateRequest(), timeout=60)
    assert not report.ok
    assert report.message.count(f"{CREDENTIALS}/ssh-privatekey") == 1, report.message  # once, not once per node
    assert "UID 65532" in report.message
    with pytest.raises(grpc.RpcError) as info:
        c.stub.ExportDisk(
            pb.ExportDiskRequest(vm_id="100", destination_url=f"pvc://{CLAIM}/x.qcow2", format="qcow2", backend_type="pvc"),
            timeout=120,
        )
    err: Any = info.value
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "ssh_key_file" in err.details()
    assert f"{CREDENTIALS}/ssh-privatekey" in err.details()
    assert "UID 65532" in err.details()
    assert node.sshd.logins() == 0
    assert not list(claims.rglob("x.qcow2"))
