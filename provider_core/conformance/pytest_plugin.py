"""The conformance kit as pytest items.

pytest loads this plugin only when a project asks for it: on the command
line (``-p provider_core.conformance.pytest_plugin``), in its pytest
configuration (``addopts``), or in its root ``conftest.py``
(``pytest_plugins = ["provider_core.conformance.pytest_plugin"]``). Then,
name a backend and pytest runs one item per check that applies to it::

    pytest -p provider_core.conformance.pytest_plugin --vm-provider-backend mine [--vm-provider-config conformance.toml]

or, in the project's pytest configuration::

    [tool.pytest.ini_options]
    addopts = "-p provider_core.conformance.pytest_plugin"
    vm_provider_backend = "mine"
    vm_provider_config = "conformance.toml"   # relative to that file

Items are named ``vm-provider-conformance[mine]::<check>`` (select with
``-k``); a skipped check is a pytest skip with the kit's reason. All items
share one server, started when they are collected: which checks apply
depends on what its endpoint offers. The fixture
``vm_provider_harness`` gives tests of your own that same running server
(a :class:`provider_core.testing.ProviderHarness`).

Nothing heavy is imported unless a backend is named.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..testing import ProviderHarness
    from .registry import Check
    from .report import Result
    from .session import Session

_SESSION: pytest.StashKey[Session | BaseException] = pytest.StashKey()
_RESULTS: pytest.StashKey[list[Result]] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vm-provider", "vm-provider conformance kit")
    group.addoption("--vm-provider-backend", metavar="NAME", help="run the conformance kit against the installed backend NAME")
    group.addoption(
        "--vm-provider-config", metavar="FILE", help="TOML with [backends.NAME] settings and [conformance.NAME] fixtures"
    )
    parser.addini("vm_provider_backend", "backend the conformance kit runs against (like --vm-provider-backend)", default="")
    parser.addini("vm_provider_config", "config file of the conformance kit, relative to the ini file", default="")


def backend_name(config: pytest.Config) -> str:
    return str(config.getoption("vm_provider_backend") or config.getini("vm_provider_backend") or "")


def config_path(config: pytest.Config) -> Path | None:
    given = config.getoption("vm_provider_config")
    if given:
        return Path(given)
    ini = str(config.getini("vm_provider_config") or "")
    if not ini:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return base / ini


class ConformanceCollector(pytest.Collector):
    """The checks that apply to one backend."""

    def __init__(self, *, backend: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend

    def collect(self) -> list[pytest.Item]:
        from .. import plugins
        from ..errors import ConfigError
        from .registry import checks_for

        try:
            cls = plugins.load_class(self.backend)
        except ConfigError as exc:
            raise pytest.UsageError(f"--vm-provider-backend: {exc}") from None
        # Which checks apply depends on what the running endpoint offers. When
        # the server cannot start, the class's declaration stands in, and every
        # item fails saying why.
        started = _started(self.config)
        checks = checks_for(cls.capabilities) if isinstance(started, BaseException) else started.checks()
        return [CheckItem.from_parent(self, name=c.name, check=c) for c in checks]


class CheckItem(pytest.Item):
    """One check of the kit."""

    def __init__(self, *, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        from .registry import CheckFailed
        from .report import FAIL, SKIP

        session = _session(self.config)
        result = session.run(self.check)
        self.config.stash.setdefault(_RESULTS, []).append(result)
        if result.status == SKIP:
            pytest.skip(result.detail)
        if result.status == FAIL:
            raise CheckFailed(result.detail)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from .registry import CheckFailed

        if isinstance(excinfo.value, CheckFailed):
            return f"{self.check.name}: {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"conformance check {self.check.name}: {self.check.summary}"


def _started(config: pytest.Config) -> Session | BaseException:
    """The shared session, started on first use (when the kit's items are
    collected), or why it could not start."""
    found = config.stash.get(_SESSION, None)
    if found is None:
        from ..config import load_file
        from .session import Session

        try:
            found = Session(backend_name(config), load_file(config_path(config))).start()
        except Exception as exc:  # noqa: BLE001 - reported by every item, not once as an internal error
            found = exc
        config.stash[_SESSION] = found
    return found


def _session(config: pytest.Config) -> Session:
    """The shared session; a start-up failure fails every item that asks for it."""
    found = _started(config)
    if isinstance(found, BaseException):
        raise pytest.fail.Exception(
            f"the conformance kit could not start backend {backend_name(config)!r}: {found}", pytrace=False
        )
    return found


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the kit's items (before -k and -m deselect)."""
    name = backend_name(config)
    if name:
        node = f"vm-provider-conformance[{name}]"
        collector = ConformanceCollector.from_parent(session, name=node, nodeid=node, backend=name)
        items.extend(collector.collect())


def pytest_sessionfinish(session: pytest.Session) -> None:
    found = session.config.stash.get(_SESSION, None)
    if found is not None and not isinstance(found, BaseException):
        found.stop()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, [])
    found = config.stash.get(_SESSION, None)
    if not results or found is None or isinstance(found, BaseException):
        return
    terminalreporter.section("vm-provider conformance")
    terminalreporter.write_line(found.report(results))


@pytest.fixture(scope="session")
def vm_provider_harness(request: pytest.FixtureRequest) -> ProviderHarness:
    """The running server of the backend named by --vm-provider-backend."""
    if not backend_name(request.config):
        pytest.skip("no backend named: give --vm-provider-backend NAME or the vm_provider_backend ini option")
    harness = _session(request.config).harness
    assert harness is not None
    return harness
