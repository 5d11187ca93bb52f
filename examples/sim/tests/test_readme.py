"""The README's settings sample loads, and its table lists every setting."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from vm_provider_sim import SimSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_settings_sample_is_valid_and_complete() -> None:
    (sample,) = re.findall(r"^```toml\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    table = tomllib.loads(sample)["backends"]["sim"]
    assert SimSettings.model_validate(table) == SimSettings(state_file=table["state_file"])
    assert set(table) == set(SimSettings.model_fields)


def test_settings_table_names_every_setting() -> None:
    rows = re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \|", README.read_text(), flags=re.M)
    assert {name for row in rows for name in row if name} == set(SimSettings.model_fields)
