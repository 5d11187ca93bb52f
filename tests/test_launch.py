"""The real ``vm-provider`` command launched as VirtRigaud's manager launches
it: ``--port`` and ``--health-port``, its ``PROVIDER_*``, ``TLS_*`` and
``LOG_*`` variables, a credentials directory laid out as a mounted
Kubernetes Secret, HTTP ``/healthz`` and ``/readyz``, JSON logs."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, SecretStr

from provider_core import BackendSettings, launch, plugins
from provider_core.errors import ConfigError
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc

pytestmark = pytest.mark.needs_test_plugins

Run = Callable[..., Any]
TOKEN_ID = "vmp@pve!ci"
TOKEN_SECRET = "5ecret-t0ken-in-a-file"
PVE = "https://127.0.0.1:8006"
LAUNCHED_DEFAULT = "default when launched by VirtRigaud (PROVIDER_TYPE is set)"


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH: status and body (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def until(port: int, path: str, status: int, timeout: float = 15.0) -> str:
    """Poll until ``path`` answers ``status``; its body."""
    end = time.monotonic() + timeout
    while True:
        try:
            got, body = http_get(port, path)
        except (urllib.error.URLError, ConnectionError):
            got, body = 0, ""
        if got == status:
            return body
        assert time.monotonic() < end, f"{path} still answers {got} {body!r}, not {status}"
        time.sleep(0.05)


def secret_dir(root: Path, files: dict[str, str]) -> Path:
    """A directory laid out as the kubelet mounts a Secret: the files in a
    timestamped directory, ``..data`` linking to it, each key a link
    through ``..data``."""
    root.mkdir()
    stamped = root / "..2026_12_03_10_00_00.123456789"
    stamped.mkdir()
    for key, text in files.items():
        (stamped / key).write_text(text)
        (root / key).symlink_to(Path("..data") / key)
    (root / "..data").symlink_to(stamped.name)
    return root


def launched(**extra: str) -> dict[str, str]:
    env = {
        "PROVIDER_TYPE": "libvirt",
        "PROVIDER_ENDPOINT": "test:///default",
        "PROVIDER_NAMESPACE": "virtrigaud-system",
        "PROVIDER_NAME": "kvm-lab",
        "TLS_ENABLED": "false",
        "VIRTRIGAUD_PROVIDER_INSECURE": "true",  # what the manager sets with TLS off
        "TLS_INSECURE_SKIP_VERIFY": "false",
        "VM_PROVIDER_SERVER_DRAIN_DELAY": "0",
    }
    env.update(extra)
    return env


def test_launched_without_tls_files_refuses_to_start_unless_insecure(cli: Any) -> None:
    """Launched by VirtRigaud, the provider wants /etc/virtrigaud/tls; with
    no files there it starts only with the manager's explicit opt-out."""
    env = launched()
    del env["VIRTRIGAUD_PROVIDER_INSECURE"]
    done = cli("serve", env=env)
    assert done.returncode == 2
    assert "require_tls: tls_dir /etc/virtrigaud/tls holds none of tls.crt, tls.key, ca.crt" in done.stderr
    assert "VIRTRIGAUD_PROVIDER_INSECURE=true" in done.stderr
    assert "Traceback" not in done.stderr
    shown = cli("config", env=launched())
    assert shown.returncode == 0, shown.stderr
    assert "require_tls = false" in shown.stdout


# -- serving, as launched ------------------------------------------------------------


def test_launched_on_libvirt_serves_grpc_and_the_http_probes(serve: Callable[..., Any]) -> None:
    served = serve("--port=0", "--health-port=0", env=launched())
    started = served.started()
    assert started["host"] == "[::]"
    assert (started["backend"], started["endpoint"]) == ("libvirt", "test:///default")
    health_port = int(started["health_port"])
    assert "launched by VirtRigaud as provider virtrigaud-system/kvm-lab (PROVIDER_TYPE)" in served.text
    assert http_get(health_port, "/healthz") == (200, "ok\n")
    assert http_get(health_port, "/readyz") == (200, "ready\n")
    assert http_get(health_port, "/nothing")[0] == 404
    check = health_pb2_grpc.HealthStub(served.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert pb_grpc.ProviderStub(served.channel).GetCapabilities(pb.GetCapabilitiesRequest(), timeout=5).supports_snapshots
    served.proc.send_signal(signal.SIGTERM)
    assert served.exit_status() == 0
    with pytest.raises(urllib.error.URLError):
        http_get(health_port, "/healthz")


def test_readyz_answers_503_while_draining_and_healthz_200(serve: Callable[..., Any]) -> None:
    env = launched(PROVIDER_TYPE="memory", VM_PROVIDER_SERVER_DRAIN_DELAY="3")
    del env["PROVIDER_ENDPOINT"]
    served = serve("--port=0", "--health-port=0", env=env)
    port = int(served.started()["health_port"])
    assert http_get(port, "/readyz") == (200, "ready\n")
    served.proc.send_signal(signal.SIGTERM)
    served.wait_for("signal received: draining")
    status, body = http_get(port, "/readyz")
    assert (status, body) == (503, "not ready: draining: the provider is stopping\n")
    assert http_get(port, "/healthz") == (200, "ok\n")
    # gRPC calls are still served during the drain delay: readiness moved first.
    assert not pb_grpc.ProviderStub(served.channel).Describe(pb.DescribeRequest(id="x"), timeout=5).exists
    assert served.exit_status() == 0


def test_readyz_follows_the_backend_connection(serve: Callable[..., Any], tmp_path: Path) -> None:
    down = tmp_path / "down"
    down.write_text("")
    env = launched(
        PROVIDER_TYPE="memory",
        VM_PROVIDER_MEMORY_FAIL_CONNECT_FILE=str(down),
        VM_PROVIDER_SERVER_HEALTH_INTERVAL="0.1",
    )
    del env["PROVIDER_ENDPOINT"]
    served = serve("--port=0", "--health-port=0", env=env)
    port = int(served.started()["health_port"])
    assert http_get(port, "/readyz") == (503, "not ready: backend memory is not connected\n")
    assert http_get(port, "/healthz") == (200, "ok\n")
    down.unlink()
    until(port, "/readyz", 200)
    down.write_text("")
    assert until(port, "/readyz", 503) == "not ready: backend memory is not connected\n"
    assert http_get(port, "/healthz") == (200, "ok\n")


@pytest.mark.parametrize("secret", [TOKEN_SECRET, "not-the-token"])
def test_launched_on_proxmox_logs_in_with_the_secrets_files(
    serve: Callable[..., Any], tmp_path: Path, fakepve: Any, fakepve_cafile: str, secret: str
) -> None:
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    creds = secret_dir(tmp_path / "credentials", {"token_id": TOKEN_ID + "\n", "token_secret": secret + "\n", "ca.crt": "x"})
    env = launched(
        PROVIDER_TYPE="proxmox",
        PROVIDER_ENDPOINT=fakepve.url,
        VM_PROVIDER_SERVER_CREDENTIALS_DIR=str(creds),
        VM_PROVIDER_PROXMOX_CA_FILE=fakepve_cafile,
        LOG_LEVEL="debug",
    )
    served = serve("--port=0", "--health-port=0", env=env)
    started = served.started()
    assert (started["backend"], started["endpoint"]) == ("proxmox", fakepve.url)
    port = int(started["health_port"])
    if secret == TOKEN_SECRET:
        assert http_get(port, "/readyz") == (200, "ready\n")
        listed = pb_grpc.ProviderStub(served.channel).ListVMs(pb.ListVMsRequest(), timeout=10)
        assert list(listed.vms) == []
    else:
        assert http_get(port, "/readyz") == (503, "not ready: backend proxmox is not connected\n")
    assert f"credentials: ignoring {creds / 'ca.crt'}: backend proxmox takes no such key" in served.text
    assert " DEBUG " in served.text
    served.proc.send_signal(signal.SIGTERM)
    assert served.exit_status() == 0
    assert secret not in served.text


# -- logs ----------------------------------------------------------------------------


def test_json_logs_are_one_object_a_line_with_exceptions(serve: Callable[..., Any], tmp_path: Path) -> None:
    crash = tmp_path / "crash"
    crash.write_text("crash")  # the memory backend's connect() then raises an untranslated error
    env = launched(PROVIDER_TYPE="memory", LOG_FORMAT="json", VM_PROVIDER_MEMORY_FAIL_CONNECT_FILE=str(crash))
    del env["PROVIDER_ENDPOINT"]
    served = serve("--port=0", "--health-port=0", env=env)
    found = served.wait_for(r'"message":"serving provider\.v1\.Provider on .*; health http on [^\s"]+:(\d+)"')
    until(int(found[1]), "/healthz", 200)
    served.proc.send_signal(signal.SIGTERM)
    assert served.exit_status() == 0
    records = [json.loads(line) for line in served.log]
    assert records, "nothing was logged"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert time.strptime(record["time"][:19], "%Y-%m-%dT%H:%M:%S")
    assert {r["level"] for r in records} >= {"INFO", "ERROR"}
    (failure,) = [r for r in records if "exception" in r]
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert "ConnectionRefusedError" in failure["exception"]
    assert any(r["message"].startswith("launched by VirtRigaud as provider virtrigaud-system/kvm-lab") for r in records)


@pytest.mark.parametrize("level", ["error", "ERROR"])
def test_log_level_error_keeps_the_start_quiet(serve: Callable[..., Any], level: str) -> None:
    port = free_port()
    served = serve("--port=0", f"--health-port={port}", env=launched(LOG_LEVEL=level))
    until(port, "/readyz", 200)
    served.proc.send_signal(signal.SIGTERM)
    assert served.exit_status() == 0
    assert served.text == ""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the settings: origins, precedence, conflicts ------------------------------------


def setting(output: str, name: str) -> tuple[str, str]:
    """``(value, origin)`` of ``name`` in ``vm-provider config``'s output."""
    for line in output.splitlines():
        if line.startswith(f"{name} = "):
            value, _, origin = line.partition("  # ")
            return value.removeprefix(f"{name} = ").strip(), origin.strip()
    raise AssertionError(f"{name} not in:\n{output}")


def test_config_shows_where_launched_settings_come_from(cli: Run, tmp_path: Path) -> None:
    creds = secret_dir(tmp_path / "credentials", {"token_id": TOKEN_ID, "token_secret": TOKEN_SECRET + "\n"})
    env = launched(PROVIDER_TYPE="proxmox", PROVIDER_ENDPOINT=PVE, VM_PROVIDER_SERVER_CREDENTIALS_DIR=str(creds))
    result = cli("config", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert setting(out, "backend") == ('"proxmox"', "PROVIDER_TYPE")
    assert setting(out, "endpoint") == (f'"{PVE}"', "PROVIDER_ENDPOINT")
    assert setting(out, "token_id") == (f'"{TOKEN_ID}"', f"credentials {creds / 'token_id'}")
    assert setting(out, "token_secret") == ('"********"', f"credentials {creds / 'token_secret'}")
    assert setting(out, "listen") == ('"[::]:9443"', LAUNCHED_DEFAULT)
    assert setting(out, "health_port") == ("8080", LAUNCHED_DEFAULT)
    assert setting(out, "verify_tls") == ("true", "default")
    assert TOKEN_SECRET not in out + result.stderr

    flagged = cli(
        "config", "--port=9555", "--health-port=8181", env={**env, "TLS_INSECURE_SKIP_VERIFY": "true", "LOG_LEVEL": "warn"}
    )
    assert flagged.returncode == 0, flagged.stderr
    assert setting(flagged.stdout, "listen") == ('"[::]:9555"', "--port 9555")
    assert setting(flagged.stdout, "health_port") == ("8181", "--health-port")
    assert setting(flagged.stdout, "verify_tls") == ("false", "TLS_INSECURE_SKIP_VERIFY=true")
    assert setting(flagged.stdout, "log_level") == ('"WARNING"', "LOG_LEVEL")


def test_the_credentials_directory_sits_below_the_environment_and_the_file(cli: Run, tmp_path: Path) -> None:
    creds = secret_dir(tmp_path / "credentials", {"token_id": TOKEN_ID, "token_secret": TOKEN_SECRET})
    env = launched(PROVIDER_TYPE="proxmox", PROVIDER_ENDPOINT=PVE, VM_PROVIDER_SERVER_CREDENTIALS_DIR=str(creds))
    by_env = cli("config", env={**env, "VM_PROVIDER_PROXMOX_TOKEN_ID": "other@pve!env"})
    assert setting(by_env.stdout, "token_id") == ('"other@pve!env"', "VM_PROVIDER_PROXMOX_TOKEN_ID")
    by_file = cli("config", env=env, config='[backends.proxmox]\ntoken_id = "other@pve!file"\n')
    assert setting(by_file.stdout, "token_id") == ('"other@pve!file"', str(tmp_path / "plugins.toml"))
    assert setting(by_file.stdout, "token_secret") == ('"********"', f"credentials {creds / 'token_secret'}")


def test_without_provider_type_virtrigauds_variables_change_nothing(cli: Run) -> None:
    env = {"LOG_LEVEL": "nonsense", "LOG_FORMAT": "xml", "TLS_INSECURE_SKIP_VERIFY": "true", "TLS_ENABLED": "true"}
    result = cli("config", "--backend", "memory", env=env)
    assert result.returncode == 0, result.stderr
    assert setting(result.stdout, "listen") == ('"127.0.0.1:50051"', "default")
    assert setting(result.stdout, "log_level") == ('"INFO"', "default")
    assert "# credentials_dir: not set" in result.stdout


def test_agreeing_variables_are_no_conflict(cli: Run) -> None:
    env = launched(VM_PROVIDER_BACKEND="libvirt", VM_PROVIDER_LIBVIRT_URI="test:///default")
    result = cli("config", env=env)
    assert result.returncode == 0, result.stderr
    assert setting(result.stdout, "uri") == ('"test:///default"', "VM_PROVIDER_LIBVIRT_URI")
    proxmox = launched(
        PROVIDER_TYPE="proxmox",
        PROVIDER_ENDPOINT=PVE,
        TLS_INSECURE_SKIP_VERIFY="true",
        VM_PROVIDER_PROXMOX_VERIFY_TLS="0",
        VM_PROVIDER_PROXMOX_TOKEN_ID=TOKEN_ID,
        VM_PROVIDER_PROXMOX_TOKEN_SECRET=TOKEN_SECRET,
    )
    result = cli("config", env=proxmox)
    assert result.returncode == 0, result.stderr
    assert setting(result.stdout, "verify_tls") == ("false", "VM_PROVIDER_PROXMOX_VERIFY_TLS")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"VM_PROVIDER_BACKEND": "memory"}, "VM_PROVIDER_BACKEND=memory and PROVIDER_TYPE=libvirt disagree: keep one"),
        (
            (),
            {"VM_PROVIDER_LIBVIRT_URI": "qemu:///system"},
            "VM_PROVIDER_LIBVIRT_URI and PROVIDER_ENDPOINT disagree ('qemu:///system' and 'test:///default'): keep one",
        ),
        ((), {"PROVIDER_TYPE": ""}, "PROVIDER_ENDPOINT is set but PROVIDER_TYPE is not"),
        ((), {"PROVIDER_TYPE": "memory"}, "PROVIDER_ENDPOINT is set but backend memory has no endpoint setting"),
        (("--listen", "127.0.0.1:1", "--port", "2"), {}, "--listen 127.0.0.1:1 and --port 2 both name the address: keep one"),
        (
            (),
            {"LOG_LEVEL": "debug", "VM_PROVIDER_SERVER_LOG_LEVEL": "ERROR"},
            "VM_PROVIDER_SERVER_LOG_LEVEL and LOG_LEVEL disagree",
        ),
        ((), {"LOG_LEVEL": "loud"}, "log_level: must be debug, info, warn (warning), error or critical (from LOG_LEVEL)"),
        ((), {"LOG_FORMAT": "xml"}, "log_format: Input should be 'text' or 'json' (from LOG_FORMAT)"),
        ((), {"TLS_INSECURE_SKIP_VERIFY": "true"}, "TLS_INSECURE_SKIP_VERIFY=true but backend libvirt has no verify_tls setting"),
        ((), {"TLS_INSECURE_SKIP_VERIFY": "maybe"}, "TLS_INSECURE_SKIP_VERIFY='maybe': must be true or false"),
        ((), {"TLS_ENABLED": "true"}, "TLS_ENABLED=true but the server has no TLS certificate"),
        ((), {"VM_PROVIDER_SERVER_CREDENTIALS_DIR": "/nonexistent/creds"}, "credentials_dir /nonexistent/creds does not exist"),
    ],
)
def test_contradictions_and_bad_values_are_refused_in_one_line(
    cli: Run, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = cli("config", *args, env=launched(**env))
    assert result.returncode == 2, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vm-provider: error: ")
    assert message in lines[0]


def test_serve_refuses_a_taken_health_port(serve: Callable[..., Any], cli: Run, tmp_path: Path) -> None:
    first = serve("--port=0", "--health-port=0", env=launched())
    port = int(first.started()["health_port"])
    result = cli("--port=0", f"--health-port={port}", env=launched(VM_PROVIDER_SERVER_STATE_DIR=str(tmp_path / "second")))
    assert result.returncode == 2
    why = "another process listens on it; set health_port (--health-port)"
    assert result.stderr.splitlines() == [f"vm-provider: error: cannot serve health checks on port {port}: {why}"]


# -- the credentials directory and the declarations, in-process ----------------------


class KeyedSettings(BackendSettings):
    credential_keys: ClassVar[dict[str, str]] = {"ssh-privatekey": "ssh_key", "password": "password"}
    ssh_key: Path | None = None
    password: SecretStr | None = None
    other: str = ""


def test_a_path_setting_gets_the_files_path_and_others_its_content(tmp_path: Path) -> None:
    creds = secret_dir(tmp_path / "c", {"ssh-privatekey": "KEY\n", "password": "two lines\n\n", "username": "u"})
    found = launch.credentials(creds, KeyedSettings, "keyed", required=True)
    assert found == {
        "ssh_key": (creds / "ssh-privatekey", f"credentials {creds / 'ssh-privatekey'}"),
        "password": ("two lines\n", f"credentials {creds / 'password'}"),
    }
    assert launch.credentials(tmp_path / "missing", KeyedSettings, "keyed", required=False) == {}
    with pytest.raises(ConfigError, match="does not exist"):
        launch.credentials(tmp_path / "missing", KeyedSettings, "keyed", required=True)


def test_declarations_must_name_settings() -> None:
    from vmp_testplugins.memory import MemoryBackend, MemorySettings

    class Misnamed(MemorySettings):
        credential_keys: ClassVar[dict[str, str]] = {"token": "tokn"}

    class Backend(MemoryBackend):
        Settings = Misnamed

    with pytest.raises(ConfigError, match="credential key 'token' fills 'tokn', which is no setting of Misnamed"):
        plugins.check_backend_class("misnamed", Backend)

    class NoEndpoint(MemorySettings):
        endpoint_settings: ClassVar[tuple[str, ...] | None] = ("host",)

    Backend.Settings = NoEndpoint
    with pytest.raises(ConfigError, match="endpoint setting 'host', which is no setting of NoEndpoint"):
        plugins.check_backend_class("misnamed", Backend)


def test_provider_endpoint_fills_the_conventional_endpoint_setting() -> None:
    class Plain(BaseModel):
        uri: str = "x"

    assert launch.Launch({"PROVIDER_TYPE": "p", "PROVIDER_ENDPOINT": "y"}).backend_aliases("p", Plain) == {
        "uri": ("y", "PROVIDER_ENDPOINT")
    }
    assert launch.Launch({"PROVIDER_ENDPOINT": "y"}).backend_aliases("p", Plain) == {}


def test_launched_with_tls_files_named_one_by_one(cli: Any, pki: Any) -> None:
    """The launched tls_dir default gives way to TLS files named one by one."""
    env = launched(
        VM_PROVIDER_SERVER_TLS_CERT=str(pki.server_cert),
        VM_PROVIDER_SERVER_TLS_KEY=str(pki.server_key),
        VM_PROVIDER_SERVER_TLS_CLIENT_CA=str(pki.ca),
    )
    del env["VIRTRIGAUD_PROVIDER_INSECURE"]
    shown = cli("config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "# tls_dir: not set" in shown.stdout
    assert f'tls_cert = "{pki.server_cert}"' in shown.stdout
    assert "require_tls = true" in shown.stdout


def test_virtrigaud_variables_sit_beside_the_environment(cli: Any) -> None:
    """VIRTRIGAUD_PROVIDER_INSECURE=true against VM_PROVIDER_SERVER_REQUIRE_TLS=true is a contradiction."""
    env = launched(VM_PROVIDER_SERVER_REQUIRE_TLS="true")
    done = cli("config", env=env)
    assert done.returncode == 2
    assert "VIRTRIGAUD_PROVIDER_INSECURE" in done.stderr
    assert "VM_PROVIDER_SERVER_REQUIRE_TLS" in done.stderr
