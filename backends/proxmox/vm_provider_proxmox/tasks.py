"""Proxmox tasks (UPIDs): their state for TaskStatus, and waiting for them.

A UPID names the node that runs the task
(``UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:``), so a task
is always asked for on its own node. An API error that may pass (the node
briefly unreachable, a proxy error) is retried while the caller's deadline
allows and then reported as UNAVAILABLE, never as a failed task. A failed
task reports Proxmox's exit status and the last lines of its log.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from provider_core import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ProviderError, TaskState, Unavailable

from . import errors
from .client import PveClient, backoff

UPID_RE = re.compile(
    r"^UPID:(?P<node>[A-Za-z0-9][A-Za-z0-9.-]*):(?P<pid>[0-9A-Fa-f]{8}):(?P<pstart>[0-9A-Fa-f]{8,9}):"
    r"(?P<start>[0-9A-Fa-f]{8}):(?P<type>[^:]*):(?P<id>[^:]*):(?P<user>[^:]+):$"
)
#: Log lines reported with a failed task.
LOG_TAIL = 5
#: Exit statuses that mean success (PVE reports warnings as ``WARNINGS: n``).
OK_RE = re.compile(r"^(OK|WARNINGS: \d+)$")


@dataclass(frozen=True)
class Upid:
    text: str
    node: str
    type: str
    id: str

    @property
    def path(self) -> str:
        return f"nodes/{self.node}/tasks/{self.text}"


def parse_upid(text: str) -> Upid | None:
    m = UPID_RE.match(text)
    if m is None:
        return None
    return Upid(text, m["node"], m["type"], m["id"])


def _require(text: str) -> Upid:
    upid = parse_upid(text)
    if upid is None:
        raise NotFound(f"task {text!r} is not a Proxmox task id (UPID)")
    return upid


def log_tail(client: PveClient, upid: Upid, lines: int = LOG_TAIL) -> list[str]:
    """The last lines of a task's log, without PVE's closing ``TASK ...``
    line (which repeats the exit status); [] when the log is unreadable."""
    try:
        entries: list[dict[str, Any]] = client.get(f"{upid.path}/log", start=0, limit=100000) or []
    except ProviderError:
        return []
    text = [str(e.get("t", "")) for e in entries if str(e.get("t", "")).strip()]
    text = [t for t in text if not t.startswith(("TASK ERROR:", "TASK OK", "TASK WARNINGS"))]
    return text[-lines:]


def _status(client: PveClient, upid: Upid) -> dict[str, Any]:
    """A task's status; any 5xx or connection failure is retried while the
    budget lasts (a task's state never depends on one failed poll)."""
    end = time.monotonic() + client.budget()
    attempt = 0
    while True:
        try:
            result: dict[str, Any] = client.get(f"{upid.path}/status")
            return result
        except NotFound as exc:
            raise NotFound(f"task {upid.text!r} is not known to node {upid.node}") from exc
        except InvalidArgument as exc:  # "hostname lookup 'x' failed": no such node
            raise NotFound(f"task {upid.text!r} names node {upid.node!r}, which is not in this cluster") from exc
        except (Unavailable, FailedPrecondition) as exc:  # a task's status is never refused for good: it may pass
            pause = backoff(attempt)
            if time.monotonic() + pause > end:
                if isinstance(exc, Unavailable):
                    raise
                raise Unavailable(f"cannot read the state of task {upid.text}: {exc.message}") from exc
        time.sleep(pause)
        attempt += 1


def state(client: PveClient, text: str) -> TaskState:
    """TaskStatus of a UPID. Transient API errors are retried by the client
    within the deadline and then raised (UNAVAILABLE), not reported as a
    failed task."""
    upid = _require(text)
    st = _status(client, upid)
    if st.get("status") == "running":
        return TaskState(done=False)
    exit_status = str(st.get("exitstatus", ""))
    if OK_RE.match(exit_status):
        return TaskState(done=True)
    tail = log_tail(client, upid)
    return TaskState(done=True, error=_describe_failure(upid, exit_status, tail))


def _describe_failure(upid: Upid, exit_status: str, tail: list[str]) -> str:
    text = f"Proxmox task {upid.type} on {upid.node} failed: {exit_status or 'unknown exit status'}"
    if tail:
        text += " | last log lines: " + " / ".join(tail)
    return text


def outcome(client: PveClient, text: str) -> tuple[bool, ProviderError | None]:
    """Whether a task has ended, and its translated error if it failed."""
    upid = _require(text)
    st = _status(client, upid)
    if st.get("status") == "running":
        return False, None
    exit_status = str(st.get("exitstatus", ""))
    if OK_RE.match(exit_status):
        return True, None
    return True, errors.from_task(exit_status, log_tail(client, upid))


def wait(client: PveClient, text: str, timeout: float | None = None) -> None:
    """Block until a task ends; raise its translated error when it failed.

    Used inside background work that chains several tasks. A task still
    running after ``timeout`` (default ``task_timeout_seconds``) raises
    DeadlineExceeded."""
    upid = _require(text)
    limit = client.settings.task_timeout_seconds if timeout is None else timeout
    end = time.monotonic() + limit
    attempt = 0
    while True:
        st = _status(client, upid)
        if st.get("status") != "running":
            exit_status = str(st.get("exitstatus", ""))
            if OK_RE.match(exit_status):
                return
            raise errors.from_task(exit_status, log_tail(client, upid))
        if time.monotonic() > end:
            raise DeadlineExceeded(f"Proxmox task {upid.text} still running after {limit:.0f}s")
        time.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) if attempt < 6 else backoff(3))
        attempt += 1


def stop(client: PveClient, text: str) -> None:
    """Stop a running task (``DELETE`` on it: its worker gets SIGTERM) and
    wait for it to end; how it ended is not asked. A task that has ended
    already is left as it is."""
    upid = _require(text)
    if _status(client, upid).get("status") == "running":
        client.delete(upid.path)
    try:
        wait(client, text)
    except DeadlineExceeded:
        raise
    except ProviderError:
        pass  # it failed, as it was stopped
