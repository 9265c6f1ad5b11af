"""Fixtures for the fault tests: private PostgreSQL and Redis servers (one each per session), a fresh migrated
database per test, the loopback Anthropic API, and the app run against them (tests/faults/harness.py).

These tests never use the suite's own test database: everything they check is read from the private server."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batches.claude_standin import FakeAnthropicServer
from tests.conftest import service_missing
from tests.faults.harness import App, PrivatePostgres, PrivateRedis, ServerMissing, migrate, reap_orphans

TEMPLATE = "newsroom_faults_template"
_database_numbers = itertools.count(1)


def _serve(make: Callable[[], PrivatePostgres | PrivateRedis]) -> Iterator:
    """Start a private server for the session (skipped, or failed under REQUIRE_SERVICES=1, when not installed);
    it is stopped and removed afterwards, and at exit should the session end abruptly."""
    reap_orphans()
    try:
        server = make()
    except ServerMissing as exc:
        service_missing(str(exc))
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this session's own (port 54329 unless taken), which tests may stop and restart."""
    yield from _serve(PrivatePostgres)


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of this session's own (port 6391 unless taken), without persistence, which tests may restart."""
    yield from _serve(PrivateRedis)


@pytest.fixture(scope="session")
def template_database(private_postgres: PrivatePostgres) -> str:
    """A database migrated once and loaded with the 72 sample topics; each test gets a copy of it."""
    migrate(database_url=private_postgres.create_database(TEMPLATE))
    return TEMPLATE


@pytest.fixture
def database_url(private_postgres: PrivatePostgres, template_database: str) -> Iterator[str]:
    """A fresh migrated database with the sample topics, on the private server."""
    name = f"faults_{next(_database_numbers)}"
    if not private_postgres.running:
        private_postgres.start()  # an earlier test failed while the server was down
    yield private_postgres.create_database(name, template=template_database)
    if not private_postgres.running:
        private_postgres.start()
    private_postgres.drop_database(name)


@pytest.fixture
def broker_url(private_redis: PrivateRedis) -> str:
    """The private Redis, emptied (it is this session's alone)."""
    if private_redis.process is None:
        private_redis.start()
    private_redis.client().flushall()
    return private_redis.url(0)


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropicServer]:
    """The loopback Anthropic API, in this process; workers reach it over HTTP."""
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def app(database_url: str, broker_url: str, fake_api: FakeAnthropicServer, tmp_path: Path) -> Iterator[App]:
    """The app against the private servers and the fake API; its workers and commands are stopped afterwards."""
    running = App(database_url=database_url, broker_url=broker_url, api_base_url=fake_api.base_url, workdir=tmp_path)
    try:
        yield running
    finally:
        running.stop()
