"""``agent`` waits for a reboot on a running VM.

qemu-server applies a running VM's pending changes option by option; the
options it changes at once are listed in PVE/QemuServer.pm:4594-4607
(``$fast_plug_option``: name, tags, description, ...), and ``agent`` is not
among them: ``vmconfig_update_agent`` (QemuServer.pm:5207-5227, called at
4886) leaves any change but ``fstrim_cloned_disks`` pending.

fakepve applies ``agent`` at once; here a change of it on a running VM is
moved back into the pending changes once fakepve has written it.
"""

from __future__ import annotations

import re

from aiohttp import web

from .proxy import Call, Layer

CONFIG = r"/nodes/(?P<node>[^/]+)/qemu/(?P<vmid>\d+)/config"


class AgentPending:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        layer.route("PUT", CONFIG, self.config)
        layer.route("POST", CONFIG, self.config)

    async def config(self, call: Call, m: re.Match[str]) -> web.StreamResponse | None:
        vm = self.layer.vm_on(m["node"], m["vmid"])
        if vm is None or vm.status != "running" or "agent" not in call.params:
            return None
        before = vm.config.get("agent")
        up = await self.layer.forward(call)
        after = vm.config.get("agent")
        if up.status == 200 and after != before and not _only_fstrim(before, after):
            vm.pending["agent"] = after
            if before is None:
                vm.config.pop("agent", None)
            else:
                vm.config["agent"] = before
        return self.layer.relay(up)


def _only_fstrim(before: object, after: object) -> bool:
    def options(value: object) -> dict[str, str]:
        parts = [p for p in str(value or "").split(",") if p]
        out = {}
        for i, part in enumerate(parts):
            key, _, val = part.partition("=")
            out[key if val or i else "enabled"] = val if val else key
        out.pop("fstrim_cloned_disks", None)
        return out

    return options(before) == options(after)
