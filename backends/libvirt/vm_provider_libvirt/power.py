"""Power: on, off, reboot, graceful shutdown. All idempotent.

===================  ==========================================================
op                   what happens, by current state
===================  ==========================================================
ON                   shutoff/crashed: start; paused: resume; pmsuspended: wake
                     up; running: nothing
OFF                  active: destroy (power cut); shutoff: nothing
REBOOT               running: ask the guest (ACPI, or the agent when
                     connected) and wait for the reboot event up to the
                     graceful timeout, then reset (hardware reset); paused:
                     reset and resume; shutoff: start (a stopped VM rebooted
                     is started)
SHUTDOWN_GRACEFUL    running: ask the guest, poll until it is off, destroy
                     once the graceful timeout passed; paused: a paused guest
                     cannot react, so it is destroyed after the timeout
                     unless something resumes it; shutoff: nothing
===================  ==========================================================

Graceful shutdown and reboot return a task at once (``Outcome.later``); the
VM stays locked against other mutations until the task ends. On libvirt's
test driver a reboot completes within the call (it sends no events).
"""

from __future__ import annotations

import logging
import threading
import time

import libvirt

from provider_core import Outcome, PowerOp

from . import connection, errors
from .session import Session

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
STOPPED = frozenset({libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_NOSTATE})


def power(session: Session, vm_id: str, op: PowerOp, graceful_timeout: float) -> Outcome[None]:
    dom = session.lookup(vm_id)
    context = f"VM {dom.name()!r}"
    with session.translated(context):
        state = dom.state()[0]
        if op is PowerOp.ON:
            start(dom, state)
        elif op is PowerOp.OFF:
            if state not in STOPPED:
                dom.destroy()
        elif op is PowerOp.REBOOT:
            return _reboot(session, dom, state, graceful_timeout, context)
        elif op is PowerOp.SHUTDOWN_GRACEFUL:
            if state in STOPPED:
                return Outcome.done(None)
            ask_shutdown(dom)
            return Outcome.later(None, lambda: _finish_shutdown(session, dom, graceful_timeout, context))
    return Outcome.done(None)


def start(dom: libvirt.virDomain, state: int) -> None:
    """Bring a domain to running from whatever state it is in."""
    if state == libvirt.VIR_DOMAIN_CRASHED:
        dom.destroy()
        dom.create()
    elif state in STOPPED:
        dom.create()
    elif state == libvirt.VIR_DOMAIN_PAUSED:
        dom.resume()
    elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        dom.pMWakeup(0)


def ask_shutdown(dom: libvirt.virDomain) -> None:
    """Ask the guest to shut down; a paused guest cannot be asked (libvirt
    refuses), it is forced off after the timeout instead."""
    with errors.ignoring(lambda exc: errors.is_invalid_in_state(exc) and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED):
        dom.shutdown()


def wait_stopped(dom: libvirt.virDomain, timeout: float) -> bool:
    """Poll until the domain is off; False when ``timeout`` passed first."""
    end = time.monotonic() + timeout
    while True:
        if dom.state()[0] in STOPPED:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_SECONDS)


def _finish_shutdown(session: Session, dom: libvirt.virDomain, timeout: float, context: str) -> None:
    with session.translated(context):
        if wait_stopped(dom, timeout):
            return
        log.info("%s did not shut down within %.0fs; forcing it off", context, timeout)
        with errors.ignoring(errors.is_invalid_in_state):  # it went off meanwhile
            dom.destroy()


def _reboot(session: Session, dom: libvirt.virDomain, state: int, timeout: float, context: str) -> Outcome[None]:
    if state in STOPPED:
        start(dom, state)
        return Outcome.done(None)
    if state == libvirt.VIR_DOMAIN_PAUSED:
        dom.reset(0)
        dom.resume()
        return Outcome.done(None)
    if not session.host().reboot_events:
        dom.reboot(0)
        return Outcome.done(None)
    rebooted = threading.Event()
    conn = session.conn()

    def on_reboot(_conn: libvirt.virConnect, _dom: libvirt.virDomain, _opaque: object) -> None:
        rebooted.set()

    connection.hold_event_loop()  # delivers the event; released once the wait is over
    try:
        callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, on_reboot, None)
    except BaseException:
        connection.release_event_loop()
        raise
    asked = False
    try:
        with errors.ignoring(errors.any_error):  # the guest cannot be asked: it is reset instead
            dom.reboot(0)
            asked = True
    except BaseException:
        _deregister(conn, callback)
        raise
    if not asked:
        _deregister(conn, callback)
        log.info("%s: the guest cannot be asked to reboot; resetting it", context)
        dom.reset(0)
        return Outcome.done(None)

    def finish() -> None:
        try:
            with session.translated(context):
                if not rebooted.wait(timeout) and dom.state()[0] not in STOPPED:
                    log.info("%s did not reboot within %.0fs; resetting it", context, timeout)
                    dom.reset(0)
        finally:
            _deregister(conn, callback)

    return Outcome.later(None, finish)


def _deregister(conn: libvirt.virConnect, callback: int) -> None:
    """Drop the reboot callback and the event loop :func:`_reboot` held."""
    try:
        with errors.ignoring(errors.any_error):  # the connection went away with it
            conn.domainEventDeregisterAny(callback)
    finally:
        connection.release_event_loop()
