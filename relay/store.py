"""The PostgreSQL adapter: migrations, claims with leases, outcomes, integrations. Each batch
operation is one statement; the SQL lives in relay/sql/*.sql."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from relay.dispatch import Claimed, Outcome

SCHEMA_VERSION = 3
# A connection of one's own or one borrowed from a pool: both run queries the same way.
Conn = asyncpg.Connection | PoolConnectionProxy
NOTIFY_CHANNEL = "relay_deliveries"
# Any constants will do: they keep two `relay migrate` runs, or two purges, from interleaving.
_MIGRATE_LOCK = 0x72656C6179
_PURGE_LOCK = 0x72656C6170


@cache
def sql(name: str) -> str:
    return resources.files("relay").joinpath("sql", f"{name}.sql").read_text()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    kwargs.setdefault("timeout", CONNECT_TIMEOUT)
    conn: asyncpg.Connection = await asyncpg.connect(url, **kwargs)
    try:
        await _init_connection(conn)
    except BaseException:  # including cancellation: never leave a half-made connection open
        conn.terminate()
        raise
    return conn


# A statement that takes longer than this is treated as a lost connection, and a connection
# attempt that takes longer as a failure: the worker backs off and retries instead of hanging.
COMMAND_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0


def with_database(url: str, name: str) -> str:
    """The same server URL, pointing at database `name` (works for host and socket URLs)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _init_pooled_connection(conn: asyncpg.Connection) -> None:
    """Plan every execution of a prepared statement for its parameters and the tables as they
    are now. PostgreSQL otherwise settles on a generic plan after five executions and keeps it
    for the session's life: a relay started on a fresh, empty outbox planned its claim as
    sequential scans of relay.deliveries and relay.events, so each claim grew slower with the
    tables (steady p99 250-325 ms, climbing through each run; README "Benchmark"). A SET, not
    a startup parameter, so that session-mode poolers such as PgBouncer let it through."""
    await _init_connection(conn)
    await conn.execute("SET plan_cache_mode = force_custom_plan")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release, a round trip after every pooled statement (a
    fifth of the relay's CPU under steady traffic): pooled connections carry no session state
    to undo (no LISTEN or session advisory lock, the listener has its own connection; the one
    SET is the pool's own, which asyncpg's RESET ALL would drop), and asyncpg still rolls back
    a transaction left open."""


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_pooled_connection,
        reset=_keep_session,
        command_timeout=COMMAND_TIMEOUT,
        timeout=CONNECT_TIMEOUT,
    )
    return pool


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply schema.sql (idempotent) under an advisory lock; returns the schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
        await conn.execute(sql("schema"))
    return SCHEMA_VERSION


class Store:
    """Deliveries and integrations, as the worker needs them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(
        self,
        *,
        limit: int,
        per_integration: int,
        lease_seconds: float,
        max_integrations: int,
        exclude: Sequence[str] = (),
    ) -> tuple[uuid.UUID, dict[str, list[Claimed]]]:
        """Lease due deliveries of at most `max_integrations` integrations (none of `exclude`);
        returns the lease token and the claims per integration id."""
        token = uuid.uuid4()
        rows = await self.pool.fetch(
            sql("claim"), limit, per_integration, lease_seconds, token, max_integrations,
            list(exclude),
        )  # fmt: skip
        groups: dict[str, list[Claimed]] = {}
        for row in rows:
            groups.setdefault(row["integration_id"], []).append(
                Claimed(event_id=row["id"], attempts=row["attempts"], row=row)
            )
        return token, groups

    async def integrations(self, ids: Sequence[str]) -> list[Mapping[str, Any]]:
        return [dict(r.items()) for r in await self.pool.fetch(sql("integrations_by_id"), ids)]

    async def complete(
        self, token: uuid.UUID, integration_id: str, outcomes: Sequence[Outcome]
    ) -> int:
        """Record the outcomes of one integration's share held under `token`; returns rows
        updated (fewer when a lease was lost to another worker)."""
        if not outcomes:
            return 0
        # The connection's JSON codec (orjson) writes each Outcome as an object of its fields.
        updated: int = await self.pool.fetchval(
            sql("complete"), token, integration_id, list(outcomes)
        )
        return updated

    async def release(
        self, token: uuid.UUID, integration_id: str, *, after_seconds: float = 0.0
    ) -> int:
        result = await self.pool.execute(sql("release"), token, integration_id, after_seconds)
        return _row_count(result)

    async def backlog(self) -> Mapping[str, Any]:
        row = await self.pool.fetchrow(sql("backlog"))
        assert row is not None
        return dict(row.items())

    async def purge_batch(self, *, done_seconds: float, failed_seconds: float, batch: int) -> int:
        """Delete one batch of old events (and their deliveries); -1 when another worker holds
        the purge lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _PURGE_LOCK):
                return -1
            deleted: int = await conn.fetchval(sql("purge"), done_seconds, failed_seconds, batch)
            return deleted

    async def rate_limit(self, integration_id: str, seconds: float) -> None:
        await self.pool.execute(sql("rate_limit"), integration_id, seconds)


async def insert_integration(conn: Conn, values: Sequence[Any]) -> str:
    """Insert an integration (parameters in insert_integration.sql's order); returns its id.
    Runs in a savepoint so the caller's transaction survives a lost first-integration race."""
    for _ in range(2):
        try:
            async with conn.transaction():
                integration_id: str = await conn.fetchval(sql("insert_integration"), *values)
                return integration_id
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "integrations_one_bare_message_id":
                raise
    raise RuntimeError("could not insert the integration: concurrent creation kept racing")


async def listen(
    url: str, on_notify: Callable[[], None], on_lost: Callable[[], None]
) -> asyncpg.Connection:
    """A dedicated connection LISTENing for new deliveries."""
    conn = await connect(url)
    try:
        await conn.add_listener(NOTIFY_CHANNEL, lambda *_: on_notify())
    except BaseException:
        conn.terminate()
        raise
    conn.add_termination_listener(lambda _conn: on_lost())
    return conn


def _row_count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])
