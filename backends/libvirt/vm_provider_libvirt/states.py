"""The one table from libvirt domain states to the protocol's power states.

=============  ===========  ==================================================
libvirt state  power state  why
=============  ===========  ==================================================
running        On
blocked        On           running, waiting on a resource
paused         Suspended    frozen by the host (user, snapshot, I/O error...);
                            never Off: memory is intact and it resumes
pmsuspended    Suspended    the guest suspended itself (S3/S4)
shutdown       On           shutting down: still running until it is shutoff
shutoff        Off
crashed        Off          the guest is dead; nothing runs (only seen with
                            ``on_crash`` preserve/coredump), Power ON restarts it
nostate        Unknown
=============  ===========  ==================================================

The native state word and its reason go into Describe's raw details.
"""

from __future__ import annotations

from typing import NamedTuple

import libvirt

from provider_core import PowerState


class NativeState(NamedTuple):
    name: str
    power: PowerState


STATES: dict[int, NativeState] = {
    libvirt.VIR_DOMAIN_NOSTATE: NativeState("nostate", PowerState.UNKNOWN),
    libvirt.VIR_DOMAIN_RUNNING: NativeState("running", PowerState.ON),
    libvirt.VIR_DOMAIN_BLOCKED: NativeState("blocked", PowerState.ON),
    libvirt.VIR_DOMAIN_PAUSED: NativeState("paused", PowerState.SUSPENDED),
    libvirt.VIR_DOMAIN_SHUTDOWN: NativeState("shutdown", PowerState.ON),
    libvirt.VIR_DOMAIN_SHUTOFF: NativeState("shutoff", PowerState.OFF),
    libvirt.VIR_DOMAIN_CRASHED: NativeState("crashed", PowerState.OFF),
    libvirt.VIR_DOMAIN_PMSUSPENDED: NativeState("pmsuspended", PowerState.SUSPENDED),
}

UNKNOWN = NativeState("unknown", PowerState.UNKNOWN)


def _reasons(prefix: str, *names: str) -> dict[int, str]:
    """``VIR_DOMAIN_<PREFIX>_<NAME>`` constants -> lower-case name."""
    return {
        getattr(libvirt, f"VIR_DOMAIN_{prefix}_{n}"): n.lower() for n in names if hasattr(libvirt, f"VIR_DOMAIN_{prefix}_{n}")
    }


#: Reason words per state (libvirt's virDomain*Reason enums).
REASONS: dict[int, dict[int, str]] = {
    libvirt.VIR_DOMAIN_RUNNING: _reasons(
        "RUNNING",
        "UNKNOWN",
        "BOOTED",
        "MIGRATED",
        "RESTORED",
        "FROM_SNAPSHOT",
        "UNPAUSED",
        "MIGRATION_CANCELED",
        "SAVE_CANCELED",
        "WAKEUP",
        "CRASHED",
        "POSTCOPY",
        "POSTCOPY_FAILED",
    ),
    libvirt.VIR_DOMAIN_BLOCKED: _reasons("BLOCKED", "UNKNOWN"),
    libvirt.VIR_DOMAIN_PAUSED: _reasons(
        "PAUSED",
        "UNKNOWN",
        "USER",
        "MIGRATION",
        "SAVE",
        "DUMP",
        "IOERROR",
        "WATCHDOG",
        "FROM_SNAPSHOT",
        "SHUTTING_DOWN",
        "SNAPSHOT",
        "CRASHED",
        "STARTING_UP",
        "POSTCOPY",
        "POSTCOPY_FAILED",
        "API_ERROR",
    ),
    libvirt.VIR_DOMAIN_SHUTDOWN: {0: "unknown", 1: "user"},
    libvirt.VIR_DOMAIN_SHUTOFF: _reasons(
        "SHUTOFF", "UNKNOWN", "SHUTDOWN", "DESTROYED", "CRASHED", "MIGRATED", "SAVED", "FAILED", "FROM_SNAPSHOT", "DAEMON"
    ),
    libvirt.VIR_DOMAIN_CRASHED: _reasons("CRASHED", "UNKNOWN", "PANICKED"),
    libvirt.VIR_DOMAIN_PMSUSPENDED: _reasons("PMSUSPENDED", "UNKNOWN"),
}


def native(state: int) -> NativeState:
    """The native state word and power state of a libvirt state number."""
    return STATES.get(state, UNKNOWN)


def power_state(state: int) -> PowerState:
    return native(state).power


def reason(state: int, reason_code: int) -> str:
    """The reason word of a state/reason pair (``user`` for a user pause)."""
    return REASONS.get(state, {}).get(reason_code, f"reason-{reason_code}")
