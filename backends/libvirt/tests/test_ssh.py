"""libvirt over SSH with the credentials VirtRigaud mounts: a private key,
a known_hosts file, a user name and a password.

A real OpenSSH server runs on 127.0.0.1 (a free port, its own host key and
configuration in a temporary directory, started here as root); logging in
as root, libvirt's remote helper (``virt-ssh-helper``, from Debian's
libvirt-daemon) reaches the test bed's daemon through its socket. Only
reads are made there. Cases that fail before the remote helper runs (host key, login, key
file) need no daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from vm_provider_libvirt.login import RSA_OVER_LIBSSH2, Login
from vm_provider_libvirt.settings import LibvirtSettings
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.sshd import PASSPHRASE, SharedSshd, free_port, keygen, skip_without_sshd
from vmp_testplugins.testbed import libvirtd_socket

from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.testing import ProviderHarness


class Sshd(SharedSshd):
    """The shared test server (:mod:`vmp_testplugins.sshd`) with this
    backend's settings for it."""

    def settings(self, known_hosts: Path, key: Path | None = None, **more: Any) -> dict[str, Any]:
        """Backend settings as VirtRigaud's Secret gives them: the URI names no user."""
        sock = libvirtd_socket()  # the test bed's own daemon, never the machine's
        return {
            "uri": f"qemu+ssh://127.0.0.1:{self.port}/system" + (f"?socket={sock}" if sock else ""),
            "username": "root",
            "ssh_key_file": str(key or self.client_key),
            "ssh_known_hosts_file": str(known_hosts),
            "domain_type": "qemu",
            "reconnect_attempts": 1,
            **more,
        }


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    skip_without_sshd()
    server = Sshd(tmp_path)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


def validate(settings: dict[str, Any]) -> pb.ValidateResponse:
    with ProviderHarness.for_backend("libvirt", settings) as h:
        return h.stub.Validate(pb.ValidateRequest(), timeout=60)


def unchanged(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# -- through the real daemon ------------------------------------------------------------------


@pytest.mark.libvirtd
def test_key_and_known_hosts_reach_libvirt_over_one_connection(sshd: Sshd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vm_provider_libvirt")
    known = sshd.known_hosts("known_hosts")
    before = unchanged(known)
    with ProviderHarness.for_backend("libvirt", sshd.settings(known)) as h:
        report = h.stub.Validate(pb.ValidateRequest(), timeout=60)
        assert report.ok, report.message
        assert f"qemu+ssh://127.0.0.1:{sshd.port}/system" in report.message  # the URI as configured
        listed = h.stub.ListVMs(pb.ListVMsRequest(), timeout=60)
        for vm in list(listed.vms)[:3]:
            assert h.stub.Describe(pb.DescribeRequest(id=vm.id), timeout=60).exists
        for _ in range(5):
            h.stub.ListVMs(pb.ListVMsRequest(), timeout=60)
    # One SSH login served every call (the connection is kept, not made per call).
    assert sshd.logins() == 1
    assert unchanged(known) == before
    assert f"connected to libvirt at qemu+ssh://127.0.0.1:{sshd.port}/system" in caplog.text
    assert "keyfile" not in caplog.text
    assert "known_hosts_verify" not in caplog.text


@pytest.mark.libvirtd
def test_password_unlocks_an_encrypted_key(sshd: Sshd) -> None:
    known = sshd.known_hosts("known_hosts")
    report = validate(sshd.settings(known, sshd.locked_key, password=PASSPHRASE + "\n"))
    assert report.ok, report.message

    report = validate(sshd.settings(known, sshd.locked_key))
    assert not report.ok
    assert "SSH login refused" in report.message
    assert "setting password gives its passphrase" in report.message

    report = validate(sshd.settings(known, sshd.locked_key, password="not the passphrase"))
    assert not report.ok
    assert "ssh_key_file" in report.message
    assert str(sshd.locked_key) in report.message
    assert "not the passphrase" not in report.message


@pytest.mark.libvirtd
def test_hashed_known_hosts_entries_work(sshd: Sshd) -> None:
    known = sshd.known_hosts("known_hosts")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")  # ssh-keyscan -H writes them so
    report = validate(sshd.settings(known))
    assert report.ok, report.message


# -- refused before anything reaches libvirt ---------------------------------------------------


def test_a_host_missing_from_known_hosts_is_refused_and_not_added(sshd: Sshd) -> None:
    # The file lists another host with this very key: still not this host.
    known = sshd.known_hosts("known_hosts", host="127.0.0.2")
    before = unchanged(known)
    with ProviderHarness.for_backend("libvirt", sshd.settings(known)) as h:
        report = h.stub.Validate(pb.ValidateRequest(), timeout=60)
        assert not report.ok
        assert "ssh_known_hosts_file" in report.message
        assert str(known) in report.message
        assert "never added" in report.message
        with pytest.raises(grpc.RpcError) as failed:
            h.stub.ListVMs(pb.ListVMsRequest(), timeout=60)
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert unchanged(known) == before
    assert sshd.logins() == 0


def test_an_empty_known_hosts_trusts_nothing(sshd: Sshd) -> None:
    known = sshd.dir / "empty"
    known.write_text("")
    report = validate(sshd.settings(known))
    assert not report.ok
    assert "ssh_known_hosts_file" in report.message
    assert known.read_text() == ""
    assert sshd.logins() == 0


def test_a_different_host_key_is_refused(sshd: Sshd) -> None:
    impostor = keygen(sshd.dir / "impostor")
    known = sshd.known_hosts("known_hosts", key=impostor)  # what the file says this host's key is
    before = unchanged(known)
    report = validate(sshd.settings(known))
    assert not report.ok
    assert "differs" in report.message
    assert "ssh_known_hosts_file" in report.message
    assert unchanged(known) == before
    assert sshd.logins() == 0


def test_a_key_the_host_does_not_accept_is_refused_without_secrets(sshd: Sshd, caplog: pytest.LogCaptureFixture) -> None:
    known = sshd.known_hosts("known_hosts")
    settings = sshd.settings(known, sshd.stranger_key, password="hunter2-secret")
    with ProviderHarness.for_backend("libvirt", settings) as h:
        report = h.stub.Validate(pb.ValidateRequest(), timeout=60)
        with pytest.raises(grpc.RpcError) as failed:
            h.stub.ListVMs(pb.ListVMsRequest(), timeout=60)
    assert not report.ok
    assert "SSH login refused" in report.message
    assert "ssh_key_file" in report.message
    assert "user root" in report.message
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    key_text = sshd.stranger_key.read_text()
    blob = key_text.splitlines()[1]
    for text in (report.message, str(failed.value.details()), caplog.text):
        assert "hunter2-secret" not in text
        assert blob not in text
        assert "Traceback" not in text


def test_an_rsa_key_refused_over_libssh2_says_why(sshd: Sshd) -> None:
    """The host accepts this RSA key, but libssh2 1.10 (Debian 12) offers
    only SHA-1 signatures, which OpenSSH 9.2 refuses: the error says what to
    do instead."""
    report = validate(sshd.settings(sshd.known_hosts("known_hosts"), sshd.rsa_key))
    assert not report.ok
    if "SSH login refused" not in report.message:
        pytest.skip(f"this libssh2 logs in with RSA keys: {report.message}")
    assert RSA_OVER_LIBSSH2 in report.message


def test_a_key_file_that_is_missing_names_the_setting(sshd: Sshd) -> None:
    known = sshd.known_hosts("known_hosts")
    report = validate(sshd.settings(known, sshd.dir / "nothing-here"))
    assert not report.ok
    assert report.message.count("\n") == 0
    assert "setting ssh_key_file: cannot read" in report.message
    assert "No such file" in report.message
    assert sshd.logins() == 0


def test_an_unreadable_key_file_is_one_line_at_start(tmp_path: Path) -> None:
    """As in VirtRigaud's pod, where the process cannot read a key mounted
    for another user: the server (a real process, root without the
    capability to bypass file permissions) says so in one line, and Validate
    tells the same."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_missing("needs root and setpriv (util-linux) to drop the file-permission capabilities")
    key = tmp_path / "ssh-privatekey"
    keygen(key)
    os.chown(key, 65532, 65532)
    key.chmod(0o600)
    known = tmp_path / "known_hosts"
    known.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VM_PROVIDER_")}
    env.update(
        XDG_STATE_HOME=str(tmp_path / "state"),
        VM_PROVIDER_LIBVIRT_URI=f"qemu+ssh://vmp@127.0.0.1:{free_port()}/system",
        VM_PROVIDER_LIBVIRT_SSH_KEY_FILE=str(key),
        VM_PROVIDER_LIBVIRT_SSH_KNOWN_HOSTS_FILE=str(known),
    )
    exe = Path(sys.executable).with_name("vm-provider")
    argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", str(exe), "--backend", "libvirt"]
    proc = subprocess.Popen([*argv, "--listen", "127.0.0.1:0"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            lines.append(line)
            if "serving provider.v1.Provider on 127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split()[0])
                break
        assert port, "".join(lines)
        failure = [line for line in lines if "cannot connect" in line]
        assert len(failure) == 1, "".join(lines)
        assert f"setting ssh_key_file: cannot read {key}: Permission denied" in failure[0]
        assert "at qemu+ssh://***@127.0.0.1:" in "".join(lines)  # the start line masks the user
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            report = pb_grpc.ProviderStub(channel).Validate(pb.ValidateRequest(), timeout=30)
        assert not report.ok
        assert "\n" not in report.message
        assert f"setting ssh_key_file: cannot read {key}: Permission denied" in report.message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


# -- the URI libvirt is given -------------------------------------------------------------------


def target(**settings: Any) -> str:
    return Login.of(LibvirtSettings(**settings)).target


def test_without_credentials_the_uri_is_opened_as_written() -> None:
    for uri in ("qemu+ssh://kvm1/system", "qemu:///system", "qemu+tls://kvm1/system", "test:///default"):
        assert target(uri=uri) == uri


def test_an_ssh_uri_with_credentials_moves_to_libssh_with_verification() -> None:
    uri = target(
        uri="qemu+ssh://kvm1:2222/system",
        username="vmp",
        ssh_key_file="/etc/virtrigaud/credentials/ssh-privatekey",
        ssh_known_hosts_file="/etc/virtrigaud/credentials/known_hosts",
    )
    assert uri == (
        "qemu+libssh2://vmp@kvm1:2222/system?keyfile=/etc/virtrigaud/credentials/ssh-privatekey"
        "&known_hosts=/etc/virtrigaud/credentials/known_hosts&known_hosts_verify=normal&sshauth=privkey"
    )


def test_the_uri_keeps_what_it_says() -> None:
    uri = target(
        uri="qemu+libssh2://admin@kvm1/system?sshauth=privkey&keyfile=/k",
        username="vmp",
        ssh_key_file="/other",
        ssh_known_hosts_file="/kh",
        password="secret",
    )
    assert uri == "qemu+libssh2://admin@kvm1/system?sshauth=privkey&keyfile=/k&known_hosts=/kh&known_hosts_verify=normal"
    assert "secret" not in uri


def test_a_password_allows_password_logins_but_never_enters_the_uri() -> None:
    uri = target(uri="qemu+ssh://kvm1/system", password="s3cret\n", ssh_known_hosts_file="/kh")
    assert uri == "qemu+libssh2://kvm1/system?known_hosts=/kh&known_hosts_verify=normal&sshauth=password,keyboard-interactive"


def test_a_username_alone_only_names_the_user() -> None:
    assert target(uri="qemu+ssh://kvm1/system", username="vmp\n") == "qemu+ssh://vmp@kvm1/system"
    assert target(uri="qemu+ssh://root@kvm1/system", username="vmp") == "qemu+ssh://root@kvm1/system"
    assert target(uri="qemu+tls://kvm1/system", username="vmp") == "qemu+tls://kvm1/system"  # SASL asks for it


def test_credential_keys_name_settings() -> None:
    fields = LibvirtSettings.model_fields
    for key, name in LibvirtSettings.credential_keys.items():
        assert name in fields, key
    assert json.dumps(sorted(LibvirtSettings.credential_keys)) == json.dumps(
        ["known_hosts", "password", "ssh-privatekey", "username"]
    )


def test_host_key_checks_turned_off_in_the_uri_are_kept_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="vm_provider_libvirt")
    uri = target(uri="qemu+ssh://kvm1/system?known_hosts_verify=ignore", ssh_key_file="/k")
    assert uri == "qemu+libssh2://kvm1/system?known_hosts_verify=ignore&keyfile=/k&sshauth=privkey"
    assert "turns off SSH host key checks" in caplog.text
