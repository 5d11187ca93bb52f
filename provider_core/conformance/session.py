"""A running server for one installed backend, and the checks run against it.

Both front ends use it: the ``vm-provider conformance`` command
(:mod:`.runner`) and the pytest plugin (:mod:`.pytest_plugin`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from types import TracebackType

import grpc

from .. import plugins
from ..config import Config, ServerSettings, resolve
from ..errors import ConfigError
from ..testing import ProviderHarness
from . import fixtures as fixtures_mod
from . import offered, registry
from .kit import DETAILED_WORDS, POWER_WORDS, Kit, describe_error
from .registry import Check, CheckFailed, CheckSkipped
from .report import FAIL, PASS, SKIP, Result, render

SERVED = ("power_states", "manage_foreign_vms")
"""``[server]`` settings the kit's server takes from the config: what they
change is what clients see, so the checks must see it too. (Listening, TLS
and state stay the kit's own.)"""


class Session:
    """``with Session("sim", config) as s: [s.run(c) for c in s.checks()]``.

    Loads the backend ``name`` with its ``[backends.NAME]`` settings (the
    environment overrides them, as for ``vm-provider serve``) and the kit's
    ``[conformance.NAME]`` fixtures, serves it on 127.0.0.1 port 0 with the
    ``[server]`` settings that change what clients see (:data:`SERVED`,
    also from the environment), and asks the server what its endpoint
    offers: that chooses the checks.
    """

    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.backend_cls = plugins.load_class(name)
        self.fixtures = fixtures_mod.load(name, config.conformance.get(name, {}), registry.names())
        self._table = config.backends.get(name, {})
        served = resolve(ServerSettings, "server", config.server, source=config.source).settings
        self.server = {key: getattr(served, key) for key in SERVED}
        """The server settings of :data:`SERVED`, as the config and environment give them."""
        self.harness: ProviderHarness | None = None
        self._kit: Kit | None = None
        self.answer: offered.Answer | None = None
        """What the server said its endpoint offers, once started."""

    @property
    def where(self) -> str:
        return f"{self.backend_cls.__module__}:{self.backend_cls.__qualname__}"

    @property
    def kit(self) -> Kit:
        assert self._kit is not None, "session not started"
        return self._kit

    def start(self) -> Session:
        """Serve the backend and ask the server what its endpoint offers;
        ConfigError when it cannot say (the backend did not connect)."""
        self.harness = ProviderHarness(plugins.load(self.name, self._table), self.name, **self.server).start()
        kit = self._kit = Kit(self.harness.stub, self.name, self.backend_cls, self.fixtures)
        kit.power_words = DETAILED_WORDS if self.server["power_states"] == "detailed" else POWER_WORDS
        try:
            answer = offered.read(kit)
        except (grpc.RpcError, CheckFailed) as exc:
            self.stop()
            said = describe_error(exc) if isinstance(exc, grpc.RpcError) else str(exc)
            raise ConfigError(
                f"backend {self.name!r} served, but GetCapabilities answered {said}: the kit cannot tell what this"
                f" endpoint offers (can the backend reach its hypervisor with [backends.{self.name}]?)"
            ) from None
        self.answer = answer
        kit.offer = answer.offer
        kit.not_offered = dict(answer.why_not)
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
        """The checks of this backend on this endpoint (the session must be started)."""
        return registry.checks_for(self.kit.declared.capabilities, select, offered=self.kit.offer.capabilities)

    def skip_reason(self, check: Check) -> str:
        """Why ``check`` is skipped here: the fixtures' ``skip``, or a
        capability the class declares and the endpoint does not offer ("" when it runs)."""
        skips = self.fixtures.skip
        reason = skips.get(check.name) or skips.get(check.row)
        if reason:
            return f"skipped by [conformance.{self.name}]: {reason}"
        cap = check.needs
        if cap is not None and not self.kit.offers(cap):
            how = self.kit.not_offered.get(cap, "GetCapabilities does not list it")
            return f"this endpoint does not offer {cap.value!r}, which {self.backend_cls.__qualname__} declares ({how})"
        return ""

    def report(self, results: Sequence[Result]) -> str:
        """The report of ``results`` (:func:`.report.render`), also once the session stopped."""
        assert self.answer is not None, "session never started"
        return render(self.name, self.where, frozenset(self.backend_cls.capabilities), self.answer.offer.capabilities, results)

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
