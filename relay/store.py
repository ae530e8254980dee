"""The PostgreSQL adapter: migrations, claims with leases, outcomes, integrations. Each batch
operation is one statement; the SQL lives in relay/sql/*.sql."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import cache, partial
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from relay import metrics
from relay.dispatch import Claimed, Outcome

SCHEMA_VERSION = 3
# A connection of one's own or one borrowed from a pool: both run queries the same way.
Conn = asyncpg.Connection | PoolConnectionProxy
# A row's physical address (ctid), as PostgreSQL writes it: "(block,line)".
Tid = str
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


async def _init_pooled_connection(
    conn: asyncpg.Connection, *, idle_transaction_seconds: float | None = None
) -> None:
    """Plan every execution of a prepared statement for its parameters and the tables as they
    are now. PostgreSQL otherwise settles on a generic plan after five executions and keeps it
    for the session's life: a relay started on a fresh, empty outbox planned its claim as
    sequential scans of relay.deliveries and relay.events, so each claim grew slower with the
    tables (steady p99 250-325 ms, climbing through each run; README "Benchmark"). SETs, not
    startup parameters, so that session-mode poolers such as PgBouncer let them through.

    With `idle_transaction_seconds`, PostgreSQL ends a session left idle inside a transaction
    that long: a claim's row locks (Claim) then never outlive the lease they stand in for, even
    when the relay is cut off from the database without the connection closing."""
    await _init_connection(conn)
    await conn.execute("SET plan_cache_mode = force_custom_plan")
    if idle_transaction_seconds is not None:
        milliseconds = max(1, round(idle_transaction_seconds * 1000))
        await conn.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release, a round trip after every pooled statement (a
    fifth of the relay's CPU under steady traffic): pooled connections carry no session state
    to undo (no LISTEN or session advisory lock, the listener has its own connection; the one
    SET is the pool's own, which asyncpg's RESET ALL would drop), and asyncpg still rolls back
    a transaction left open."""


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    idle_transaction_seconds: float | None = None,
) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=partial(_init_pooled_connection, idle_transaction_seconds=idle_transaction_seconds),
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


# What complete.sql reads of each Outcome, besides its rows.
_OUTCOME_FIELDS = [f.name for f in dataclasses.fields(Outcome) if f.name != "deliveries"]


class ClaimLost(Exception):
    """A claim's transaction ended (its connection was lost) before a share's outcomes were
    written: the rows are due again, and whoever claims them sends the same messageIds."""


class Claim:
    """Due deliveries claimed in one transaction that stays open while they are sent.

    The claim only locks its rows (FOR NO KEY UPDATE SKIP LOCKED), which keeps other workers
    off them, and each share's outcomes are written in the same transaction: a delivery costs
    PostgreSQL one new row version instead of two (a lease stamped at claim, then the outcome),
    about a third less database CPU when draining (README "Benchmark"). Shares still sending
    after `hold_seconds` are handed over to a lease (next_attempt_at moved ahead, lease_token
    stamped) and the transaction commits, so a slow endpoint never keeps a connection, row
    locks or vacuum's horizon for long. If the connection dies, its locks go with it: the rows
    are due again at once, with no lease to wait out.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        conn: PoolConnectionProxy | None,
        groups: dict[str, list[Claimed]],
        integrations: dict[str, Mapping[str, Any]],
        tids: dict[str, dict[str, Tid]],
        *,
        hold_seconds: float,
        lease_seconds: float,
    ) -> None:
        self.token = uuid.uuid4()
        self.groups = groups
        self.integrations = integrations  # settings as read in the claim's transaction
        # Each share's rows by event id: their physical addresses, which complete.sql updates.
        self._tids = tids
        self._pool, self._conn = pool, conn
        self._lease_seconds = lease_seconds
        # Shares whose rows this transaction still holds; the rest were handed over to a lease
        # or are finished.
        self._held = set(groups) if conn is not None else set()
        self._leased: set[str] = set()
        self._lost = False
        self._lock = asyncio.Lock()
        self._hand_over_task: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        self._timer = (
            asyncio.get_running_loop().call_later(hold_seconds, self._hand_over_soon)
            if conn is not None
            else None
        )

    @property
    def holding(self) -> bool:
        """Whether the claim's transaction is still open."""
        return self._conn is not None

    async def complete(self, integration_id: str, outcomes: Sequence[Outcome]) -> int:
        """Record the outcomes of one integration's share; returns rows updated (fewer when a
        handed-over lease expired and another worker took the rows)."""
        groups = [
            {"n": n, **{name: getattr(o, name) for name in _OUTCOME_FIELDS}}
            for n, o in enumerate(outcomes)
        ]
        # Both arrays travel as text literals: asyncpg encodes a tid[] element by element, at
        # about 1 us each (5% of the relay's CPU when draining).
        numbers = _array([str(n) for n, o in enumerate(outcomes) for _ in o.deliveries])
        rows = sum(len(o.deliveries) for o in outcomes)

        async def run(conn: Conn | asyncpg.Pool, token: uuid.UUID | None) -> int:
            # Read the addresses now, not before the lock: a hand-over may have moved the rows.
            tid_of = self._tids[integration_id]
            tids = _array([tid_of[item.event_id] for o in outcomes for item in o.deliveries])
            updated: int = await conn.fetchval(sql("complete"), token, tids, numbers, groups)
            return updated

        async with self._lock:
            if integration_id not in self._leased:
                return await self._in_transaction(integration_id, lambda c: run(c, None))
        return await run(self._pool, self.token) if rows else 0

    async def release(self, integration_id: str, *, after_seconds: float = 0.0) -> int:
        """Give back a share unsent: due again after `after_seconds`, attempts untouched."""
        event_ids = self._event_ids(integration_id)

        async def run(conn: Conn | asyncpg.Pool, token: uuid.UUID | None) -> int:
            result = await conn.execute(
                sql("release"), token, integration_id, after_seconds, event_ids
            )
            return _row_count(result)

        async with self._lock:
            if integration_id not in self._leased:
                if after_seconds <= 0:  # untouched rows are due again once the locks go
                    await self._in_transaction(integration_id, None)
                    return len(event_ids)
                return await self._in_transaction(integration_id, lambda c: run(c, None))
        return await run(self._pool, self.token)

    async def _in_transaction(
        self, integration_id: str, statement: Callable[[Conn], Awaitable[int]] | None
    ) -> int:
        """Run one share's last statement in the claim's transaction (the caller holds the
        lock), and commit once no share is left in it."""
        if self._lost:
            raise ClaimLost("the claim's database connection was lost before this share")
        if integration_id not in self._held:
            return 0  # already finished, or not in this claim
        self._held.discard(integration_id)
        conn = self._conn
        assert conn is not None
        try:
            result = await statement(conn) if statement is not None else 0
            if not self._held:
                await self._end()
        except BaseException as exc:
            await self._abandon()
            if isinstance(exc, Exception):
                raise ClaimLost(f"{type(exc).__name__}: {exc}") from exc
            raise
        return result

    def _event_ids(self, integration_id: str) -> list[str]:
        return [c.event_id for c in self.groups.get(integration_id, ())]

    def _hand_over_soon(self) -> None:
        self._hand_over_task = asyncio.create_task(self._hand_over())

    async def _hand_over(self) -> None:
        """Lease the shares still sending and commit, freeing the connection and the locks."""
        async with self._lock:
            if self._conn is None:
                return
            held = sorted(self._held)
            try:
                for integration_id in held:
                    moved = await self._conn.fetch(
                        sql("lease"),
                        self.token,
                        integration_id,
                        self._lease_seconds,
                        self._event_ids(integration_id),
                    )
                    self._tids[integration_id] = {r["event_id"]: r["tid"] for r in moved}
                await self._end()
            except Exception:
                await self._abandon()  # each share's complete() then raises ClaimLost
                return
            self._held.clear()
            self._leased.update(held)
            metrics.HANDED_OVER.inc(len(held))

    async def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        conn, self._conn = self._conn, None
        assert conn is not None
        try:
            await conn.execute("COMMIT")
        except BaseException:
            self._lost = True
            await _drop(self._pool, conn)
            raise
        await self._pool.release(conn)

    async def _abandon(self) -> None:
        """Drop the transaction with its locks. Closing the session is the one way that never
        waits on a broken connection."""
        if self._timer is not None:
            self._timer.cancel()
        self._lost = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await _drop(self._pool, conn)


async def _drop(pool: asyncpg.Pool, conn: PoolConnectionProxy) -> None:
    """Close a pooled connection whatever state it is in, and hand it back."""
    with contextlib.suppress(asyncpg.InterfaceError):  # the pool already took back a lost one
        conn.terminate()
    await pool.release(conn)


class Store:
    """Deliveries and integrations, as the worker needs them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(
        self,
        *,
        limit: int,
        per_integration: int,
        max_integrations: int,
        hold_seconds: float,
        lease_seconds: float,
        exclude: Sequence[str] = (),
    ) -> Claim:
        """Claim due deliveries of at most `max_integrations` integrations (none of `exclude`),
        with the settings of their integrations, in a transaction left open (see Claim)."""
        conn = await self.pool.acquire()
        try:
            await conn.execute("BEGIN")
            rows = await conn.fetch(
                sql("claim"), limit, per_integration, max_integrations, list(exclude)
            )
            groups: dict[str, list[Claimed]] = {}
            tids: dict[str, dict[str, Tid]] = {}
            for row in rows:
                integration_id, event_id = row["integration_id"], row["id"]
                groups.setdefault(integration_id, []).append(
                    Claimed(event_id=event_id, attempts=row["attempts"], row=row)
                )
                tids.setdefault(integration_id, {})[event_id] = row["tid"]
            integrations: dict[str, Mapping[str, Any]] = {}
            if groups:
                for r in await conn.fetch(sql("integrations_by_id"), list(groups)):
                    integrations[r["id"]] = dict(r.items())
            else:
                await conn.execute("COMMIT")
        except BaseException:
            await _drop(self.pool, conn)  # the transaction and its locks go with the session
            raise
        if not groups:
            await self.pool.release(conn)
        return Claim(
            self.pool,
            conn if groups else None,
            groups,
            integrations,
            tids,
            hold_seconds=hold_seconds,
            lease_seconds=lease_seconds,
        )

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


def _array(quoted: Sequence[str]) -> str:
    """A PostgreSQL array literal of values that need no escaping inside double quotes."""
    return '{"' + '","'.join(quoted) + '"}' if quoted else "{}"


def _row_count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])
