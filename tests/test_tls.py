"""TLS as VirtRigaud launches a provider: the real ``vm-provider`` command
serving mutual TLS from a directory laid out as a Kubernetes Secret mount
(``tls.crt``, ``tls.key``, ``ca.crt`` reached through ``..data``), TLS 1.3
at least, a client-name allow-list, certificates reloaded when the
directory's link is swapped, and the refusals and warnings of a start
without TLS files."""

from __future__ import annotations

import asyncio
import datetime
import errno
import logging
import os
import re
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from provider_core import listening
from provider_core.errors import ConfigError
from provider_core.listening import bind, check_address
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.tls_proxy import RefusalLog, client_peer, peer_names

from .test_startup import one_line_failure

pytestmark = pytest.mark.needs_test_plugins

Run = Callable[..., subprocess.CompletedProcess[str]]
Serve = Callable[..., Any]
SERVER_NAME = "virtrigaud-provider-vms-lab.vms.svc.cluster.local"  # as the manager dials it
MANAGER = "virtrigaud-manager"


# -- a CA of the test's own -------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, cn: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, *, dns: tuple[str, ...] = (), uris: tuple[str, ...] = (), server: bool = False) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Leaf(key, builder.sign(self.key, hashes.SHA256()))


@dataclass
class Leaf:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def files(self, where: Path) -> tuple[Path, Path]:
        where.mkdir(parents=True, exist_ok=True)
        (where / "cert.pem").write_bytes(self.cert_pem)
        (where / "key.pem").write_bytes(self.key_pem)
        return where / "cert.pem", where / "key.pem"


class SecretMount:
    """A directory as the kubelet keeps a mounted Secret: ``..data`` links to
    a timestamped directory holding the files; each file is a link through
    ``..data``; an update writes a new directory and swaps ``..data``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    def publish(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        target = self.root / f"..2026_12_03_00_00_{self.generation:02d}"
        target.mkdir()
        for name, data in files.items():
            (target / name).write_bytes(data)
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        link.replace(self.root / "..data")  # rename(2): atomic
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(Path("..data") / name)


@dataclass
class Pki:
    ca: Ca
    server: Leaf
    manager: Leaf  # SAN DNS virtrigaud-manager
    other: Leaf  # signed by the same CA, named otherwise
    stranger: Leaf  # signed by another CA, named as the manager


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = Ca.make("virtrigaud CA")
    return Pki(
        ca=ca,
        server=ca.issue("provider", dns=(SERVER_NAME,), server=True),
        manager=ca.issue("manager", dns=(MANAGER,)),
        other=ca.issue("intruder", dns=("intruder.example",), uris=("spiffe://cluster/ns/x/sa/intruder",)),
        stranger=Ca.make("another CA").issue(MANAGER, dns=(MANAGER,)),
    )


def mount(tmp_path: Path, pki: Pki, server: Leaf | None = None) -> SecretMount:
    secret = SecretMount(tmp_path / "tls")
    leaf = server or pki.server
    secret.publish({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": pki.ca.pem})
    return secret


def start(serve: Serve, tls_dir: Path, extra: str = "", env: dict[str, str] | None = None) -> tuple[Any, int]:
    config = f'[server]\nlisten = "127.0.0.1:0"\ntls_dir = "{tls_dir}"\nrequire_tls = true\ndrain_delay = 0\n{extra}'
    served = serve("--backend", "memory", config=config, env=env)
    return served, int(served.started()["port"])


def channel(port: int, pki: Pki, client: Leaf | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(pki.ca.pem, client.key_pem if client else None, client.cert_pem if client else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def validate(chan: grpc.Channel) -> pb.ValidateResponse:
    return pb_grpc.ProviderStub(chan).Validate(pb.ValidateRequest(), timeout=5)


def refused(port: int, pki: Pki, client: Leaf | None) -> None:
    chan = channel(port, pki, client)
    with chan, pytest.raises(grpc.RpcError) as caught:
        validate(chan)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def served_serial(port: int, pki: Pki, client: Leaf, tmp_path: Path) -> int:
    """The serial of the certificate a new connection is served."""
    context = ssl.create_default_context(cadata=pki.ca.pem.decode())
    context.load_cert_chain(*client.files(tmp_path / "client"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# -- who gets in --------------------------------------------------------------------


def test_the_manager_gets_in(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    served, port = start(serve, mount(tmp_path, pki).root)
    with channel(port, pki, pki.manager) as chan:
        assert validate(chan).ok
    # any client certificate the CA signed, when no allow-list is set
    with channel(port, pki, pki.other) as chan:
        assert validate(chan).ok
    assert "refused" not in served.text


def test_the_start_line_names_mutual_tls_its_version_and_the_allow_list(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    secret = mount(tmp_path, pki)
    for i, (extra, security) in enumerate(
        [
            ("", "mutual TLS 1.3+, SAN allow-list off, no token"),
            (f'allowed_sans = ["{MANAGER}"]\ntls_min_version = "1.2"\n', "mutual TLS 1.2+, SAN allow-list on, no token"),
        ]
    ):
        served, _ = start(serve, secret.root, extra + f'state_dir = "{tmp_path / f"state-{i}"}"\n')
        assert f"({security})" in served.text


def test_a_client_certificate_of_another_ca_is_refused(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    served, port = start(serve, mount(tmp_path, pki).root)
    refused(port, pki, pki.stranger)
    line = served.wait_for("refused a TLS connection").string
    assert "from 127.0.0.1:" in line
    assert "client certificate not accepted (unable to get local issuer certificate)" in line
    assert "PRIVATE KEY" not in served.text


def test_a_client_without_certificate_is_refused(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    served, port = start(serve, mount(tmp_path, pki).root)
    refused(port, pki, None)
    assert "no client certificate" in served.wait_for("refused a TLS connection").string


def _tls12_handshake(port: int, pki: Pki, tmp_path: Path) -> None:
    context = ssl.create_default_context(cadata=pki.ca.pem.decode())
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*pki.manager.files(tmp_path / "tls12"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_a_tls_1_2_client_is_refused(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    served, port = start(serve, mount(tmp_path, pki).root)
    with pytest.raises(ssl.SSLError):  # the server ends the handshake (with no alert on uvloop)
        _tls12_handshake(port, pki, tmp_path)
    assert "TLS version below the minimum" in served.wait_for("refused a TLS connection").string


def test_tls_1_2_is_served_when_allowed(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    _, port = start(serve, mount(tmp_path, pki).root, 'tls_min_version = "1.2"\n')
    _tls12_handshake(port, pki, tmp_path)


@pytest.mark.parametrize("token", [False, True])
def test_the_allow_list_lets_in_only_the_names_it_holds(serve: Serve, tmp_path: Path, pki: Pki, token: bool) -> None:
    """A certificate the CA signed but outside the list: its calls, health
    checks too, are answered PERMISSION_DENIED naming it (as VirtRigaud's
    own providers answer), which the manager does not retry as it does
    UNAVAILABLE; with or without a token."""
    env = {"VIRTRIGAUD_PROVIDER_ALLOWED_SANS": f" {MANAGER} , spiffe://cluster/ns/vr/sa/manager,"}
    (tmp_path / "token").write_text("s3cret")
    extra = f'auth_token_file = "{tmp_path / "token"}"\n' if token else ""
    metadata = [("authorization", "Bearer s3cret")] if token else []
    served, port = start(serve, mount(tmp_path, pki).root, extra, env=env)
    with channel(port, pki, pki.manager) as chan:
        assert pb_grpc.ProviderStub(chan).Validate(pb.ValidateRequest(), timeout=5, metadata=metadata).ok
    with channel(port, pki, pki.other) as chan:
        calls = [
            lambda: pb_grpc.ProviderStub(chan).Validate(pb.ValidateRequest(), timeout=5, metadata=metadata),
            lambda: pb_grpc.ProviderStub(chan).Validate(pb.ValidateRequest(), timeout=5),
            lambda: health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5),
            lambda: list(health_pb2_grpc.HealthStub(chan).Watch(health_pb2.HealthCheckRequest(), timeout=5)),
            lambda: chan.unary_unary("/provider.v1.Provider/NoSuchMethod")(b"", timeout=5),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.details() == (
                "client certificate intruder.example, spiffe://cluster/ns/x/sa/intruder, intruder is not in allowed_sans"
            )
    line = served.wait_for("refused a TLS connection").string
    assert "client certificate names intruder.example, spiffe://cluster/ns/x/sa/intruder, intruder" in line
    assert "none is in allowed_sans" in line
    with channel(port, pki, pki.manager) as chan:  # the refused connection changed nothing for others
        assert pb_grpc.ProviderStub(chan).Validate(pb.ValidateRequest(), timeout=5, metadata=metadata).ok
        with pytest.raises(grpc.RpcError) as caught:
            chan.unary_unary("/provider.v1.Provider/NoSuchMethod")(b"", timeout=5, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_allow_list_matches_dns_and_uri_sans_and_the_cn() -> None:
    """The names matched are those of Python's decoded certificate: DNS and URI SANs, then the CN."""
    decoded = {
        "subject": ((("commonName", "intruder"),),),
        "subjectAltName": (("DNS", "intruder.example"), ("URI", "spiffe://cluster/ns/x/sa/intruder"), ("IP Address", "10.0.0.1")),
    }
    assert peer_names(decoded) == ["intruder.example", "spiffe://cluster/ns/x/sa/intruder", "intruder"]


def _local_ports(remote_port: int) -> set[int]:
    """This process's TCP connections to 127.0.0.1:``remote_port``: their local ports."""
    found = set()
    mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")}
    rows = [row for table in ("tcp", "tcp6") for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    for row in rows:  # grpc's sockets are IPv6 ones, with IPv4 mapped
        fields = row.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(remote.split(":")[1], 16) == remote_port and f"socket:[{inode}]" in mine:
            found.add(int(local.split(":")[1], 16))
    return found


def test_calls_through_the_tls_layer_name_their_client(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "token").write_text("s3cret-tls-token")
    served, port = start(serve, mount(tmp_path, pki).root, f'auth_token_file = "{tmp_path / "token"}"\n')
    with channel(port, pki, pki.manager) as chan:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ProviderStub(chan).Validate(pb.ValidateRequest(), timeout=5, metadata=[("authorization", "Bearer wrong")])
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (client_port,) = _local_ports(port)
        line = served.wait_for("refused /provider.v1.Provider/Validate").string
    assert line.endswith(f"from ipv4:127.0.0.1:{client_port}: wrong token"), line


def test_a_peer_name_the_tls_layer_did_not_make_is_shown_as_it_is() -> None:
    """Any local process may bind an abstract unix name: one that looks like
    the layer's names no client."""
    forged = "unix-abstract:vm-provider-4242-ipv4:10.0.0.7:41234"
    assert client_peer(forged) == forged
    assert client_peer("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1:5555"


# -- rotation -------------------------------------------------------------------------


def test_rotation_serves_new_connections_the_new_certificate(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    secret = mount(tmp_path, pki)
    served, port = start(serve, secret.root)
    first = pki.server.cert.serial_number
    assert served_serial(port, pki, pki.manager, tmp_path) == first
    old = channel(port, pki, pki.manager)
    assert validate(old).ok

    rotated = pki.ca.issue("provider", dns=(SERVER_NAME,), server=True)
    secret.publish({"tls.crt": rotated.cert_pem, "tls.key": rotated.key_pem, "ca.crt": pki.ca.pem})
    assert served_serial(port, pki, pki.manager, tmp_path) == rotated.cert.serial_number
    assert validate(old).ok  # the connection opened before goes on with its certificate
    with channel(port, pki, pki.manager) as new:
        assert validate(new).ok
    served.wait_for("TLS files changed: new connections get the new certificate")

    # A broken set (a key that is not the certificate's) keeps the set in use.
    broken = pki.ca.issue("provider", dns=(SERVER_NAME,), server=True)
    secret.publish({"tls.crt": broken.cert_pem, "tls.key": rotated.key_pem, "ca.crt": pki.ca.pem})
    assert served_serial(port, pki, pki.manager, tmp_path) == rotated.cert.serial_number
    line = served.wait_for("TLS files changed but").string
    assert "is not the key of" in line
    assert "serving the previous certificate" in line
    assert served_serial(port, pki, pki.manager, tmp_path) == rotated.cert.serial_number
    assert validate(old).ok
    old.close()


def test_a_certificate_rewritten_in_place_is_served_to_new_connections(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.server.files(tmp_path / "files")
    (tmp_path / "ca.pem").write_bytes(pki.ca.pem)
    config = f'tls_cert = "{cert}"\ntls_key = "{key}"\ntls_client_ca = "{tmp_path / "ca.pem"}"\nlisten = "127.0.0.1:0"'
    served = serve("--backend", "memory", config=f"[server]\n{config}\n")
    port = int(served.started()["port"])
    assert served_serial(port, pki, pki.manager, tmp_path) == pki.server.cert.serial_number
    rotated = pki.ca.issue("provider", dns=(SERVER_NAME,), server=True)
    key.write_bytes(rotated.key_pem)  # half written: the old certificate with the new key
    assert served_serial(port, pki, pki.manager, tmp_path) == pki.server.cert.serial_number
    cert.write_bytes(rotated.cert_pem)
    assert served_serial(port, pki, pki.manager, tmp_path) == rotated.cert.serial_number


def test_a_rotation_while_the_first_context_is_built_is_served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Pki) -> None:
    """Files replaced just after the start read them: the next connection gets the new ones."""
    cert, key = pki.server.files(tmp_path / "files")
    (tmp_path / "ca.pem").write_bytes(pki.ca.pem)
    rotated = pki.ca.issue("provider", dns=(SERVER_NAME,), server=True)
    built = listening.server_context

    def then_rotated(files: listening.TlsFiles, min_version: str) -> ssl.SSLContext:
        context = built(files, min_version)
        new_cert, new_key = rotated.files(tmp_path / "rotated")
        new_cert.replace(cert)
        new_key.replace(key)
        return context

    monkeypatch.setattr(listening, "server_context", then_rotated)
    creds = listening.Credentials(listening.TlsFiles(cert, key, tmp_path / "ca.pem"), "1.3")
    monkeypatch.undo()
    first = creds.context
    assert creds.check() is not first


def test_the_files_are_looked_at_off_the_event_loop(tmp_path: Path, pki: Pki) -> None:
    """A stat on a slow or hung filesystem must not hold up every call: the
    check for a rotation runs in a thread, shared by connections arriving
    together, and still sees files replaced before a connection came."""
    cert, key = pki.server.files(tmp_path / "files")
    (tmp_path / "ca.pem").write_bytes(pki.ca.pem)
    looked: list[str] = []

    class Noting(listening.TlsFiles):
        def signature(self) -> tuple[tuple[int, int, int, int], ...]:
            looked.append(threading.current_thread().name)
            return super().signature()

    creds = listening.Credentials(Noting(cert, key, tmp_path / "ca.pem"), "1.3")
    first = creds.context
    rotated = pki.ca.issue("provider", dns=(SERVER_NAME,), server=True)

    async def main() -> tuple[str, list[ssl.SSLContext], ssl.SSLContext]:
        looked.clear()
        together = await asyncio.gather(*(creds.current() for _ in range(5)))
        checks = len(looked)
        assert 1 <= checks <= 2, looked  # one check, and one for those that came while it ran
        new_cert, new_key = rotated.files(tmp_path / "rotated")
        new_cert.replace(cert)
        new_key.replace(key)
        return threading.current_thread().name, together, await creds.current()

    loop_thread, together, after = asyncio.run(main())
    assert all(context is first for context in together)
    assert after is not first
    assert looked
    assert loop_thread not in looked


def test_token_auth_works_through_tls(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "token").write_text("s3cret-tls-token")
    served, port = start(serve, mount(tmp_path, pki).root, f'auth_token_file = "{tmp_path / "token"}"\n')
    with channel(port, pki, pki.manager) as chan:
        stub = pb_grpc.ProviderStub(chan)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Validate(pb.ValidateRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Validate(pb.ValidateRequest(), timeout=5, metadata=[("authorization", "Bearer s3cret-tls-token")]).ok
    # The refused call names the TLS client, not the layer's socket in front of grpc.
    line = served.wait_for("refused /provider.v1.Provider/Validate").string
    assert re.search(r"from ipv4:127\.0\.0\.1:\d+: no authorization metadata", line), line


# -- starts without TLS files -----------------------------------------------------------


def test_require_tls_without_files_refuses_to_start(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    config = f'[server]\nlisten = "127.0.0.1:0"\ntls_dir = "{tmp_path / "tls"}"\nrequire_tls = true\n'
    result = cli("--backend", "memory", config=config)
    one_line_failure(result, f"require_tls: tls_dir {tmp_path / 'tls'} holds none of tls.crt, tls.key, ca.crt")
    result = cli(
        "--backend", "memory", config='[server]\nlisten = "127.0.0.1:0"\n', env={"VM_PROVIDER_SERVER_REQUIRE_TLS": "true"}
    )
    one_line_failure(result, "require_tls: no TLS files are set; set tls_dir, or tls_cert and tls_key")


def test_insecure_lifts_require_tls_and_warns(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    config = f'[server]\nlisten = "127.0.0.1:0"\ntls_dir = "{tmp_path / "tls"}"\nrequire_tls = true\n'
    served = serve("--backend", "memory", config=config, env={"VIRTRIGAUD_PROVIDER_INSECURE": "True"})
    assert served.started()["security"] == "plaintext, no token"
    warning = served.wait_for("WARNING").string
    assert f"serving PLAINTEXT: tls_dir {tmp_path / 'tls'} holds no TLS files" in warning
    assert served.channel is not None
    assert validate(served.channel).ok


def test_insecure_set_otherwise_than_true_changes_nothing(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    config = f'[server]\nlisten = "127.0.0.1:0"\ntls_dir = "{tmp_path / "tls"}"\nrequire_tls = true\n'
    result = cli("--backend", "memory", config=config, env={"VIRTRIGAUD_PROVIDER_INSECURE": "1"})
    one_line_failure(result, "require_tls: tls_dir")


def test_a_partial_tls_dir_names_what_it_lacks(cli: Run, tmp_path: Path, pki: Pki) -> None:
    secret = SecretMount(tmp_path / "tls")
    secret.publish({"tls.crt": pki.server.cert_pem, "tls.key": pki.server.key_pem})
    result = cli("--backend", "memory", config=f'[server]\nlisten = "127.0.0.1:0"\ntls_dir = "{secret.root}"\n')
    one_line_failure(result, f"tls_dir {secret.root} lacks ca.crt; it needs all of tls.crt, tls.key, ca.crt")


@pytest.mark.parametrize(
    ("server", "fragment"),
    [
        ('tls_dir = "/x"\ntls_cert = "/y"', "tls_dir and tls_cert/tls_key/tls_client_ca are both set"),
        ('allowed_sans = ["m"]', "allowed_sans needs client certificates"),
        ('tls_min_version = "1.1"', "tls_min_version: Input should be '1.2' or '1.3'"),
        ('tls_dir = "/x"\nallowed_sans = [" "]', "allowed_sans: holds an empty name"),
    ],
)
def test_tls_settings_that_cannot_work(cli: Run, server: str, fragment: str) -> None:
    one_line_failure(cli("--backend", "memory", config=f"[server]\n{server}\n"), fragment)


def test_both_allowed_sans_variables_are_refused(cli: Run, tmp_path: Path, pki: Pki) -> None:
    env = {"VIRTRIGAUD_PROVIDER_ALLOWED_SANS": "a", "VM_PROVIDER_SERVER_ALLOWED_SANS": '["b"]'}
    result = cli("--backend", "memory", config=f'[server]\ntls_dir = "{mount(tmp_path, pki).root}"\n', env=env)
    one_line_failure(result, "VIRTRIGAUD_PROVIDER_ALLOWED_SANS and VM_PROVIDER_SERVER_ALLOWED_SANS are both set: keep one")


def test_the_config_command_shows_where_allowed_sans_came_from(cli: Run, tmp_path: Path, pki: Pki) -> None:
    env = {"VIRTRIGAUD_PROVIDER_ALLOWED_SANS": "virtrigaud-manager", "VIRTRIGAUD_PROVIDER_INSECURE": "true"}
    result = cli("config", "--backend", "memory", config=f'[server]\ntls_dir = "{mount(tmp_path, pki).root}"\n', env=env)
    assert result.returncode == 0, result.stderr
    assert 'allowed_sans = ["virtrigaud-manager"]' in result.stdout
    assert "VIRTRIGAUD_PROVIDER_ALLOWED_SANS" in result.stdout
    assert "VIRTRIGAUD_PROVIDER_INSECURE=true" in result.stdout


# -- the log of refusals ------------------------------------------------------------------


def test_refusals_are_logged_a_few_per_interval_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "provider_core.tls_proxy")
    log = RefusalLog(burst=2, interval=0.2)
    for i in range(5):
        log.refused(f"127.0.0.1:{i}", "no client certificate")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a TLS connection from 127.0.0.1:0: no client certificate",
        "refused a TLS connection from 127.0.0.1:1: no client certificate",
    ]
    time.sleep(0.25)
    log.refused("127.0.0.1:9", "no client certificate")
    assert caplog.records[2].getMessage().startswith("refused 3 more TLS connections in the last")
    assert caplog.records[3].getMessage() == "refused a TLS connection from 127.0.0.1:9: no client certificate"


def test_grpc_listens_only_on_a_private_socket(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    """The directory and the socket the real server makes for grpc: only its user reaches them."""
    (tmp_path / "tmp").mkdir()
    _, port = start(serve, mount(tmp_path, pki).root, env={"TMPDIR": str(tmp_path / "tmp")})
    (private,) = (tmp_path / "tmp").iterdir()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert (private / "grpc.sock").is_socket()
    assert stat.S_IMODE((private / "grpc.sock").stat().st_mode) == 0o600
    with channel(port, pki, pki.manager) as chan:
        assert validate(chan).ok


def test_refusals_counted_are_logged_at_the_end_of_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Not only when a later refusal comes (there may be none)."""
    caplog.set_level(logging.WARNING, "provider_core.tls_proxy")
    log = RefusalLog(burst=1, interval=0.2)

    async def main() -> None:
        for i in range(3):
            log.refused(f"127.0.0.1:{i}", "no client certificate")
        await asyncio.sleep(0.4)

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[1].startswith("refused 2 more TLS connections in the last")


def test_a_stop_ends_cleanly_and_removes_the_private_socket(serve: Serve, tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "tmp").mkdir()
    served, port = start(serve, mount(tmp_path, pki).root, env={"TMPDIR": str(tmp_path / "tmp")})
    (private,) = (tmp_path / "tmp").iterdir()
    assert (private / "grpc.sock").is_socket()
    with channel(port, pki, pki.manager) as chan:
        assert validate(chan).ok
        served.proc.terminate()
        assert served.exit_status() == 0
    assert list((tmp_path / "tmp").iterdir()) == []
    assert "Traceback" not in served.text


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"ca.crt": b"not a certificate\n"}, "tls_dir {root}/ca.crt holds no PEM certificate"),
        ({"tls.key": "other"}, "tls_dir {root}/tls.key is not the key of tls_dir {root}/tls.crt"),
        ({"tls.crt": b""}, "tls_dir {root}/tls.crt holds no PEM certificate"),
    ],
)
def test_a_tls_dir_whose_files_are_not_what_they_should_be(
    cli: Run, tmp_path: Path, pki: Pki, files: dict[str, Any], fragment: str
) -> None:
    content = {"tls.crt": pki.server.cert_pem, "tls.key": pki.server.key_pem, "ca.crt": pki.ca.pem}
    content.update({k: pki.manager.key_pem if v == "other" else v for k, v in files.items()})
    secret = SecretMount(tmp_path / "tls")
    secret.publish(content)
    result = cli("--backend", "memory", config=f'[server]\nlisten = "127.0.0.1:0"\ntls_dir = "{secret.root}"\n')
    one_line_failure(result, fragment.format(root=secret.root))


# -- where TLS listens ---------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["socket", "bind"])
def test_a_host_without_ipv6_is_served_on_0_0_0_0(monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """``[::]`` (the default address) on a node booted with ipv6.disable=1,
    where no IPv6 socket can be made, or with IPv6 but no address: served
    on 0.0.0.0, as grpc does, by a real socket."""
    real = socket.socket

    class NoIPv6(real):  # type: ignore[valid-type,misc]
        def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
            if family == socket.AF_INET6 and failure == "socket":
                raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
            super().__init__(family, type, proto, fileno)

        def bind(self, address: Any) -> None:
            if self.family == socket.AF_INET6 and failure == "bind":
                raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
            super().bind(address)

    monkeypatch.setattr(socket, "socket", NoIPv6)
    check_address("[::]:0")
    sock = bind("[::]:0")
    monkeypatch.undo()
    with sock:
        assert sock.family == socket.AF_INET
        host, port = sock.getsockname()
        assert host == "0.0.0.0"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_an_address_that_cannot_be_served_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No socket of any family: one line naming the address, no traceback."""

    def no_socket(*args: Any, **kwargs: Any) -> socket.socket:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:0: Too many open files"):
        bind("127.0.0.1:0")


def _unix_config(tls_dir: Path, path: Path, state: Path) -> str:
    return f'[server]\nlisten = "unix:{path}"\ntls_dir = "{tls_dir}"\nstate_dir = "{state}"\ndrain_delay = 0\n'


def test_a_unix_listener_is_removed_at_stop_and_a_stale_one_replaced(serve: Serve, cli: Run, tmp_path: Path, pki: Pki) -> None:
    secret = mount(tmp_path, pki)
    path = tmp_path / "p.sock"
    config = _unix_config(secret.root, path, tmp_path / "state")
    creds = grpc.ssl_channel_credentials(pki.ca.pem, pki.manager.key_pem, pki.manager.cert_pem)
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]

    def serving() -> Any:
        served = serve("--backend", "memory", config=config)
        served.wait_for(f"serving provider.v1.Provider on unix:{path} ")
        with grpc.secure_channel(f"unix:{path}", creds, options=options) as chan:
            assert validate(chan).ok
        return served

    served = serving()
    served.proc.terminate()
    assert served.exit_status() == 0
    assert not path.exists()

    served = serving()  # started again on the same path
    served.proc.kill()  # no stop: the socket file stays
    served.exit_status()
    assert path.is_socket()

    served = serving()  # nobody answers on the stale file: replaced
    result = cli("--backend", "memory", config=_unix_config(secret.root, path, tmp_path / "state-2"))
    one_line_failure(result, f"cannot listen on unix:{path}: another process listens on {path}")
    with grpc.secure_channel(f"unix:{path}", creds, options=options) as chan:
        assert validate(chan).ok  # the refused start left the socket alone
    served.proc.terminate()
    assert served.exit_status() == 0
    assert not path.exists()

    path.write_text("not a socket")
    result = cli("--backend", "memory", config=config)
    one_line_failure(result, f"{path} exists and is no socket")
    assert path.read_text() == "not a socket"
