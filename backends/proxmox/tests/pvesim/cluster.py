"""RealCluster: fakepve behind every behaviour of :mod:`pvesim`."""

from __future__ import annotations

import asyncio
from typing import Any

from .agent import AgentPending
from .downloads import Downloads
from .ha import HaManager
from .hotplug import Hotplug
from .packages import Packages
from .placement import Placement
from .proxy import Layer
from .shutdowns import Shutdowns
from .stats import Pvestatd
from .vmids import VmidRace


class RealCluster(Layer):
    """The API endpoint the provider talks to in the tests.

    Behaviours run in this order for a request both handle: the VMID race
    before placement (an id already taken is refused before any task), HA
    before the shutdown and stop rules (HA resources take neither).
    """

    def __init__(self, pve: Any, loop: asyncio.AbstractEventLoop, cafile: str) -> None:
        super().__init__(pve, loop, cafile)
        self.stats = Pvestatd(self)
        self.packages = Packages(self)
        self.ha = HaManager(self)
        self.shutdowns = Shutdowns(self, self.packages)
        self.vmids = VmidRace(self)
        self.placement = Placement(self)
        self.downloads = Downloads(self, self.packages, self.placement)
        self.agent = AgentPending(self)
        self.hotplug = Hotplug(self)
