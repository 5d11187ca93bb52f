"""Two ``vm-provider`` processes sharing one PostgreSQL database.

Each test gets a database of its own in the test bed's PostgreSQL
(``testbed/postgres.sh``, found through ``vmp_testplugins.testbed``), made
with CREATE DATABASE and dropped afterwards, so tests never see each
other's rows. :func:`replicas` starts provider processes (the real CLI)
that share it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from vmp_testplugins.skips import skip_missing
from vmp_testplugins.testbed import database_url, postgres_url

from provider_core.pb import provider_pb2_grpc as pb_grpc

LEASE = 2.0
"""The state_lease the replicas run with: a dead one's tasks are interrupted within it."""


def admin_url() -> str:
    try:
        url = postgres_url()
        with psycopg.connect(url, connect_timeout=3):
            return url
    except (OSError, psycopg.Error, Exception) as exc:
        skip_missing(f"needs the test bed's PostgreSQL (bash testbed/postgres.sh start): {type(exc).__name__}")


def make_database(admin: str) -> str:
    name = f"vmp_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(admin, name)


def drop_database(admin: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a fresh database of this test's own."""
    admin = admin_url()
    url = make_database(admin)
    yield url
    drop_database(admin, url)


@dataclass
class Replica:
    served: Any  # tests/conftest.py's Served
    port: int
    health_port: int

    @property
    def stub(self) -> pb_grpc.ProviderStub:
        assert self.served.channel is not None
        return pb_grpc.ProviderStub(self.served.channel)


def toml_lines(settings: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


@pytest.fixture
def replicas(serve: Callable[..., Any], tmp_path: Path) -> Callable[..., Replica]:
    """``replicas(backend, settings, url)``: start one provider process on
    ``backend`` sharing the database at ``url``; wait for its start line."""

    def start(backend: str, settings: dict[str, Any], url: str, *, lease: float = LEASE, **server: Any) -> Replica:
        server = {"listen": "127.0.0.1:0", "health_port": 0, "state_lease": lease, "health_interval": 0.5, **server}
        config = f'[provider]\nbackend = "{backend}"\n[server]\n{toml_lines(server)}[backends.{backend}]\n{toml_lines(settings)}'
        env = {"VM_PROVIDER_SERVER_STATE_URL": url}
        served = serve(config=config, env=env)
        found = served.started()
        return Replica(served, int(found["port"]), int(found["health_port"]))

    return start


def channel_ready(replica: Replica) -> None:
    assert replica.served.channel is not None
    grpc.channel_ready_future(replica.served.channel).result(timeout=10)
