"""plugins.toml tables, environment overrides, ``*_file`` indirection, secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from pydantic import SecretStr

from provider_core import config, plugins
from provider_core.errors import ConfigError
from provider_core.pb import provider_pb2 as pb
from provider_core.testing import ProviderHarness

pytestmark = pytest.mark.needs_test_plugins
_plugins = pytest.importorskip(
    "vmp_testplugins.faulty", reason="the test backends are not installed: pip install -e tests/plugins"
)
BadSettings = _plugins.BadSettings

SECRET = "hunter2-s3cr3t"


def _settings(table: dict[str, object], environ: dict[str, str] | None = None) -> BadSettings:
    backend = plugins.load("bad-settings", table, environ=environ or {})
    assert isinstance(backend.settings, BadSettings)
    return backend.settings


def test_a_backend_table_from_plugins_toml(tmp_path: Path) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text(
        '[provider]\nbackend = "bad-settings"\n\n[server]\nlisten = "127.0.0.1:0"\n\n'
        f'[backends.bad-settings]\nregion = "eu-west"\napi_key = "{SECRET}"\nretries = 5\ndelay_seconds = 0.5\n'
    )
    conf = config.load_file(path)
    assert conf.backend == "bad-settings"
    settings = _settings(conf.backends["bad-settings"])
    assert (settings.region, settings.retries, settings.delay_seconds) == ("eu-west", 5, 0.5)
    assert settings.api_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_the_environment_wins_over_the_file() -> None:
    env = {"VM_PROVIDER_BAD_SETTINGS_REGION": "us-east", "VM_PROVIDER_BAD_SETTINGS_RETRIES": "9"}
    settings = _settings({"region": "eu-west", "api_key": SECRET, "retries": 1}, env)
    assert (settings.region, settings.retries) == ("us-east", 9)


def test_the_environment_alone_configures_a_backend_without_a_table() -> None:
    env = {
        "VM_PROVIDER_BAD_SETTINGS_REGION": "ap",
        "VM_PROVIDER_BAD_SETTINGS_API_KEY": SECRET,
        "VM_PROVIDER_BAD_SETTINGS_BACKGROUND": "true",
    }
    settings = _settings({}, env)
    assert (settings.region, settings.background) == ("ap", True)
    assert settings.api_key.get_secret_value() == SECRET


def test_environment_names_follow_one_rule_for_every_backend() -> None:
    env = {"VM_PROVIDER_MEMORY_DELAY_SECONDS": "0.75", "VM_PROVIDER_MEMORY_PLUS_DELAY_SECONDS": "1.5"}
    assert plugins.load("memory", {}, environ=env).settings.delay_seconds == 0.75  # type: ignore[attr-defined]
    assert plugins.load("memory-plus", {}, environ=env).settings.delay_seconds == 1.5  # type: ignore[attr-defined]


def test_a_setting_from_a_file_named_in_the_toml(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET + "\n")
    settings = _settings({"region": "eu", "api_key_file": str(tmp_path / "key")})
    assert settings.api_key.get_secret_value() == SECRET


def test_a_setting_from_a_file_named_in_the_environment(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET)
    env = {"VM_PROVIDER_BAD_SETTINGS_API_KEY_FILE": str(tmp_path / "key")}
    settings = _settings({"region": "eu", "api_key": "from-the-toml"}, env)
    assert settings.api_key.get_secret_value() == SECRET


def test_the_environment_value_wins_over_a_file_in_the_toml(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-the-file")
    env = {"VM_PROVIDER_BAD_SETTINGS_API_KEY": SECRET}
    settings = _settings({"region": "eu", "api_key_file": str(tmp_path / "key")}, env)
    assert settings.api_key.get_secret_value() == SECRET


def test_a_missing_secret_file_names_the_setting_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bad-settings\.api_key_file: cannot read .*/absent: No such file"):
        _settings({"region": "eu", "api_key_file": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match=r"VM_PROVIDER_BAD_SETTINGS_API_KEY_FILE: cannot read"):
        _settings({"region": "eu"}, {"VM_PROVIDER_BAD_SETTINGS_API_KEY_FILE": str(tmp_path / "absent")})


def test_a_file_key_for_no_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[backends\.bad-settings\] has no setting 'colour_file'"):
        _settings({"region": "eu", "api_key": SECRET, "colour_file": str(tmp_path / "x")})


@pytest.mark.parametrize(
    "table",
    [
        {"region": "eu", "api_key": SECRET, "retries": "many"},
        {"region": 7, "api_key": SECRET},
        {"region": "eu", "api_key": SECRET, "unknown": SECRET},
        {"region": "eu", "api_key": [SECRET]},
    ],
)
def test_secrets_never_appear_in_errors(table: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(table)
    assert "[backends.bad-settings]" in str(info.value)
    assert SECRET not in str(info.value)


def test_secrets_never_appear_in_the_log(
    harness: Callable[..., ProviderHarness], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "key").write_text(SECRET)
    h = harness("bad-settings", {"region": "eu", "api_key_file": str(tmp_path / "key")}, auth_token=SecretStr(SECRET + "-token"))
    stub_calls = [
        lambda: h.stub.Validate(pb.ValidateRequest(), metadata=[("authorization", f"Bearer {SECRET}-token")]),
        lambda: h.stub.Describe(pb.DescribeRequest(id="x"), metadata=[("authorization", f"Bearer {SECRET}-wrong")]),
    ]
    stub_calls[0]()
    with pytest.raises(grpc.RpcError):
        stub_calls[1]()
    h.stop()
    assert caplog.records, "nothing was logged: the check below would be vacuous"
    assert SECRET not in caplog.text


def test_server_settings_follow_the_same_rule(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    settings = config.build(
        config.ServerSettings,
        "server",
        {"listen": "127.0.0.1:1", "auth_token_file": str(tmp_path / "token"), "workers": 8},
        {
            "VM_PROVIDER_SERVER_LISTEN": "127.0.0.1:2",
            "VM_PROVIDER_SERVER_GRACE_SECONDS": "2.5",
            "VM_PROVIDER_SERVER_LOG_LEVEL": "debug",
        },
    )
    assert (settings.listen, settings.workers, settings.grace_seconds, settings.log_level) == ("127.0.0.1:2", 8, 2.5, "DEBUG")
    assert settings.auth_token == SecretStr("tok")


def test_no_config_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VM_PROVIDER_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert config.default_config_path() is None
    assert config.load_file(None) == config.Config()
    (tmp_path / "plugins.toml").write_text("")
    assert config.default_config_path() == Path("plugins.toml")
    monkeypatch.setenv("VM_PROVIDER_CONFIG", "/etc/vm-provider.toml")
    assert config.default_config_path() == Path("/etc/vm-provider.toml")


def test_the_repository_plugins_toml_is_valid() -> None:
    conf = config.load_file(Path(__file__).resolve().parents[1] / "plugins.toml")
    config.build(config.ServerSettings, "server", conf.server, {})
    assert conf.backend
