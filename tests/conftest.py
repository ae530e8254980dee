"""Shared fixtures: one PostgreSQL per test session (embedded, or RELAY_TEST_DATABASE_URL), a
migrated template database cloned for every test, and sinks served on real loopback ports."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from relay.embedded import embedded_postgres
from relay.sink import Sink, start_sink
from relay.store import connect, create_pool, migrate, with_database

TEMPLATE = f"relay_template_{os.getpid()}"
_counter = itertools.count()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server where tests may create databases."""
    given = os.environ.get("RELAY_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with embedded_postgres() as url:
        yield url


async def _admin(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    """A database with the relay schema, cloned by every test (CREATE DATABASE … TEMPLATE)."""

    async def create() -> None:
        await _admin(
            server_url, f"DROP DATABASE IF EXISTS {TEMPLATE}", f"CREATE DATABASE {TEMPLATE}"
        )
        conn = await connect(with_database(server_url, TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield with_database(server_url, TEMPLATE)
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)"))


@pytest.fixture
async def database_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"relay_test_{os.getpid()}_{next(_counter)}"
    await _admin(server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield with_database(server_url, name)
    await _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=4)
    yield p
    await p.close()


class RunningSink:
    """A sink served on a loopback port, with its state at hand."""

    def __init__(self, sink: Sink, url: str) -> None:
        self.sink = sink
        self.url = url


async def _serve_sink() -> AsyncIterator[RunningSink]:
    s = Sink()
    runner, url = await start_sink(s)
    yield RunningSink(s, url)
    await runner.cleanup()


@pytest.fixture
async def sink() -> AsyncIterator[RunningSink]:
    """The sink the global endpoint is mapped to (and the EU ones, unless eu_sink is used)."""
    async for running in _serve_sink():
        yield running


@pytest.fixture
async def eu_sink() -> AsyncIterator[RunningSink]:
    """A second sink, for the EU endpoints."""
    async for running in _serve_sink():
        yield running
