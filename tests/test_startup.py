"""Starting the real ``vm-provider`` command: every failure is one line on
standard error naming the setting or file and what to do, with exit status
2 and no traceback; a start says where it serves, how, and what."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.needs_test_plugins

Run = Callable[..., subprocess.CompletedProcess[str]]
Pki = Any  # the pki fixture's type lives in conftest.py


def one_line_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The failure's only line of output, checked for ``fragments``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("vm-provider: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_memory(cli: Run, server: str = "", *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli("--backend", "memory", *args, config=f"[server]\n{server}\n", env=env)


# -- the state directory ---------------------------------------------------------------


def test_a_state_dir_that_is_a_file(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = serve_memory(cli, f'listen = "127.0.0.1:0"\nstate_dir = "{tmp_path / "afile"}"')
    one_line_failure(result, f"state_dir {tmp_path / 'afile'} is a file, not a directory", "set state_dir")


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_a_state_dir_that_cannot_be_created(cli: Run, tmp_path: Path, where: str) -> None:
    (tmp_path / "afile").write_text("")
    path = tmp_path / "afile" / "state" if where == "under-a-file" else Path("/proc/vm-provider-test/state")
    result = serve_memory(cli, f'listen = "127.0.0.1:0"\nstate_dir = "{path}"')
    one_line_failure(result, f"state_dir {path} cannot be created", "set state_dir (or VM_PROVIDER_SERVER_STATE_DIR)")


def test_a_second_provider_on_one_state_dir_names_the_first_ones_pid(serve: Callable[..., Any], cli: Run, tmp_path: Path) -> None:
    server = f'listen = "127.0.0.1:0"\nstate_dir = "{tmp_path / "shared"}"\ndrain_delay = 0\n'
    first = serve("--backend", "memory", config=f"[server]\n{server}")
    first.started()
    result = serve_memory(cli, server)
    one_line_failure(
        result, f"state_dir {tmp_path / 'shared'} is in use by another vm-provider (process {first.proc.pid})", "its own"
    )


def test_default_state_dirs_tell_endpoints_apart(serve: Callable[..., Any], tmp_path: Path) -> None:
    """Two providers of one backend on one host, each with its own endpoint
    and the default state_dir, both start, each on its own directory."""
    states = set()
    for endpoint in ("test:///default", f"test://{tmp_path}/nowhere.xml"):
        served = serve("--backend", "libvirt", "--listen", "127.0.0.1:0", env={"VM_PROVIDER_LIBVIRT_URI": endpoint})
        started = served.started()
        assert started["endpoint"] == endpoint
        states.add(started["state"])
    assert len(states) == 2
    for state in states:
        assert Path(state).parent == tmp_path / "xdg-state" / "vm-provider"
        assert Path(state).name.startswith("libvirt-")


# -- the port ------------------------------------------------------------------------


def test_a_port_another_process_listens_on_is_refused(serve: Callable[..., Any], cli: Run) -> None:
    port = free_port()
    first = serve("--backend", "memory", "--listen", f"127.0.0.1:{port}", config="[server]\ndrain_delay = 0\n")
    assert int(first.started()["port"]) == port
    result = cli("--backend", "memory", "--listen", f"127.0.0.1:{port}", env={"XDG_STATE_HOME": "/tmp/elsewhere-state"})
    one_line_failure(result, f"cannot listen on 127.0.0.1:{port}: port {port} is in use by another process")
    assert first.proc.poll() is None


def test_sharing_a_port_is_opt_in(serve: Callable[..., Any], tmp_path: Path) -> None:
    port = free_port()
    for i in range(2):
        config = f'[server]\nreuse_port = true\ndrain_delay = 0\nstate_dir = "{tmp_path / f"state-{i}"}"\n'
        served = serve("--backend", "memory", "--listen", f"127.0.0.1:{port}", config=config)
        assert int(served.started()["port"]) == port


def test_an_address_this_host_does_not_have(cli: Run) -> None:
    one_line_failure(cli("--backend", "memory", "--listen", "203.0.113.9:50051"), "203.0.113.9 is not an address of this host")


def test_a_listen_value_that_is_no_address(cli: Run) -> None:
    one_line_failure(cli("--backend", "memory", "--listen", "50051"), "listen '50051' is not HOST:PORT")


# -- TLS -----------------------------------------------------------------------------


def _tls(pki: Pki, cert: Path | None = None, key: Path | None = None, ca: Path | None = None) -> str:
    lines = [f'tls_cert = "{cert or pki.server_cert}"', f'tls_key = "{key or pki.server_key}"', 'listen = "127.0.0.1:0"']
    if ca is not None:
        lines.append(f'tls_client_ca = "{ca}"')
    return "\n".join(lines)


def test_a_key_that_does_not_match_its_certificate(cli: Run, pki: Pki) -> None:
    line = one_line_failure(
        serve_memory(cli, _tls(pki, key=pki.other_key)), f"tls_key {pki.other_key} is not the key of tls_cert {pki.server_cert}"
    )
    assert "bind" not in line.lower()


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"cert": "key"}, "tls_cert {cert} holds no PEM certificate"),
        ({"key": "cert"}, "tls_key {key} holds no PEM private key"),
        ({"ca": "key"}, "tls_client_ca {ca} holds no PEM certificate"),
        ({"cert": "empty"}, "tls_cert {cert} holds no PEM certificate"),
        ({"key": "encrypted"}, "tls_key {key} is encrypted"),
        ({"key": "absent"}, "tls_key: cannot read {key}: No such file or directory"),
    ],
    ids=["cert-is-a-key", "key-is-a-cert", "ca-is-a-key", "empty-cert", "encrypted-key", "absent-key"],
)
def test_tls_files_that_are_not_what_they_should_be(
    cli: Run, pki: Pki, tmp_path: Path, files: dict[str, str], fragment: str
) -> None:
    (tmp_path / "empty.pem").write_text("")
    stand_ins = {
        "key": pki.server_key,
        "cert": pki.server_cert,
        "empty": tmp_path / "empty.pem",
        "encrypted": pki.encrypted_key,
        "absent": tmp_path / "absent.key",
    }
    chosen = {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca}
    chosen |= {role: stand_ins[kind] for role, kind in files.items()}
    result = serve_memory(cli, _tls(pki, chosen["cert"], chosen["key"], chosen["ca"]))
    one_line_failure(result, fragment.format(**chosen))


# -- the bearer token ----------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "  \n\t\n"], ids=["empty", "white-space"])
def test_an_empty_token_file_is_refused(cli: Run, tmp_path: Path, content: str) -> None:
    (tmp_path / "token").write_text(content)
    result = serve_memory(cli, f'listen = "127.0.0.1:0"\nauth_token_file = "{tmp_path / "token"}"')
    one_line_failure(
        result, "auth_token: is empty: an empty token would turn authentication off", f"auth_token_file = {tmp_path}"
    )


def test_an_empty_token_file_named_by_the_environment_is_refused(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    result = serve_memory(cli, 'listen = "127.0.0.1:0"', env={"VM_PROVIDER_SERVER_AUTH_TOKEN_FILE": str(tmp_path / "token")})
    one_line_failure(result, "auth_token: is empty", "(from VM_PROVIDER_SERVER_AUTH_TOKEN_FILE=")


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "white-space"])
def test_an_empty_token_variable_is_refused(cli: Run, value: str) -> None:
    result = serve_memory(cli, 'listen = "127.0.0.1:0"', env={"VM_PROVIDER_SERVER_AUTH_TOKEN": value})
    one_line_failure(result, "auth_token: is empty", "(from VM_PROVIDER_SERVER_AUTH_TOKEN)")


# -- the start line ------------------------------------------------------------------


def test_the_start_line_says_where_how_and_what(serve: Callable[..., Any], tmp_path: Path, pki: Pki) -> None:
    token = "s3cret-start-line-token"
    (tmp_path / "token").write_text(token)
    plain = serve("--backend", "memory", "--listen", "127.0.0.1:0")
    started = plain.started()
    assert (started["host"], started["security"], started["backend"]) == ("127.0.0.1", "plaintext, no token", "memory")
    assert started["endpoint"] is None  # the memory backend has no endpoint
    assert Path(started["state"]).parent == tmp_path / "xdg-state" / "vm-provider"
    assert "WARNING" not in plain.text

    config = f'[server]\n{_tls(pki, ca=pki.ca)}\nauth_token_file = "{tmp_path / "token"}"\nstate_dir = "{tmp_path / "other"}"\n'
    guarded = serve("--backend", "memory", config=config)
    assert guarded.started()["security"] == "mutual TLS 1.3+, SAN allow-list off, token required"
    assert "TLS is off" not in guarded.text
    assert token not in guarded.text


def test_a_token_without_tls_is_warned_about(serve: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token")
    served = serve(
        "--backend", "memory", "--listen", "127.0.0.1:0", env={"VM_PROVIDER_SERVER_AUTH_TOKEN_FILE": str(tmp_path / "token")}
    )
    assert served.started()["security"] == "plaintext, token required"
    warning = served.wait_for("WARNING")
    assert "auth_token is set but TLS is off: the token crosses the network in clear text" in warning.string
    assert "s3cret-token" not in served.text


def test_the_start_line_masks_credentials_in_the_endpoint(serve: Callable[..., Any], tmp_path: Path) -> None:
    """libvirt's test driver with a user and password in its URI (which it ignores)."""
    uri = f"test://admin:hunter2@/{tmp_path}/absent.xml?secret=hunter2"
    served = serve("--backend", "libvirt", "--listen", "127.0.0.1:0", env={"VM_PROVIDER_LIBVIRT_URI": uri})
    started = served.started()
    assert started["endpoint"] == f"test://***@/{tmp_path}/absent.xml?<redacted>"
    assert "hunter2" not in served.text


def test_no_python_warnings_or_core_lines_on_a_clean_start_and_stop(serve: Callable[..., Any]) -> None:
    served = serve("--backend", "memory", "--listen", "127.0.0.1:0", config="[server]\ndrain_delay = 0\n")
    served.started()
    served.proc.terminate()
    assert served.exit_status() == 0
    assert all(" INFO " in line for line in served.log), served.text
