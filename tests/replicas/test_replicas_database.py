"""The state database failing under two replicas, and the schema's version.

The outage test runs a PostgreSQL of its own (``testbed/postgres.sh`` with
a private directory and port), so stopping it hurts no other test. The
backend is the simulator: its Create runs a task of the core for
``task_seconds``, long enough to end while the database is down.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.testbed import postgres_instance

from provider_core.pb import provider_pb2 as pb
from provider_core.state_pg import SCHEMA_VERSION, lock_id
from provider_core.testing import wait_task

SIM = {"task_seconds": 3.0}
LOCK_WEB_1 = -1080988020895811109
"""lock_id("libvirt-3f2a9c1b", "web-1") as the first version computed it."""


class Postgres:
    """A private PostgreSQL: ``postgres.sh`` on a directory and port of its own."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vmp-pg-"))
        self.dir.chmod(0o755)  # the server runs as the user postgres
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.argv, self.env = postgres_instance(self.dir / "pg", self.port)

    def run(self, action: str) -> str:
        done = subprocess.run([*self.argv, action], env=self.env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def close(self) -> None:
        self.run("purge")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[Postgres]:
    if shutil.which("runuser") is None or os.geteuid() != 0:
        skip_missing("a private PostgreSQL needs root and runuser (it runs as the user postgres)")
    pg = Postgres()
    try:
        pg.run("start")
    except AssertionError as exc:
        pg.close()
        skip_missing(f"cannot start a private PostgreSQL (testbed/install.sh installs it): {exc}")
    yield pg
    pg.close()


def create(name: str) -> pb.CreateRequest:
    return pb.CreateRequest(name=name, class_json=json.dumps({"CPU": 1, "MemoryMiB": 256}))


def ready(replica: Any) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.health_port}/readyz", timeout=5) as reply:
            return reply.status == 200
    except urllib.error.HTTPError:
        return False


def health(replica: Any) -> int:
    stub = health_pb2_grpc.HealthStub(replica.served.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.1)


def test_database_stopped_and_started_unavailable_then_recovery_nothing_lost(
    replicas: Callable[..., Any], private_postgres: Postgres
) -> None:
    url = private_postgres.run("url")
    password = url.split(":")[2].split("@")[0]
    a = replicas("sim", SIM, url)
    b = replicas("sim", SIM, url)
    created = a.stub.Create(create("outage"), timeout=10)
    assert created.task.id.startswith("task-")  # acknowledged: its record is in the database

    private_postgres.run("stop")
    with pytest.raises(grpc.RpcError) as info:
        b.stub.TaskStatus(pb.TaskStatusRequest(task=created.task), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "state database" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        b.stub.Create(create("while-down"), timeout=15)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    until(lambda: not ready(a) and not ready(b), 10, "/readyz still says ready with the database down")
    assert health(a) == health_pb2.HealthCheckResponse.NOT_SERVING
    time.sleep(SIM["task_seconds"])  # the task ends while the database is down

    private_postgres.run("start")
    until(lambda: ready(a) and ready(b), 20, "the replicas did not reconnect on their own")
    assert health(b) == health_pb2.HealthCheckResponse.SERVING
    until(lambda: b.stub.TaskStatus(pb.TaskStatusRequest(task=created.task), timeout=10).done, 10, "task not done")
    assert b.stub.TaskStatus(pb.TaskStatusRequest(task=created.task), timeout=10).error == ""
    again = b.stub.Create(create("after"), timeout=10)  # serving again
    wait_task(a.stub, again.task, timeout=30)
    for replica in (a, b):
        assert password not in replica.served.text, "the database password reached the log"
        assert "Traceback" not in replica.served.text


def test_schema_is_versioned_and_a_newer_one_refuses_the_start(
    replicas: Callable[..., Any], database: str, cli: Callable[..., Any]
) -> None:
    replicas("sim", SIM, database)  # migrates the empty database
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT version FROM vmp_schema").fetchall() == [(SCHEMA_VERSION,)]
        conn.execute("UPDATE vmp_schema SET version = %s", (SCHEMA_VERSION + 1,))
    password = database.split(":")[2].split("@", maxsplit=1)[0]
    done = cli("--backend", "sim", "--listen", "127.0.0.1:0", env={"VM_PROVIDER_SERVER_STATE_URL": database})
    assert done.returncode == 2, done.stderr
    assert f"schema is version {SCHEMA_VERSION + 1}, newer than this vm-provider's ({SCHEMA_VERSION})" in done.stderr
    assert password not in done.stderr


def test_unreachable_database_refuses_the_start_without_its_password(cli: Callable[..., Any]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there
    url = f"postgresql://vmp:sw0rdfish-secret@127.0.0.1:{port}/state"
    done = cli("--backend", "sim", "--listen", "127.0.0.1:0", env={"VM_PROVIDER_SERVER_STATE_URL": url})
    assert done.returncode == 2, done.stderr
    assert "cannot reach the database at postgresql://***@127.0.0.1" in done.stderr, done.stderr
    assert "sw0rdfish-secret" not in done.stderr


def test_a_malformed_state_url_refuses_the_start_without_its_password(cli: Callable[..., Any]) -> None:
    """libpq's parser quotes what it could not parse, the password too."""
    for url in ("postgresql://vmp:sw0rd%zzfish@127.0.0.1/state", "postgresql://vmp:sw0rdfish@127.0.0.1/state?bogus=1"):
        done = cli("--backend", "sim", "--listen", "127.0.0.1:0", env={"VM_PROVIDER_SERVER_STATE_URL": url})
        assert done.returncode == 2, done.stderr
        assert "state_url is not a valid PostgreSQL URL" in done.stderr, done.stderr
        assert "sw0rd" not in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_state_url_is_a_secret_and_must_be_postgresql(cli: Callable[..., Any], tmp_path: Path) -> None:
    shown = cli("--backend", "sim", "config", env={"VM_PROVIDER_SERVER_STATE_URL": "postgresql://u:pw-123@db/state"})
    assert shown.returncode == 0, shown.stderr
    assert 'state_url = "********"' in shown.stdout
    assert "pw-123" not in shown.stdout + shown.stderr
    secret = tmp_path / "state-url"  # a mounted Secret
    secret.write_text("postgresql://u:pw-123@db/state\n")
    from_file = cli("--backend", "sim", "config", env={"VM_PROVIDER_SERVER_STATE_URL_FILE": str(secret)})
    assert from_file.returncode == 0, from_file.stderr
    assert 'state_url = "********"' in from_file.stdout
    assert "pw-123" not in from_file.stdout
    wrong = cli("--backend", "sim", "config", env={"VM_PROVIDER_SERVER_STATE_URL": "mysql://u:pw-123@db/state"})
    assert wrong.returncode == 2
    assert "state_url: has scheme 'mysql': give a postgresql://... URL" in wrong.stderr
    assert "pw-123" not in wrong.stderr
    lease = cli("--backend", "sim", "config", env={"VM_PROVIDER_SERVER_STATE_LEASE": "45"})
    assert lease.returncode == 2
    assert "state_lease" in lease.stderr


def test_lock_numbers_stay_the_same_across_versions() -> None:
    """Replicas of different versions (a rolling upgrade) must agree on a
    VM's lock: the hash of a key is fixed, scoped by backend and endpoint."""
    assert lock_id("libvirt-3f2a9c1b", "web-1") == lock_id("libvirt-3f2a9c1b", "web-1")
    assert lock_id("libvirt-3f2a9c1b", "web-1") != lock_id("libvirt-00000000", "web-1")
    assert lock_id("libvirt-3f2a9c1b", "web-1") == LOCK_WEB_1
    assert -(2**63) <= LOCK_WEB_1 < 2**63
