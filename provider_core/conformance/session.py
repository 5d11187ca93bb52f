"""A running server for one installed backend, and the checks run against it.

Both front ends use it: the ``vm-provider conformance`` command
(:mod:`.runner`) and the pytest plugin (:mod:`.pytest_plugin`).
"""

from __future__ import annotations

import time
import traceback
from types import TracebackType

import grpc

from .. import plugins
from ..config import Config
from ..testing import ProviderHarness
from . import fixtures as fixtures_mod
from . import registry
from .kit import Kit, describe_error
from .registry import Check, CheckFailed, CheckSkipped
from .report import FAIL, PASS, SKIP, Result


class Session:
    """``with Session("sim", config) as s: s.run(check)``.

    Loads the backend ``name`` with its ``[backends.NAME]`` settings (the
    environment overrides them, as for ``vm-provider serve``) and the kit's
    ``[conformance.NAME]`` fixtures, and serves it on 127.0.0.1 port 0.
    """

    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.backend_cls = plugins.load_class(name)
        self.fixtures = fixtures_mod.load(name, config.conformance.get(name, {}), registry.names())
        self._table = config.backends.get(name, {})
        self.harness: ProviderHarness | None = None
        self._kit: Kit | None = None

    @property
    def where(self) -> str:
        return f"{self.backend_cls.__module__}:{self.backend_cls.__qualname__}"

    @property
    def kit(self) -> Kit:
        assert self._kit is not None, "session not started"
        return self._kit

    def start(self) -> Session:
        self.harness = ProviderHarness(plugins.load(self.name, self._table), self.name).start()
        self._kit = Kit(self.harness.stub, self.name, self.backend_cls, self.fixtures)
        return self

    def stop(self) -> None:
        if self._kit is not None:
            self._kit.close()
            self._kit = None
        if self.harness is not None:
            self.harness.stop()
            self.harness = None

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    def checks(self, select: str | None = None) -> list[Check]:
        return registry.checks_for(self.backend_cls.capabilities, select)

    def skip_reason(self, check: Check) -> str:
        skips = self.fixtures.skip
        reason = skips.get(check.name) or skips.get(check.row)
        return f"skipped by [conformance.{self.name}]: {reason}" if reason else ""

    def run(self, check: Check) -> Result:
        """Run one check, then delete what it made."""
        reason = self.skip_reason(check)
        if reason:
            return Result(check, SKIP, reason)
        kit = self.kit
        start = time.monotonic()
        status, detail = PASS, ""
        try:
            check.func(kit)
        except CheckSkipped as exc:
            status, detail = SKIP, str(exc)
        except CheckFailed as exc:
            status, detail = FAIL, str(exc)
        except grpc.RpcError as err:
            status, detail = FAIL, f"unexpected {describe_error(err)}"
        except Exception as exc:  # noqa: BLE001 - a broken check is reported, the others still run
            where = traceback.extract_tb(exc.__traceback__)[-1]
            status, detail = FAIL, f"kit error: {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
        problems = kit.cleanup()
        if problems:
            detail = "; ".join(([detail] if detail else []) + problems)
            if status == PASS:
                status = FAIL
        return Result(check, status, detail, time.monotonic() - start)
