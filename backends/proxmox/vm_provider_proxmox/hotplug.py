"""CPU and memory hotplug: how a VM is made for it, and what may change
while it runs.

Proxmox's rules (qemu-server, src/PVE/QemuServer.pm and
src/PVE/QemuServer/Memory.pm):

- CPU: a VM has ``cores * sockets`` possible vCPUs (``maxcpus``) and runs
  ``vcpus`` of them (all when unset). With ``cpu`` in its ``hotplug``
  setting a change of ``vcpus`` is applied to the running VM, never beyond
  ``maxcpus`` ("you can't add more vcpus than maxcpus", QemuServer.pm
  ``qemu_cpu_hotplug``); ``cores`` and ``sockets`` change only at the next
  start.
- Memory: with ``memory`` in ``hotplug`` the VM starts with 1024 MiB of
  static memory (it needs at least that, and ``numa=1``: "NUMA needs to be
  enabled for memory hotplug", Memory.pm ``config``) and the rest in DIMMs:
  32 of 512 MiB, then 32 of 1024 MiB, doubling every 32 (Memory.pm
  ``foreach_dimm``); with ``hugepages=1024`` the static memory is 1024 MiB
  per socket and the DIMMs start at 1024 MiB. Growth plugs whole DIMMs, so a running VM reaches only
  those sizes. Shrinking unplugs DIMMs, which needs the guest to let go of
  them; the backend does not try it.

A new VM is made for both when ``cpu_memory_hotplug`` is set or its class's
PerformanceProfile asks (CPUHotAddEnabled, MemoryHotAddEnabled): ``cores``
is its maximum (``max_vcpus``, default 2 x the class's CPU, at least 4) with
one socket, ``vcpus`` the class's CPU, ``numa=1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider_core.specs import VMClass

from .settings import ProxmoxSettings

#: Memory a memory-hotplug VM starts with before any DIMM (Memory.pm ``$STATICMEM``).
STATIC_MIB = 1024
DEFAULT_HOTPLUG = "network,disk,usb"


def features(config: Mapping[str, Any]) -> set[str]:
    """The VM's ``hotplug`` features (PVE's default: network, disk, usb)."""
    value = str(config.get("hotplug", DEFAULT_HOTPLUG))
    if value in ("1", ""):
        return set(DEFAULT_HOTPLUG.split(","))
    return set() if value == "0" else set(value.split(","))


def max_vcpus(config: Mapping[str, Any]) -> int:
    return int(config.get("cores", 1) or 1) * int(config.get("sockets", 1) or 1)


def vcpus(config: Mapping[str, Any]) -> int:
    """The vCPUs the VM runs with."""
    return int(config.get("vcpus", 0) or 0) or max_vcpus(config)


def memory_mib(config: Mapping[str, Any]) -> int:
    """``memory`` is ``[current=]<MiB>`` (512 when unset)."""
    value = str(config.get("memory", "512")).strip()
    return int(value.removeprefix("current="))


def cpu_hotplug(config: Mapping[str, Any]) -> bool:
    return "cpu" in features(config)


def memory_hotplug(config: Mapping[str, Any]) -> bool:
    return "memory" in features(config) and str(config.get("numa", "0")) == "1"


def applied_online(key: str, config: dict[str, Any]) -> bool:
    """Whether Proxmox changes ``key`` of the running VM at once (rather
    than keeping it pending)."""
    return (key == "vcpus" and cpu_hotplug(config)) or (key == "memory" and memory_hotplug(config))


def dimm_sizes(upto: int, config: Mapping[str, Any]) -> list[int]:
    """The memory sizes (MiB) a memory-hotplug VM (``config``) reaches by
    plugging DIMMs, up to the first at or above ``upto``."""
    gib_pages = str(config.get("hugepages", "")) == "1024"
    static = STATIC_MIB * (int(config.get("sockets", 1) or 1) if gib_pages else 1)
    sizes, size, dimm = [static], static, 1024 if gib_pages else 512
    for _ in range(8):
        for _ in range(32):
            if size >= upto:
                return sizes
            size += dimm
            sizes.append(size)
        dimm *= 2
    return sizes


def plan_cpu(settings: ProxmoxSettings, cpu: int) -> int:
    """The maximum vCPUs (``cores``) of a hotplug VM that runs ``cpu``."""
    return max(settings.max_vcpus or max(2 * cpu, 4), cpu)


def hot_config(
    vm_class: VMClass, settings: ProxmoxSettings, cores: int, memory: int, field_name: str, *, new: bool
) -> dict[str, tuple[Any, str]]:
    """Config keys (value, request field) that make a VM hot-pluggable, or
    {} when neither the settings (``new`` VMs only) nor the class ask for
    it. Memory hotplug is left out, with CPU hotplug kept, for a VM under
    1024 MiB unless its class asks for it (then the caller refuses the
    class). ``cores`` and ``vcpus`` only for a ``new`` VM (Reconfigure
    plans its CPUs itself)."""
    perf = vm_class.performance_profile
    by_settings = new and settings.cpu_memory_hotplug
    want_cpu = by_settings or bool(perf and perf.cpu_hot_add_enabled)
    asked_memory = bool(perf and perf.memory_hot_add_enabled)
    want_memory = asked_memory or (by_settings and memory >= STATIC_MIB)
    if not (want_cpu or want_memory):
        return {}
    origin = f"{field_name}.PerformanceProfile"
    hot = DEFAULT_HOTPLUG.split(",")
    out: dict[str, tuple[Any, str]] = {}
    if want_cpu:
        hot.append("cpu")
    if want_cpu and new:
        out["cores"] = (plan_cpu(settings, cores), f"{field_name}.CPU")
        out["sockets"] = (1, f"{field_name}.CPU")
        out["vcpus"] = (cores, f"{field_name}.CPU")
    if want_memory:
        hot.append("memory")
        out["numa"] = (1, f"{origin}.MemoryHotAddEnabled")
    out["hotplug"] = (",".join(hot), origin)
    return out


def online_refusals(config: Mapping[str, Any], changes: dict[str, Any]) -> dict[str, str]:
    """For each CPU or memory key of ``changes`` a running VM with ``config``
    cannot take at once: what it needs. Keys it can take are left out."""
    out: dict[str, str] = {}
    if "vcpus" in changes and not ({"cores", "sockets"} & set(changes)):
        want, have = int(changes["vcpus"]), vcpus(config)
        if not cpu_hotplug(config):
            out["vcpus"] = "CPU hotplug needs the VM created with hotplug=cpu (settings cpu_memory_hotplug)"
        elif want < have:
            out["vcpus"] = f"removing vCPUs ({have} -> {want}) from a running VM is not done online; power it off"
    if {"cores", "sockets"} & set(changes):
        want = int(changes.get("vcpus") or max_vcpus({**config, **changes}))
        if cpu_hotplug(config):
            why = f"{want} vCPUs is above this VM's maximum of {max_vcpus(config)} (cores x sockets); power it off to raise it"
        else:
            why = "CPU hotplug needs the VM created with hotplug=cpu and vcpus within cores x sockets"
            why += " (settings cpu_memory_hotplug)"
        for key in ("cores", "sockets"):
            if key in changes:
                out[key] = why
    if "memory" in changes:
        want, have = memory_mib({"memory": changes["memory"]}), memory_mib(config)
        if not memory_hotplug(config):
            out["memory"] = "memory hotplug needs the VM created with hotplug=memory and numa=1 (settings cpu_memory_hotplug)"
        elif want < have:
            out["memory"] = f"shrinking memory of a running VM ({have} -> {want} MiB) is not done online; power it off"
        elif want not in (sizes := dimm_sizes(want, config)):
            below = max(s for s in sizes if s < want)
            out["memory"] = f"memory hotplug adds whole DIMMs: {want} MiB is not reachable online, {below} or {sizes[-1]} MiB are"
    return out
