"""Settings behave as documented: flag > environment > file > default;
unknown tables, keys and variables are refused naming the nearest valid
name; lists and tables from the environment as JSON; ambiguous pairs
refused; ``vm-provider config`` shows the result and where each value came
from, secrets masked."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, Field, SecretStr
from vmp_testplugins.skips import missing

from provider_core import config
from provider_core.errors import ConfigError

pytestmark = pytest.mark.needs_test_plugins

Run = Callable[..., subprocess.CompletedProcess[str]]


def shown(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """``vm-provider config``'s lines as key -> (value, origin), by table."""
    assert result.returncode == 0, result.stderr
    table, found = "", {}
    for line in result.stdout.splitlines():
        if line.startswith("["):
            table = line
        elif m := re.match(r"^#? ?(\w+)(?: = |: )(.*?)\s+# (.*)$", line):
            found[f"{table}{m[1]}"] = (m[2], m[3])
    return found


def failed(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# -- precedence ----------------------------------------------------------------------

LISTEN = "[server]listen"


def test_each_level_of_precedence_for_a_server_setting(cli: Run) -> None:
    file = "[server]\nlisten = '127.0.0.1:1001'\n"
    env = {"VM_PROVIDER_SERVER_LISTEN": "127.0.0.1:1002"}
    assert shown(cli("config", "--backend", "memory"))[LISTEN] == ('"127.0.0.1:50051"', "default")
    assert shown(cli("config", "--backend", "memory", config=file))[LISTEN][0] == '"127.0.0.1:1001"'
    assert shown(cli("config", "--backend", "memory", config=file, env=env))[LISTEN] == (
        '"127.0.0.1:1002"',
        "VM_PROVIDER_SERVER_LISTEN",
    )
    flag = shown(cli("config", "--backend", "memory", "--listen", "127.0.0.1:1003", config=file, env=env))
    assert flag[LISTEN] == ('"127.0.0.1:1003"', "--listen")


def test_each_level_of_precedence_for_the_log_level(cli: Run) -> None:
    file = "[server]\nlog_level = 'ERROR'\n"
    env = {"VM_PROVIDER_SERVER_LOG_LEVEL": "WARNING"}
    key = "[server]log_level"
    assert shown(cli("config", "--backend", "memory"))[key] == ('"INFO"', "default")
    assert shown(cli("config", "--backend", "memory", config=file))[key][0] == '"ERROR"'
    assert shown(cli("config", "--backend", "memory", config=file, env=env))[key][0] == '"WARNING"'
    assert shown(cli("config", "--backend", "memory", "--log-level", "DEBUG", config=file, env=env))[key] == (
        '"DEBUG"',
        "--log-level",
    )


def test_each_level_of_precedence_for_the_backend(cli: Run) -> None:
    file = "[provider]\nbackend = 'memory'\n"
    env = {"VM_PROVIDER_BACKEND": "memory-plus"}
    key = "[provider]backend"
    assert shown(cli("config"))[key] == ('"libvirt"', "default")
    assert shown(cli("config", config=file))[key][0] == '"memory"'
    assert shown(cli("config", config=file, env=env))[key] == ('"memory-plus"', "VM_PROVIDER_BACKEND")
    assert shown(cli("config", "--backend", "sim", config=file, env=env))[key] == ('"sim"', "--backend")


def test_each_level_of_precedence_for_a_backend_setting(cli: Run) -> None:
    file = "[backends.memory]\ndelay_seconds = 1.5\n"
    env = {"VM_PROVIDER_MEMORY_DELAY_SECONDS": "2.5"}
    key = "[backends.memory]delay_seconds"
    assert shown(cli("config", "--backend", "memory"))[key] == ("0.0", "default")
    assert shown(cli("config", "--backend", "memory", config=file))[key][0] == "1.5"
    assert shown(cli("config", "--backend", "memory", config=file, env=env))[key] == ("2.5", "VM_PROVIDER_MEMORY_DELAY_SECONDS")


def test_flags_win_over_the_environment_when_serving(serve: Callable[..., Any]) -> None:
    """The environment names an address this host does not have, and a quiet
    log level: the flags win, so the server starts and says so."""
    env = {"VM_PROVIDER_SERVER_LISTEN": "203.0.113.9:50075", "VM_PROVIDER_SERVER_LOG_LEVEL": "WARNING"}
    served = serve("--backend", "memory", "--listen", "127.0.0.1:0", "--log-level", "DEBUG", env=env)
    started = served.started()
    assert started["host"] == "127.0.0.1"
    assert int(started["port"]) != 50075


# -- unknown names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("backend = 'sim'", "backend is at the top level; it belongs in the [provider] table"),
        ("listen = '127.0.0.1:0'", "listen is at the top level; it belongs in the [server] table"),
        ("[backend.libvirt]\nuri = 'test:///default'", "unknown table [backend.libvirt]; did you mean [backends.libvirt]?"),
        ("[servr]\nlisten = '127.0.0.1:0'", "unknown table [servr]; did you mean [server]?"),
        ("[provider]\nbackends = 'memory'", "[provider] has no setting 'backends'; did you mean 'backend'?"),
        ("[provider]\nbackend = ''", "[provider] backend must be a backend's name"),
        ("[server]\ngrace = 3", "[server] has no setting 'grace'; did you mean 'grace_seconds'?"),
        ("[backends.memory]\ndelay_second = 3", "[backends.memory] has no setting 'delay_second'; did you mean 'delay_seconds'?"),
        ("[backends.memroy]\ndelay_seconds = 3", "[backends.memroy]: no backend 'memroy' is installed; did you mean memory?"),
        ("whatever = 1", "unknown top-level key 'whatever'; valid: [backends], [conformance], [provider], [server]"),
    ],
)
def test_unknown_names_in_the_file(cli: Run, toml: str, fragment: str) -> None:
    failed(cli("--backend", "memory", "--listen", "127.0.0.1:0", config=toml), fragment)


@pytest.mark.parametrize(
    ("variable", "fragment"),
    [
        ("VM_PROVIDER_MEMORY_DELAY_SECOND", "unknown environment variable VM_PROVIDER_MEMORY_DELAY_SECOND; did you mean "),
        (
            "VM_PROVIDER_SERVR_LISTEN",
            "unknown environment variable VM_PROVIDER_SERVR_LISTEN; did you mean VM_PROVIDER_SERVER_LISTEN?",
        ),
        ("VM_PROVIDER_CONFG", "did you mean VM_PROVIDER_CONFIG?"),
        ("VM_PROVIDER_NOSUCH_THING", "unknown environment variable VM_PROVIDER_NOSUCH_THING"),
    ],
)
def test_misspelled_environment_variables(cli: Run, variable: str, fragment: str) -> None:
    failed(cli("--backend", "memory", "--listen", "127.0.0.1:0", env={variable: "1"}), fragment)


def test_a_misspelled_libvirt_variable(cli: Run) -> None:
    failed(
        cli("config", "--backend", "libvirt", env={"VM_PROVIDER_LIBVIRT_URL": "qemu:///system"}),
        "unknown environment variable VM_PROVIDER_LIBVIRT_URL; did you mean VM_PROVIDER_LIBVIRT_URI?",
    )


def test_several_unknown_variables_are_named_at_once(cli: Run) -> None:
    env = {"VM_PROVIDER_SERVER_LISEN": "x", "VM_PROVIDER_MEMORY_BACKGRUND": "true"}
    failed(
        cli("config", "--backend", "memory", env=env),
        "VM_PROVIDER_MEMORY_BACKGRUND (did you mean VM_PROVIDER_MEMORY_BACKGROUND?)",
        "VM_PROVIDER_SERVER_LISEN (did you mean VM_PROVIDER_SERVER_LISTEN?)",
    )


def test_variables_of_other_installed_backends_are_theirs(cli: Run) -> None:
    """One environment may configure several providers: serving memory, the
    libvirt and memory-plus variables are not refused (nor used)."""
    env = {"VM_PROVIDER_LIBVIRT_URI": "qemu:///system", "VM_PROVIDER_MEMORY_PLUS_DELAY_SECONDS": "9"}
    assert shown(cli("config", "--backend", "memory", env=env))["[backends.memory]delay_seconds"] == ("0.0", "default")
    # Serving memory-plus, a typo under its own (longer) prefix is still caught.
    failed(
        cli("config", "--backend", "memory-plus", env={"VM_PROVIDER_MEMORY_PLUS_DELAY_SECOND": "9"}),
        "did you mean VM_PROVIDER_MEMORY_PLUS_DELAY_SECONDS?",
    )


# -- lists and tables from the environment ---------------------------------------------


class Structured(BaseModel):
    names: list[str] = []
    labels: dict[str, str] = {}
    ports: tuple[int, ...] = ()
    maybe: list[str] | None = None
    plain: str = ""


def test_lists_and_tables_from_the_environment_as_json() -> None:
    env = {
        "VM_PROVIDER_X_NAMES": '["a", "b"]',
        "VM_PROVIDER_X_LABELS": '{"team": "infra"}',
        "VM_PROVIDER_X_PORTS": "[22, 443]",
        "VM_PROVIDER_X_MAYBE": '["c"]',
        "VM_PROVIDER_X_PLAIN": '["not parsed"]',
    }
    got = config.resolve(Structured, "x", {}, env).settings
    assert (got.names, got.labels, got.ports, got.maybe) == (["a", "b"], {"team": "infra"}, (22, 443), ["c"])
    assert got.plain == '["not parsed"]'


def test_a_list_from_a_file_is_json_too(tmp_path: Path) -> None:
    (tmp_path / "names.json").write_text('["from", "file"]\n')
    assert config.resolve(Structured, "x", {"names_file": str(tmp_path / "names.json")}, {}).settings.names == ["from", "file"]


def test_json_that_does_not_parse_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^VM_PROVIDER_X_NAMES: not valid JSON \(Expecting value at character 0\); give lists"):
        config.resolve(Structured, "x", {}, {"VM_PROVIDER_X_NAMES": "a,b"})


def test_json_of_the_wrong_shape_names_the_setting_and_origin() -> None:
    with pytest.raises(ConfigError, match=r"labels: Input should be a valid dictionary \(from VM_PROVIDER_X_LABELS\)"):
        config.resolve(Structured, "x", {}, {"VM_PROVIDER_X_LABELS": '["a"]'})


def test_a_sim_list_through_the_real_command(cli: Run) -> None:
    found = shown(cli("config", "--backend", "sim", env={"VM_PROVIDER_SIM_IMAGES": '["debian-13"]'}))
    assert found["[backends.sim]images"] == ('["debian-13"]', "VM_PROVIDER_SIM_IMAGES")


# -- ambiguous pairs -------------------------------------------------------------------


def test_a_setting_and_its_file_in_one_table_are_refused(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    toml = f"[server]\nauth_token = 'inline'\nauth_token_file = '{tmp_path / 'token'}'\n"
    failed(cli("config", "--backend", "memory", config=toml), "[server] sets both auth_token and auth_token_file: keep one")


def test_a_variable_and_its_file_variable_are_refused(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    env = {"VM_PROVIDER_SERVER_AUTH_TOKEN": "x", "VM_PROVIDER_SERVER_AUTH_TOKEN_FILE": str(tmp_path / "token")}
    failed(
        cli("config", "--backend", "memory", env=env),
        "VM_PROVIDER_SERVER_AUTH_TOKEN and VM_PROVIDER_SERVER_AUTH_TOKEN_FILE are both set: keep one",
    )


def test_across_levels_the_higher_one_wins(tmp_path: Path) -> None:
    """auth_token_file in the file and AUTH_TOKEN in the environment are no
    pair: the environment is above the file."""
    (tmp_path / "token").write_text("from-file")
    got = config.resolve(
        config.ServerSettings, "server", {"auth_token_file": str(tmp_path / "token")}, {"VM_PROVIDER_SERVER_AUTH_TOKEN": "env"}
    )
    assert got.settings.auth_token == SecretStr("env")
    assert got.origins["auth_token"] == "VM_PROVIDER_SERVER_AUTH_TOKEN"


# -- vm-provider config ------------------------------------------------------------------


def test_config_shows_every_setting_with_its_origin_and_masks_secrets(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("api-s3cret\n")
    (tmp_path / "token").write_text("tok-s3cret\n")
    toml = f"[server]\nauth_token_file = '{tmp_path / 'token'}'\n\n[backends.bad-settings]\nregion = 'eu'\n"
    env = {"VM_PROVIDER_BAD_SETTINGS_API_KEY_FILE": str(tmp_path / "key")}
    result = cli("config", "--backend", "bad-settings", config=toml, env=env)
    found = shown(result)
    assert found["[server]auth_token"] == ('"********"', f"{tmp_path / 'plugins.toml'}: auth_token_file = {tmp_path / 'token'}")
    assert found["[backends.bad-settings]api_key"] == ('"********"', f"VM_PROVIDER_BAD_SETTINGS_API_KEY_FILE={tmp_path / 'key'}")
    assert found["[backends.bad-settings]region"] == ('"eu"', str(tmp_path / "plugins.toml"))
    assert found["[server]tls_cert"] == ("not set", "default")
    state, origin = found["[server]state_dir"]
    assert Path(state.strip('"')).parent == tmp_path / "xdg-state" / "vm-provider"
    assert origin == "default: backend bad-settings, its settings"
    assert "s3cret" not in result.stdout + result.stderr
    assert set(config.ServerSettings.model_fields) <= {k.removeprefix("[server]") for k in found}


def test_config_masks_a_password_in_a_uri(cli: Run) -> None:
    result = cli("config", "--backend", "libvirt", env={"VM_PROVIDER_LIBVIRT_URI": "qemu+ssh://root:pa55@host/system"})
    assert shown(result)["[backends.libvirt]uri"][0] == '"qemu+ssh://***@host/system"'
    assert "pa55" not in result.stdout
    assert "endpoint qemu+ssh://***@host/system" in shown(result)["[server]state_dir"][1]


def test_config_refuses_what_serve_refuses(cli: Run) -> None:
    failed(
        cli("config", "--backend", "memory", config="[server]\nworkers = 0\n"),
        "workers: Input should be greater than or equal to 1",
    )


# -- messages --------------------------------------------------------------------------


def test_a_whole_model_error_has_no_empty_field_name() -> None:
    settings = pytest.importorskip(
        "vm_provider_proxmox.settings", reason=missing("the proxmox backend is not installed (make setup installs it)")
    )
    with pytest.raises(ConfigError) as info:
        config.resolve(settings.ProxmoxSettings, "proxmox", {"endpoint": "https://pve.example.com:8006"}, {})
    assert str(info.value).startswith("invalid settings [backends.proxmox]: no login configured")


# -- the default state directory -------------------------------------------------------


class Endpointed(BaseModel):
    uri: str = "test:///default"
    pool: str = "default"
    password: SecretStr | None = None


class Declared(BaseModel):
    endpoint_settings: ClassVar[tuple[str, ...]] = ("cluster", "region")
    cluster: str = "a"
    region: str = "eu"
    retries: int = Field(3)


def test_the_default_state_dir_tells_endpoints_apart() -> None:
    env = {"XDG_STATE_HOME": "/var/lib/x"}
    one = config.default_state_dir("libvirt", Endpointed(uri="qemu+ssh://a/system"), env)
    other = config.default_state_dir("libvirt", Endpointed(uri="qemu+ssh://b/system"), env)
    assert one != other
    assert one.parent == Path("/var/lib/x/vm-provider")
    assert re.fullmatch(r"libvirt-[0-9a-f]{8}", one.name)
    # Only the endpoint counts: other settings, secrets included, do not move it.
    same = Endpointed(uri="qemu+ssh://a/system", pool="fast", password=SecretStr("x"))
    assert config.default_state_dir("libvirt", same, env) == one


def test_a_backend_may_say_which_settings_name_its_endpoint() -> None:
    base = config.endpoint_id(Declared())
    assert config.endpoint_id(Declared(retries=9)) == base
    assert config.endpoint_id(Declared(region="us")) != base
    assert config.endpoint(Declared()) == "a, eu"


def test_without_an_endpoint_every_setting_but_secrets_counts() -> None:
    class Plain(BaseModel):
        speed: int = 1
        key: SecretStr = SecretStr("a")

    assert config.endpoint_id(Plain(speed=2)) != config.endpoint_id(Plain())
    assert config.endpoint_id(Plain(key=SecretStr("b"))) == config.endpoint_id(Plain())
    assert config.endpoint(Plain()) == ""


def test_the_server_table_in_the_docs_lists_every_setting() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    section = text[text.index("## The server: `[server]`") :]
    documented = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, flags=re.M):
        documented |= set(re.findall(r"`(\w+)`", row))
    assert documented == set(config.ServerSettings.model_fields)
