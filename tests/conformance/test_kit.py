"""The kit's own machinery: which checks exist and apply, fixtures and their
validation, skips with reasons, the report, errors of the command and the
plugin, and that docs/conformance.md matches the registry and runs."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provider_core import cli
from provider_core.capabilities import Capability
from provider_core.config import Config
from provider_core.conformance import fixtures as kit_fixtures
from provider_core.conformance import pytest_plugin, registry, runner
from provider_core.conformance.kit import Kit
from provider_core.conformance.registry import Check, checks_for
from provider_core.conformance.report import FAIL, PASS, SKIP, Result, render
from provider_core.conformance.session import Session
from provider_core.errors import ConfigError
from provider_core.pb import provider_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = pytest_plugin.__name__
FAST = {"task_seconds": 0.01, "shutdown_seconds": 0.05}


def test_every_capability_is_exercised_when_declared_and_checked_when_not() -> None:
    for cap in Capability:
        assert any(c.needs is cap for c in registry.all_checks()), f"no check exercises {cap.value}"
        assert any(c.absent is cap for c in registry.all_checks()), f"no check verifies the absence of {cap.value}"


def test_checks_follow_the_declaration() -> None:
    none = {c.name for c in checks_for(frozenset())}
    assert {c.split(".")[0] for c in none} == {"core"} | {cap.value for cap in Capability}
    assert all(name.startswith("core.") or name.endswith(".not_offered") for name in none)
    snapshots = {c.name for c in checks_for({Capability.SNAPSHOTS})}
    assert "snapshots.revert" in snapshots
    assert "snapshots.not_offered" not in snapshots
    assert "memory_snapshots.not_offered" in snapshots
    assert [c.name for c in checks_for(frozenset(), "core.delete")] == [
        "core.delete",
        "core.delete_running",
        "core.delete_missing",
    ]


def test_check_names_are_row_and_what() -> None:
    rows = {"core"} | {cap.value for cap in Capability}
    for c in registry.all_checks():
        row, _, what = c.name.partition(".")
        assert row == c.row
        assert row in rows
        assert re.fullmatch(r"[a-z0-9_]+", what), c.name
        assert c.summary != c.name, f"{c.name} has no docstring"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"class_json": "{"}, "class_json: malformed JSON"),
        ({"networks_json": '[{"VLAN": 5000}]'}, "networks_json: networks_json[0].VLAN"),
        ({"class_json": '{"CPU": 2}'}, "class_json: give both CPU and MemoryMiB"),
        ({"bigger_class_json": '{"CPU": 1, "MemoryMiB": 128}'}, "bigger_class_json must have more CPU and more memory"),
        ({"skip": {"core.nope": "typo"}}, "skip: no check or capability named 'core.nope'"),
        ({"skip": {"core.delete": " "}}, "skip: say why 'core.delete' is skipped"),
        ({"imagejson": "{}"}, "imagejson: Extra inputs are not permitted"),
        ({"name_prefix": "Bad_Prefix"}, "name_prefix: String should match pattern"),
    ],
)
def test_bad_fixtures_are_refused_naming_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^\[conformance\.mine\]") as err:
        kit_fixtures.load("mine", table, registry.names())
    assert message in str(err.value)


def test_skips_are_reported_with_their_reason(run_kit: Callable[..., list[Result]]) -> None:
    skip = {"snapshots": "the lab's storage has no snapshots", "core.delete": "deleting is slow here"}
    results = run_kit("sim", FAST, {"skip": skip}, select="delete")
    by_name = {r.check.name: r for r in results}
    assert by_name["core.delete"].status == SKIP
    assert by_name["core.delete"].detail == "skipped by [conformance.sim]: deleting is slow here"
    assert by_name["snapshots.delete"].detail == "skipped by [conformance.sim]: the lab's storage has no snapshots"
    assert by_name["core.delete_running"].status == PASS
    report = render("sim", "here", frozenset(Capability), frozenset(Capability), results)
    assert re.search(r"^snapshots\s+yes\s+yes\s+0\s+0\s+2\s+SKIP$", report, flags=re.M)
    assert re.search(r"^core\s+always\s+always\s+2\s+0\s+1\s+PASS$", report, flags=re.M)
    assert re.search(r"^clone\s+yes\s+yes\s+0\s+0\s+0\s+-$", report, flags=re.M)
    assert "not offered" not in report


def crashing(kit: Kit) -> None:
    """A check with a bug of its own."""
    raise ValueError("oops")


def leaves_a_linked_clone(kit: Kit) -> None:
    """Makes a source and a linked clone, then forgets the clone: the source cannot be deleted."""
    source = kit.create_vm("source")
    clone = kit.ok("Clone", pb.CloneRequest(source_vm_id=source, target_name=kit.vm_name("clone"), linked=True))
    kit.wait(clone.task, "Clone")


def test_a_broken_check_or_a_failed_cleanup_fails_the_check_and_the_run_goes_on() -> None:
    with Session("sim", Config(backends={"sim": FAST})) as session:
        crashed = session.run(Check("core.crashing", crashing))
        leaky = session.run(Check("core.leaky", leaves_a_linked_clone))
        after = session.run(next(c for c in session.checks() if c.name == "core.describe_missing"))
    assert crashed.status == FAIL
    assert crashed.detail.startswith("kit error: ValueError: oops (at ")
    assert leaky.status == FAIL
    assert re.fullmatch(
        r"cleanup: Delete\(vm-\w+\) failed: FAILED_PRECONDITION: linked clones use this machine's disks: .*", leaky.detail
    )
    assert after.status == PASS


def test_command_reports_what_stops_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text('[backends.sim]\ntask_seconds = 0.01\n\n[conformance.sim]\nskip = { "core.nope" = "typo" }\n')
    assert cli.main(["conformance", "--backend", "sim", "--config", str(config)]) == 2
    assert "[conformance.sim] skip: no check or capability named 'core.nope'" in capsys.readouterr().err
    assert cli.main(["conformance", "--backend", "no-such-backend", "--config", str(config)]) == 2
    assert "unknown backend 'no-such-backend'" in capsys.readouterr().err
    config.write_text("[backends.sim]\ntask_seconds = 0.01\n")
    assert runner.run("sim", config, select="no-such-check") == 1
    assert "no check of backend 'sim' matches 'no-such-check'" in capsys.readouterr().out


def test_plugin_refuses_an_unknown_backend(tmp_path: Path, run_pytest: Callable[..., Any]) -> None:
    proc = run_pytest(tmp_path, "-p", PLUGIN, "--vm-provider-backend", "no-such-backend")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "--vm-provider-backend: unknown backend 'no-such-backend'" in proc.stderr


def test_without_a_backend_the_plugin_adds_nothing(tmp_path: Path, run_pytest: Callable[..., Any]) -> None:
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n\n\ndef test_harness(vm_provider_harness):\n    pass\n")
    proc = run_pytest(tmp_path, "-p", PLUGIN)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout
    assert "no backend named: give --vm-provider-backend NAME" in proc.stdout


def test_the_plugin_loads_only_when_asked_for(tmp_path: Path, run_pytest: Callable[..., Any]) -> None:
    """Installing vm-provider adds nothing to a project's pytest runs."""
    (tmp_path / "test_plain.py").write_text("def test_harness(vm_provider_harness):\n    pass\n")
    plain = run_pytest(tmp_path)
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert "fixture 'vm_provider_harness' not found" in plain.stdout
    refused = run_pytest(tmp_path, "--vm-provider-backend", "sim")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "unrecognized arguments: --vm-provider-backend" in refused.stderr
    (tmp_path / "conftest.py").write_text(f"pytest_plugins = [{PLUGIN!r}]\n")
    asked = run_pytest(tmp_path)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "no backend named: give --vm-provider-backend NAME" in asked.stdout


def fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", (ROOT / "docs" / "conformance.md").read_text(), flags=re.S | re.M)


def test_the_documented_pytest_setup_runs(tmp_path: Path, run_pytest: Callable[..., Any]) -> None:
    """docs/conformance.md's ini options and test, on the sim backend."""
    (ini,) = [b for b in fenced("toml") if "[tool.pytest.ini_options]" in b]
    (own_test,) = fenced("python")
    (tmp_path / "pyproject.toml").write_text(ini.replace('"mine"', '"sim"'))
    (tmp_path / "conformance.toml").write_text("[backends.sim]\ntask_seconds = 0.01\n")
    (tmp_path / "test_mine.py").write_text(own_test)
    proc = run_pytest(tmp_path, "-k", "validate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED test_mine.py::test_my_backend_validates" in proc.stdout
    assert "PASSED vm-provider-conformance[sim]::core.validate" in proc.stdout


def test_the_documented_check_list_is_the_registry() -> None:
    text = (ROOT / "docs" / "conformance.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_<>]+\.[a-z0-9_]+)` \|", text, flags=re.M))
    plain_not_offered = {c.name for c in registry.all_checks() if c.absent is not None and c.name not in documented}
    assert documented - {"<capability>.not_offered"} | plain_not_offered == {c.name for c in registry.all_checks()}
    assert all(name.endswith(".not_offered") for name in plain_not_offered)


def test_the_s3_checks_skip_saying_why_without_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    from vm_provider_sim import SimBackend

    from provider_core.conformance.fixtures import Fixtures
    from provider_core.conformance.registry import CheckSkipped

    monkeypatch.setitem(sys.modules, "moto.server", None)  # as if moto were not installed
    kit = Kit(None, "sim", SimBackend, Fixtures())  # type: ignore[arg-type]
    with pytest.raises(CheckSkipped, match=r"install the conformance extra \(from a clone: pip install '\./\[conformance\]'\)"):
        kit.s3_place("key")
    kit.close()


def test_the_power_words_check_follows_the_servers_setting() -> None:
    """The kit's server takes power_states from [server]; the check expects its words."""
    with Session("sim", Config(backends={"sim": FAST})) as session:
        assert session.kit.power_words == ("On", "Off")
        words = next(c for c in session.checks() if c.name == "core.power_words")
        assert session.run(words).status == PASS
        session.kit.create_vm("off")
        session.kit.power_words = ("On",)  # a server that may only say On: a stopped VM breaks it
        failed = session.run(words)
    assert failed.status == FAIL
    assert "'Off'" in failed.detail
    with Session("sim", Config(backends={"sim": FAST}, server={"power_states": "detailed"})) as session:
        assert session.kit.power_words == ("On", "Off", "Suspended", "Unknown")
        assert session.harness is not None
        assert session.harness.settings.power_states == "detailed"
        missing = session.kit.ok("Describe", pb.DescribeRequest(id="never-made"))
    assert missing.power_state == "Unknown"


def test_the_command_serves_with_the_configs_server_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text('[server]\npower_states = "detailed"\n\n[backends.sim]\ntask_seconds = 0.01\n')
    captured: list[Session] = []
    real_start = Session.start

    def start(self: Session) -> Session:
        captured.append(self)
        return real_start(self)

    monkeypatch.setattr(Session, "start", start)
    assert cli.main(["conformance", "--backend", "sim", "--config", str(config), "-k", "core.power_words"]) == 0
    assert "PASS core.power_words" in capsys.readouterr().out
    assert captured[0].server == {"power_states": "detailed", "manage_foreign_vms": False}
    monkeypatch.setenv("VM_PROVIDER_SERVER_MANAGE_FOREIGN_VMS", "true")
    assert cli.main(["conformance", "--backend", "sim", "--config", str(config), "-k", "core.power_words"]) == 0
    assert captured[1].server == {"power_states": "detailed", "manage_foreign_vms": True}
