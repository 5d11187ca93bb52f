"""A missing part of the test bed skips on a developer's machine and fails
under ``VMP_REQUIRE_TESTBED=1`` (``make test``, and so CI): the plugin of
``vmp_testplugins.skips``, loaded by its entry point, on a pytest run of
its own (pytester) whose tests lack a part in each way the suite says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]

LACKING = """
import pytest
from vmp_testplugins.skips import missing, skip_missing


@pytest.fixture(scope="module")
def daemon():
    skip_missing("the daemon does not answer")


def test_in_a_module_fixture(daemon):
    pass


def test_again_in_that_fixture(daemon):
    pass


def test_in_the_test():
    skip_missing("no loop device")


@pytest.mark.skipif(True, reason=missing("qemu-img is not installed"))
def test_by_mark():
    pass


def test_by_importorskip():
    pytest.importorskip("no_such_module_here", reason=missing("the nowhere backend is not installed"))


@pytest.mark.skip(reason="VMP_NO_LIBVIRTD=1")
def test_by_choice():
    pass


def test_that_runs():
    pass
"""

MODULE_LEVEL = """
import pytest
from vmp_testplugins.skips import missing

pytest.skip(missing("the container image is not built"), allow_module_level=True)


def test_never_collected():
    pass
"""


@pytest.fixture
def lacking(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_lacking=LACKING, test_module_level=MODULE_LEVEL)
    return pytester


def test_without_the_variable_a_missing_part_skips_saying_what(lacking: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMP_REQUIRE_TESTBED", raising=False)
    result = lacking.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=7)
    for what in ("the daemon does not answer", "no loop device", "qemu-img is not installed", "the container image is not built"):
        result.stdout.fnmatch_lines([f"SKIPPED * test bed part missing: {what}"])


@pytest.mark.parametrize("value", ["0", ""])
def test_only_the_value_1_requires_the_test_bed(lacking: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VMP_REQUIRE_TESTBED", value)
    lacking.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=7)


def test_with_the_variable_each_missing_part_fails_naming_it(lacking: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMP_REQUIRE_TESTBED", "1")
    # (a module that fails to be collected would otherwise stop the run there)
    result = lacking.runpytest("-rfEs", "-p", "no:cacheprovider", "--continue-on-collection-errors")
    # a skip in a test's call fails it; in its setup (fixture, mark) or collection, errs
    result.assert_outcomes(passed=1, skipped=1, failed=2, errors=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    failures = {m[2]: m[1] for m in re.finditer(r"^(FAILED|ERROR) (\S+) - ", result.stdout.str(), re.M)}
    assert failures == {
        "test_lacking.py::test_in_a_module_fixture": "ERROR",
        "test_lacking.py::test_again_in_that_fixture": "ERROR",
        "test_lacking.py::test_in_the_test": "FAILED",
        "test_lacking.py::test_by_mark": "ERROR",
        "test_lacking.py::test_by_importorskip": "FAILED",
        "test_module_level.py": "ERROR",
    }
    text = result.stdout.str()
    for what in (
        "the daemon does not answer",
        "no loop device",
        "qemu-img is not installed",
        "the nowhere backend is not installed",
        "the container image is not built",
    ):
        assert f"VMP_REQUIRE_TESTBED=1, but the test bed lacks a part: {what}" in text
    # a deliberate skip stays one
    result.stdout.fnmatch_lines(["SKIPPED * VMP_NO_LIBVIRTD=1"])


def test_make_test_requires_the_test_bed_and_test_fast_does_not() -> None:
    recipes = dict(re.findall(r"^([\w-]+):[^\n]*\n\t([^\n]*)", (ROOT / "Makefile").read_text(), flags=re.M))
    assert "VMP_REQUIRE_TESTBED=1 " in recipes["test"]
    assert "VMP_REQUIRE_TESTBED=0 " in recipes["test-fast"]
    assert "VMP_NO_LIBVIRTD=1 " in recipes["test-fast"]
