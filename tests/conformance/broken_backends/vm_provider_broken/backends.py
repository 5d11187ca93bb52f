"""Three backends, each the sim backend with one realistic defect, and one
whose endpoint offers less than its class declares."""

from __future__ import annotations

import uuid
from typing import ClassVar

from pydantic import Field
from vm_provider_sim import SimSettings
from vm_provider_sim.backend import SimBackend, native_errors
from vm_provider_sim.convert import plan_reconfigure

from provider_core import BackendSettings, Capability, CloneSpec, DesiredVM, Offer, Outcome


class FakeCloneBackend(SimBackend):
    """Declares CLONE and LINKED_CLONES, but Clone checks its source and then
    returns a made-up id: nothing is ever copied."""

    def clone(self, spec: CloneSpec) -> Outcome[str]:
        self._get(spec.source_vm_id)
        return Outcome.done("vm-" + uuid.uuid4().hex[:16])


class SilentHotplugBackend(SimBackend):
    """Declares RECONFIGURE without RECONFIGURE_ONLINE or DISK_EXPANSION_ONLINE,
    yet changes the CPU, memory and disks of running VMs without a word."""

    capabilities: ClassVar[frozenset[Capability]] = SimBackend.capabilities - {
        Capability.RECONFIGURE_ONLINE,
        Capability.DISK_EXPANSION_ONLINE,
    }

    def reconfigure(self, vm_id: str, desired: DesiredVM) -> Outcome[None]:
        plan = plan_reconfigure(self._get(vm_id), desired, self.config, self.host)
        with native_errors():
            self.host.reconfigure(
                vm_id,
                cpu=plan.cpu,
                memory_mib=plan.memory_mib,
                disk_sizes=plan.disk_sizes,
                max_cpu=self.config.hotplug_cpus,
                max_memory_mib=self.config.hotplug_memory_mib,
                online_cpu_memory=True,
                online_disks=True,
            )
        return Outcome.done(None)


class LeakyDeleteBackend(SimBackend):
    """Delete answers success at once and leaves the VM where it is (the
    hypervisor's asynchronous delete was started and never checked)."""

    def delete(self, vm_id: str) -> Outcome[None]:
        self._get(vm_id)
        return Outcome.done(None)


class WithholdingSettings(SimSettings):
    withhold: list[Capability] = Field([], description="what this endpoint does not offer, though the class declares it")


class WithholdingBackend(SimBackend):
    """The sim backend on an endpoint that offers everything its class
    declares but ``withhold`` (and what refines it), as a backend whose
    host lacks a feature does. The core refuses the RPCs and options it
    gates; the two refinements it cannot gate (``reconfigure_online``,
    ``disk_expansion_online``) sim still does, going by its class: withheld,
    they are a defect the kit reports."""

    Settings: ClassVar[type[BackendSettings]] = WithholdingSettings

    def offer(self) -> Offer:
        assert isinstance(self.config, WithholdingSettings)
        return self.declared().without(*self.config.withhold)
