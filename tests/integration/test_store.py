"""The store's lease rules, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import gc

import asyncpg

from relay.dispatch import Outcome
from relay.model import DeliveryStatus
from relay.store import Store, create_pool, listen
from tests.helpers import add_integration, deliveries, event, insert_events


def _delivered(event_id: str) -> Outcome:
    return Outcome(event_id, DeliveryStatus.DELIVERED, 1, sent=True, status_code=200)


async def test_a_claim_hides_rows_from_other_claims_until_its_lease_expires(
    pool: asyncpg.Pool,
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2)])
    store = Store(pool)

    _token, first = await store.claim(
        limit=10, per_integration=10, lease_seconds=60, max_integrations=10
    )
    _token, second = await store.claim(
        limit=10, per_integration=10, lease_seconds=60, max_integrations=10
    )
    assert sum(len(c) for c in first.values()) == 2
    assert second == {}


async def test_an_expired_lease_is_taken_over_and_the_late_owner_cannot_overwrite(
    pool: asyncpg.Pool,
) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1)])
    store = Store(pool)

    stale, _ = await store.claim(limit=10, per_integration=10, lease_seconds=0, max_integrations=10)
    fresh, claims = await store.claim(
        limit=10, per_integration=10, lease_seconds=60, max_integrations=10
    )
    assert [c.event_id for c in claims[integration]] == ["evt_1"]

    assert await store.complete(stale, integration, [_delivered("evt_1")]) == 0
    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["lease_token"]) == ("pending", fresh)

    assert await store.complete(fresh, integration, [_delivered("evt_1")]) == 1
    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["lease_token"], row["attempts"]) == ("delivered", None, 1)


async def test_release_makes_rows_due_again_without_counting_an_attempt(pool: asyncpg.Pool) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1)])
    store = Store(pool)

    token, _ = await store.claim(
        limit=10, per_integration=10, lease_seconds=600, max_integrations=10
    )
    assert await store.release(token, "int_other") == 0
    assert await store.release(token, integration) == 1
    _token, again = await store.claim(
        limit=10, per_integration=10, lease_seconds=600, max_integrations=10
    )
    [[claimed]] = again.values()
    assert (claimed.event_id, claimed.attempts) == ("evt_1", 0)


async def test_claims_are_capped_per_integration_and_in_all(pool: asyncpg.Pool) -> None:
    for n in range(3):
        await add_integration(pool, app_id=f"app_{n}", write_key=f"k{n}")
    await insert_events(
        pool, [event(n * 10 + i, app_id=f"app_{n}") for n in range(3) for i in range(5)]
    )
    store = Store(pool)

    _token, claims = await store.claim(
        limit=7, per_integration=3, lease_seconds=60, max_integrations=10
    )
    sizes = sorted(len(c) for c in claims.values())
    assert sum(sizes) == 7
    assert max(sizes) == 3


async def test_a_listener_cancelled_while_connecting_leaves_no_connection_open(
    database_url: str,
) -> None:
    """Shutdown can cancel the LISTEN connection mid-setup; it must not leak (a leaked
    connection warns when collected, which this suite turns into an error)."""
    for step in range(40):
        task = asyncio.create_task(listen(database_url, lambda: None, lambda: None))
        await asyncio.sleep(step * 0.0005)
        task.cancel()
        try:
            conn = await task
        except asyncio.CancelledError:
            continue
        await conn.close()
    gc.collect()


async def test_claims_respect_the_integration_cap_and_exclusions(pool: asyncpg.Pool) -> None:
    ids = [await add_integration(pool, app_id=f"app_{n}", write_key=f"k{n}") for n in range(3)]
    await insert_events(
        pool, [event(n * 10 + i, app_id=f"app_{n}") for n in range(3) for i in range(2)]
    )
    store = Store(pool)

    _token, two = await store.claim(
        limit=100, per_integration=100, lease_seconds=60, max_integrations=2
    )
    assert len(two) == 2
    [rest] = set(ids) - set(two)
    _token, none = await store.claim(
        limit=100, per_integration=100, lease_seconds=60, max_integrations=5, exclude=[rest]
    )
    assert none == {}


async def _sequential_scans(pool: asyncpg.Pool) -> int:
    await pool.execute("SELECT pg_stat_force_next_flush()")
    scans: int = await pool.fetchval(
        "SELECT sum(seq_scan) FROM pg_stat_user_tables"
        " WHERE schemaname = 'relay' AND relname IN ('deliveries', 'events')"
    )
    return scans


async def test_claims_keep_using_indexes_as_a_table_grows_from_empty(database_url: str) -> None:
    """A pooled connection that first claimed from an empty outbox must not keep that plan
    (sequential scans) once the outbox has grown."""
    pool = await create_pool(database_url, min_size=1, max_size=1)  # every claim, one session
    try:
        integration = await add_integration(pool)
        store = Store(pool)
        await insert_events(pool, [event(1)])
        for _ in range(8):  # past the five executions after which PostgreSQL may cache a plan
            token, claims = await store.claim(
                limit=10, per_integration=10, lease_seconds=60, max_integrations=10
            )
            for integration_id in claims:
                await store.release(token, integration_id)
        await pool.execute(
            "INSERT INTO relay.events (id, organization_id, app_id, event_type, occurred_at,"
            " anonymous_id) SELECT 'bulk_' || g, 'org_1', 'app_1', 'Flow Viewed', now(), 'a'"
            " FROM generate_series(1, 20000) g"
        )
        before = await _sequential_scans(pool)
        _token, claims = await store.claim(
            limit=10, per_integration=10, lease_seconds=60, max_integrations=10
        )
        assert len(claims[integration]) == 10
        assert await _sequential_scans(pool) == before
    finally:
        await pool.close()
