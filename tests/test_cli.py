"""The ``vm-provider`` command: a clear message and a non-zero exit for every
bad flag, file or setting; never a traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.needs_test_plugins

Run = Callable[..., subprocess.CompletedProcess[str]]


def _failed_clearly(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", "nosuch", "--listen", "127.0.0.1:0"],
        ["serve", "--backend", "nosuch", "--listen", "127.0.0.1:0"],
        ["--backend", "nosuch", "serve", "--listen", "127.0.0.1:0"],
        ["--backend", "nosuch", "--listen", "127.0.0.1:0", "serve"],
    ],
    ids=["no-subcommand", "after-serve", "before-serve", "all-before-serve"],
)
def test_unknown_backend(cli: Run, args: list[str]) -> None:
    result = cli(*args)
    _failed_clearly(result, "vm-provider: error: unknown backend 'nosuch'; installed backends:", "memory")


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_flag_before_or_after_the_subcommand(cli: Run, tmp_path: Path, where: str) -> None:
    flag = ["--config", str(tmp_path / "absent.toml")]
    _failed_clearly(cli(*flag, "backends") if where == "before" else cli("backends", *flag), "absent.toml does not exist")


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("broken-import", "ImportError"),
        ("ctor-raises", "cannot open /dev/hypervisor0"),
        ("lying", "snapshot_create()"),
        ("undeclared", "clone()"),
        ("refines-orphan", "linked_clones"),
        ("not-a-backend", "not a subclass"),
    ],
)
def test_broken_backends(cli: Run, name: str, cause: str) -> None:
    _failed_clearly(cli("serve", "--backend", name, "--listen", "127.0.0.1:0"), f"backend {name!r}", cause)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--backend"], "argument --backend: expected one argument"),
        (["--log-level", "LOUD"], "invalid choice: 'LOUD'"),
        (["serve", "--listen"], "argument --listen: expected one argument"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["backends", "--backend", "memory"], "unrecognized arguments: --backend"),
    ],
)
def test_bad_flags(cli: Run, args: list[str], fragment: str) -> None:
    result = cli(*args)
    _failed_clearly(result, fragment)
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("[server\nlisten = 1", "is not valid TOML"),
        ("provider = 'memory'", "[provider] must be a table"),
        ("[server]\nlisten = 5", "invalid settings [server]: listen: Input should be a valid string"),
        ("[server]\ncolour = 'blue'", "[server] has no setting 'colour'; valid: "),
        ("[server]\nlisen = '127.0.0.1:0'", "[server] has no setting 'lisen'; did you mean 'listen'?"),
        ("[server]\nworkers = 0", "workers: Input should be greater than or equal to 1"),
        ("[server]\nlog_level = 'LOUD'", "log_level: must be debug, info, warn (warning), error or critical"),
        (
            "[server]\ntls_cert = '/nonexistent/cert.pem'\ntls_key = '/nonexistent/key.pem'",
            "tls_cert: cannot read /nonexistent/cert.pem: No such file or directory",
        ),
        ("[server]\ntls_cert = '/nonexistent/cert.pem'", "TLS needs both tls_cert and tls_key"),
        ("[server]\ntls_client_ca = '/nonexistent/ca.pem'", "tls_client_ca needs tls_cert and tls_key"),
        ("[server]\nauth_token_file = '/nonexistent/token'", "server.auth_token_file: cannot read /nonexistent/token"),
        ("[server]\nlisten = '203.0.113.9:1'", "cannot listen on 203.0.113.9:1"),
        ("[backends.memory]\ndelay = 1", "[backends.memory] has no setting 'delay'; did you mean 'delay_seconds'?"),
        (
            "[backends.memory]\ndelay_seconds = 'slow'",
            "invalid settings [backends.memory]: delay_seconds: Input should be a valid number",
        ),
        ("[backends]\nmemory = 3", "[backends] memory must be a table: [backends.memory]"),
        ("[elsewhere]\nx = 1", "unknown table [elsewhere]; valid: [backends], [conformance], [provider], [server]"),
    ],
)
def test_bad_config_files(cli: Run, config: str, fragment: str) -> None:
    _failed_clearly(cli("--backend", "memory", config=config), fragment)


def test_a_missing_config_file(cli: Run, tmp_path: Path) -> None:
    _failed_clearly(
        cli("--config", str(tmp_path / "absent.toml"), "--backend", "memory"),
        f"config file {tmp_path / 'absent.toml'} does not exist",
    )


def test_config_from_the_environment(cli: Run, tmp_path: Path) -> None:
    result = cli("--backend", "memory", env={"VM_PROVIDER_CONFIG": str(tmp_path / "absent.toml")})
    _failed_clearly(result, "absent.toml does not exist")


def test_a_bad_environment_value(cli: Run) -> None:
    result = cli("--backend", "memory", "--listen", "127.0.0.1:0", env={"VM_PROVIDER_MEMORY_BACKGROUND": "sometimes"})
    _failed_clearly(result, "invalid settings [backends.memory]: background: Input should be a valid boolean")


def test_settings_errors_never_show_secrets(cli: Run) -> None:
    config = "[backends.bad-settings]\nregion = 'eu'\napi_key = 'hunter2'\nretries = 'many'\n"
    result = cli("--backend", "bad-settings", "--listen", "127.0.0.1:0", config=config)
    _failed_clearly(result, "invalid settings [backends.bad-settings]: retries: Input should be a valid integer")
    assert "hunter2" not in result.stderr + result.stdout


def test_a_required_setting(cli: Run) -> None:
    result = cli("--backend", "bad-settings", "--listen", "127.0.0.1:0")
    _failed_clearly(result, "region: Field required", "api_key: Field required")


def test_backends_lists_what_is_installed_with_capabilities(cli: Run) -> None:
    result = cli("backends")
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["memory"] == "(core operations only)"
    assert (
        lines["memory-plus"]
        == "clone, disk_export, disk_import, disk_info, hardware_upgrade, image_prepare, reconfigure, snapshots"
    )
    assert lines["lying"].startswith("BROKEN: backend 'lying' declares capability 'snapshots'")
    assert lines["broken-import"].startswith("BROKEN: backend 'broken-import' failed to load: ImportError")
    # Broken plugins are installed here, so the listing says so in its exit code.
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_help(cli: Run) -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "--backend" in result.stdout
    assert "backends" in result.stdout


@pytest.mark.parametrize(
    ("names", "status", "line"),
    [
        (["memory"], 0, "memory: (core operations only)"),
        (["memory", "memory-plus"], 0, "memory-plus: clone, disk_export"),
        (["memory", "lying"], 1, "lying: BROKEN: backend 'lying' declares capability 'snapshots'"),
        (["memroy"], 1, "memroy: NOT INSTALLED; did you mean memory?"),
    ],
)
def test_backends_named_exit_0_only_when_each_loads(cli: Run, names: list[str], status: int, line: str) -> None:
    """``vm-provider backends NAME...`` checks just those (a container's
    start-up check); broken test plugins elsewhere in this venv do not count."""
    result = cli("backends", *names)
    assert result.returncode == status
    assert any(out.startswith(line) for out in result.stdout.splitlines()), result.stdout
    assert len(result.stdout.splitlines()) == len(names)
