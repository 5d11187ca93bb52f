"""The README cannot drift from the code: its TOML samples load as
plugins.toml and validate as LibvirtSettings, its settings table names
every setting with its real default, and its tables of ExtraConfig keys,
native states and capabilities match the backend's declarations, and what
it says the test driver offers is what the backend offers there."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import libvirt
import pytest
from pydantic import SecretStr
from vm_provider_libvirt import create, offers, states
from vm_provider_libvirt.backend import LibvirtBackend
from vm_provider_libvirt.host import HostInfo
from vm_provider_libvirt.settings import LibvirtSettings

from provider_core.config import build, load_file

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
SAMPLES = re.findall(r"```toml\n(.*?)```", TEXT, re.S)


def table(header: str) -> list[list[str]]:
    """The rows (cells stripped) of the README table whose header row
    starts with ``header``."""
    lines = TEXT.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    assert start is not None, f"no table starting {header!r} in README.md"
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def code(cell: str) -> str:
    """The text of a cell written as `code`."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"{cell!r} is not a `code` cell"
    return match.group(1)


def shown(value: Any) -> str:
    """A default as the README shows it: a TOML literal in backticks, or
    (unset) for None."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{value}`"
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return f'`"{value}"`'


def test_there_is_a_sample() -> None:
    assert SAMPLES, "README.md has no ```toml sample"


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample-{i}" for i in range(len(SAMPLES))])
def test_each_toml_sample_is_a_valid_plugins_toml(tmp_path: Path, sample: str) -> None:
    """Loaded as a whole file (unknown tables refused), its libvirt table
    validated as the server would, reading the files that ``<setting>_file``
    keys name (stand-ins here)."""
    fields = LibvirtSettings.model_fields
    indirect = {}
    for key, path in re.findall(r'^(\w+)_file\s*=\s*"([^"]+)"', sample, re.M):
        if key in fields and f"{key}_file" not in fields:
            stand_in = tmp_path / Path(path).name
            stand_in.write_text(f"{key}-from-file\n")
            sample = sample.replace(f'"{path}"', f'"{stand_in}"')
            indirect[key] = f"{key}-from-file"
    config_file = tmp_path / "plugins.toml"
    config_file.write_text(sample)
    config = load_file(config_file)
    assert "libvirt" in config.backends, "the sample should configure [backends.libvirt]"
    settings = build(LibvirtSettings, "libvirt", config.backends["libvirt"], {})
    assert settings.uri
    for key, want in indirect.items():
        value = getattr(settings, key)
        assert (value.get_secret_value() if isinstance(value, SecretStr) else value) == want


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    rows = table("| setting | default | meaning |")
    documented = {code(name): default for name, default, _ in rows}
    fields = LibvirtSettings.model_fields
    assert sorted(set(fields) - set(documented)) == [], "settings missing from README.md"
    assert sorted(set(documented) - set(fields)) == [], "README.md documents settings that do not exist"
    assert [code(r[0]) for r in rows] == list(fields), "keep the table in settings.py's order"
    wrong = {name: (documented[name], shown(f.default)) for name, f in fields.items() if documented[name] != shown(f.default)}
    assert wrong == {}, "README.md default vs the real one"
    assert all(meaning for _, _, meaning in rows)


def test_the_extra_config_table_lists_every_key() -> None:
    keys = [code(row[0]) for row in table("| key | meaning |")]
    assert keys == [f"libvirt.{k}" for k in create.EXTRA_KEYS]


def test_the_state_table_is_the_state_map() -> None:
    rows = {code(state): power for state, power, _ in table("| libvirt state | power_state | note |")}
    assert rows == {native.name: native.power.value for native in states.STATES.values()}


def test_the_capability_table_is_the_declaration() -> None:
    documented = [code(row[0]) for row in table("| capability | here |")]
    assert sorted(documented) == sorted(c.value for c in LibvirtBackend.capabilities)


def _test_driver_offer() -> set[str]:
    conn = libvirt.open("test:///default")
    try:
        host = HostInfo.read(conn)
    finally:
        conn.close()
    return {c.value for c in offers.offer(LibvirtBackend.declared(), host).capabilities}


def test_what_the_test_driver_does_not_offer_is_documented() -> None:
    rows = table("| not offered | when | why |")
    documented = {name for cells in rows for name in re.findall(r"`([a-z_]+)`", cells[0])}
    assert all("the test driver" in when for _, when, _ in rows)
    assert documented == {c.value for c in LibvirtBackend.capabilities} - _test_driver_offer()


def test_what_the_test_driver_offers_is_documented() -> None:
    sentence = TEXT[TEXT.index("So `test:///default`") : TEXT.index("each", TEXT.index("So `test:///default`"))]
    listed = set(re.findall(r"`([a-z_]+)`", sentence))
    assert listed == _test_driver_offer()
