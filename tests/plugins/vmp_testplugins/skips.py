"""Skips for a part of the test bed that is missing, which fail where the
test bed is promised.

On a developer's machine a test that needs something ``make test`` sets up
(the test bed's libvirtd or PostgreSQL, sshd, qemu-img, OVMF, a loop
device, the container image, an installed backend, ...) skips, saying what
is missing. With ``VMP_REQUIRE_TESTBED=1`` (``make test`` sets it, and so
CI) the same test fails, naming it: a broken test bed cannot pass as a
green run of skips.

Every such site skips through :func:`skip_missing` (or gives a skip mark
the reason :func:`missing` makes), whose reason starts with
:data:`PREFIX`; the hooks below, registered as a pytest plugin by this
distribution's entry point, turn exactly those skips into failures. Skips for anything else (a
deliberate ``VMP_NO_LIBVIRTD=1``, a library version's behaviour, the
machine's own name resolution) are plain ``pytest.skip`` and stay skips.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import NoReturn

import pytest

ENV = "VMP_REQUIRE_TESTBED"
PREFIX = "test bed part missing: "


def required() -> bool:
    """Whether the test bed is promised complete (``VMP_REQUIRE_TESTBED=1``)."""
    return os.environ.get(ENV) == "1"


def missing(what: str) -> str:
    """The skip reason for lack of ``what``, a part of the test bed: for
    ``pytest.skip`` or a skip mark (a failure under ``VMP_REQUIRE_TESTBED=1``)."""
    return PREFIX + what


def skip_missing(what: str) -> NoReturn:
    """Skip the running test for lack of ``what`` (a failure under
    ``VMP_REQUIRE_TESTBED=1``)."""
    __tracebackhide__ = True  # the skip is reported where the test called this
    pytest.skip(missing(what))


def _missing_part(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """What a skip report says is missing from the test bed, if it is such a skip."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    return reason.removeprefix(PREFIX) if reason.startswith(PREFIX) else None


def _fail_if_required(report: pytest.TestReport | pytest.CollectReport) -> None:
    what = _missing_part(report)
    if what is not None and required():
        report.outcome = "failed"
        report.longrepr = f"{ENV}=1, but the test bed lacks a part: {what}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_required(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_if_required(report)
    return report
