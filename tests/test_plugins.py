"""Finding and loading backends through their real entry points."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, ClassVar

import pytest

from provider_core import Backend, BackendSettings, Capability, Outcome, ValidationReport, plugins
from provider_core.errors import ConfigError

pytestmark = pytest.mark.needs_test_plugins
_plugins = pytest.importorskip(
    "vmp_testplugins.memory", reason="the test backends are not installed: pip install -e tests/plugins"
)
MemoryBackend = _plugins.MemoryBackend

TEST_PLUGINS = {
    "memory",
    "memory-plus",
    "broken-import",
    "ctor-raises",
    "lying",
    "undeclared",
    "refines-orphan",
    "not-a-backend",
    "bad-settings",
}


def test_installed_lists_the_entry_points_without_importing_them() -> None:
    names = plugins.installed()
    assert set(names) >= TEST_PLUGINS
    assert names == sorted({ep.name for ep in entry_points(group=plugins.NAMESPACE)})


def test_a_correct_plugin_loads_configured_and_unconnected() -> None:
    backend = plugins.load("memory", {"delay_seconds": 0.25}, environ={})
    assert isinstance(backend, MemoryBackend)
    assert backend.settings.delay_seconds == 0.25
    assert backend.connects == 0


def test_an_unknown_backend_lists_the_installed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        plugins.load("nosuch", {}, environ={})
    message = str(info.value)
    assert message.startswith("unknown backend 'nosuch'; installed backends: ")
    assert all(name in message for name in TEST_PLUGINS)


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("lying", ["declares capability 'snapshots'", "does not implement method snapshot_create()"]),
        ("undeclared", ["implements method clone()", "does not declare capability 'clone'"]),
        ("refines-orphan", ["declares 'linked_clones' without 'clone'"]),
        ("not-a-backend", ["NotABackend", "not a subclass of provider_core.Backend"]),
        ("broken-import", ["failed to load", "ImportError", "hypervisor_sdk"]),
        ("ctor-raises", ["failed to start", "RuntimeError", "cannot open /dev/hypervisor0"]),
    ],
)
def test_a_broken_plugin_is_refused_naming_it_and_the_cause(name: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        plugins.load(name, {}, environ={})
    message = str(info.value)
    assert message.startswith(f"backend {name!r}")
    for fragment in fragments:
        assert fragment in message


def test_the_import_error_stays_chained_for_the_log() -> None:
    with pytest.raises(ConfigError) as info:
        plugins.load_class("broken-import")
    assert isinstance(info.value.__cause__, ImportError)


# -- the contract checks, on classes made here --------------------------------------


class _Minimal(Backend):
    def validate(self) -> ValidationReport:
        return ValidationReport(ok=True, message="")

    def create(self, spec: Any) -> Outcome[str]:
        return Outcome.done("x")

    def describe(self, vm_id: str) -> Any:
        raise NotImplementedError

    def list_vms(self) -> list[Any]:
        return []

    def power(self, vm_id: str, op: Any, graceful_timeout: float) -> Outcome[None]:
        return Outcome.done(None)

    def delete(self, vm_id: str) -> Outcome[None]:
        return Outcome.done(None)


def test_a_minimal_backend_passes() -> None:
    assert plugins.check_backend_class("minimal", _Minimal) is _Minimal


def test_a_missing_mandatory_method_is_named() -> None:
    class NoDelete(Backend):
        validate = _Minimal.validate
        create = _Minimal.create
        describe = _Minimal.describe
        list_vms = _Minimal.list_vms
        power = _Minimal.power

    with pytest.raises(ConfigError, match=r"backend 'nodelete': NoDelete does not implement required method\(s\) delete"):
        plugins.check_backend_class("nodelete", NoDelete)


def test_settings_must_derive_from_backend_settings() -> None:
    class Loose(_Minimal):
        Settings = dict  # type: ignore[assignment]

    with pytest.raises(ConfigError, match=r"backend 'loose': Loose.Settings must derive from provider_core.BackendSettings"):
        plugins.check_backend_class("loose", Loose)


def test_capabilities_must_be_the_enum() -> None:
    class Stringly(_Minimal):
        capabilities: ClassVar[frozenset[Any]] = frozenset({"snapshots"})

    with pytest.raises(ConfigError, match=r"capability 'snapshots' is not a provider_core.Capability"):
        plugins.check_backend_class("stringly", Stringly)


@pytest.mark.parametrize("method", ["snapshot_create", "snapshot_revert", "snapshot_delete"])
def test_every_method_of_a_capability_is_required(method: str) -> None:
    def impl(self: Any, *args: Any) -> Outcome[Any]:
        return Outcome.done("")

    body = {m: impl for m in ("snapshot_create", "snapshot_revert", "snapshot_delete") if m != method}
    partial = type("Partial", (_Minimal,), {"capabilities": frozenset({Capability.SNAPSHOTS}), **body})
    with pytest.raises(ConfigError, match=rf"declares capability 'snapshots' but does not implement method {method}\(\)"):
        plugins.check_backend_class("partial", partial)


def test_settings_are_checked_before_the_constructor_runs() -> None:
    with pytest.raises(ConfigError, match=r"invalid settings \[backends.memory\]: delay_seconds: "):
        plugins.load("memory", {"delay_seconds": -1}, environ={})


def test_settings_base_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"\[backends\.min\] has no setting 'colour'"):
        plugins.settings_for("min", _Minimal, {"colour": "blue"}, environ={})
    assert isinstance(plugins.settings_for("min", _Minimal, {}, environ={}), BackendSettings)
