"""The store's claim, hand-over and lease rules, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence

import asyncpg
import pytest

from relay import metrics
from relay.dispatch import Claimed, Outcome
from relay.model import DeliveryStatus
from relay.store import Claim, ClaimLost, Store, create_pool, listen
from tests.helpers import add_integration, deliveries, event, insert_events, wait_until


def _items(claim: Claim, integration: str, event_ids: Sequence[str]) -> list[Claimed]:
    by_id = {c.event_id: c for c in claim.groups[integration]}
    return [by_id[event_id] for event_id in event_ids]


def _delivered(claim: Claim, integration: str, *event_ids: str) -> Outcome:
    items = _items(claim, integration, event_ids)
    return Outcome(items, DeliveryStatus.DELIVERED, sent=True, status_code=200)


def _failed(claim: Claim, integration: str, *event_ids: str) -> Outcome:
    items = _items(claim, integration, event_ids)
    return Outcome(items, DeliveryStatus.FAILED, sent=True, status_code=400, error="bad")


async def _claim(
    store: Store,
    *,
    limit: int = 10,
    per_integration: int = 10,
    max_integrations: int = 10,
    hold_seconds: float = 60,
    lease_seconds: float = 60,
    exclude: Sequence[str] = (),
) -> Claim:
    return await store.claim(
        limit=limit,
        per_integration=per_integration,
        max_integrations=max_integrations,
        hold_seconds=hold_seconds,
        lease_seconds=lease_seconds,
        exclude=exclude,
    )


async def _give_back(claim: Claim) -> None:
    """Release every share, so the claim's connection goes back to the pool."""
    for integration_id in claim.groups:
        await claim.release(integration_id)


def _handed_over_total() -> float:
    return metrics.REGISTRY.get_sample_value("relay_handed_over_shares_total") or 0.0


async def _handed_over(claim: Claim) -> None:
    await wait_until(lambda: not claim.holding, seconds=10)


async def test_a_claim_holds_its_rows_until_its_shares_are_recorded(pool: asyncpg.Pool) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1), event(2)])
    store = Store(pool)

    first = await _claim(store)
    assert sorted(c.event_id for c in first.groups[integration]) == ["evt_1", "evt_2"]
    second = await _claim(store)
    assert second.groups == {}
    assert first.holding
    outcomes = [_delivered(first, integration, "evt_1", "evt_2")]
    assert await first.complete(integration, outcomes) == 2
    assert not first.holding
    rows = await deliveries(pool)
    assert {(r["status"], r["attempts"], r["lease_token"]) for r in rows.values()} == {
        ("delivered", 1, None)
    }


async def test_a_share_is_recorded_group_by_group_in_one_statement(pool: asyncpg.Pool) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 6)])
    store = Store(pool)

    claim = await _claim(store)
    retried = _items(claim, integration, ["evt_2", "evt_3"])
    pending = DeliveryStatus.PENDING
    outcomes = [
        _delivered(claim, integration, "evt_1"),
        Outcome(retried, pending, sent=True, delay=600, status_code=503, error="down"),
        _failed(claim, integration, "evt_4"),
        Outcome(_items(claim, integration, ["evt_5"]), DeliveryStatus.SKIPPED, sent=False),
    ]
    assert await claim.complete(integration, outcomes) == 5
    rows = await deliveries(pool)
    assert {
        event_id: (r["status"], r["attempts"], r["last_status_code"], r["last_error"])
        for event_id, r in rows.items()
    } == {
        "evt_1": ("delivered", 1, 200, None),
        "evt_2": ("pending", 1, 503, "down"),
        "evt_3": ("pending", 1, 503, "down"),
        "evt_4": ("failed", 1, 400, "bad"),
        "evt_5": ("skipped", 0, None, None),
    }
    due_later = await pool.fetchval(
        "SELECT count(*) FROM relay.deliveries"
        " WHERE next_attempt_at > now() + interval '500 seconds'"
    )
    assert due_later == 2
    logged = await pool.fetch(
        "SELECT event_id, attempt, outcome FROM relay.attempts ORDER BY event_id"
    )
    assert [tuple(r) for r in logged] == [
        ("evt_2", 1, "retry"), ("evt_3", 1, "retry"), ("evt_4", 1, "failed")
    ]  # fmt: skip


async def test_a_share_still_sending_is_handed_over_to_a_lease(pool: asyncpg.Pool) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1)])
    store = Store(pool)

    before = _handed_over_total()
    claim = await _claim(store, hold_seconds=0.05, lease_seconds=60)
    await _handed_over(claim)
    assert _handed_over_total() == before + 1
    row = (await deliveries(pool))["evt_1"]
    assert row["lease_token"] == claim.token
    assert await pool.fetchval("SELECT next_attempt_at > now() + interval '50 seconds'"
                               " FROM relay.deliveries")  # fmt: skip
    assert (await _claim(store)).groups == {}  # the lease keeps other claims off

    assert await claim.complete(integration, [_delivered(claim, integration, "evt_1")]) == 1
    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["lease_token"], row["attempts"]) == ("delivered", None, 1)


async def test_an_expired_lease_is_taken_over_and_the_late_owner_cannot_overwrite(
    pool: asyncpg.Pool,
) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1)])
    store = Store(pool)

    stale = await _claim(store, hold_seconds=0.05, lease_seconds=0.001)
    await _handed_over(stale)
    await asyncio.sleep(0.01)
    fresh = await _claim(store)
    assert [c.event_id for c in fresh.groups[integration]] == ["evt_1"]

    # The late owner's write waits for the new owner's transaction, then finds its row moved on.
    late = asyncio.create_task(stale.complete(integration, [_failed(stale, integration, "evt_1")]))
    await asyncio.sleep(0.2)
    assert await fresh.complete(integration, [_delivered(fresh, integration, "evt_1")]) == 1
    assert await late == 0
    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["lease_token"], row["attempts"]) == ("delivered", None, 1)


@pytest.mark.parametrize("handed_over", [False, True])
async def test_release_makes_rows_due_again_without_counting_an_attempt(
    pool: asyncpg.Pool, handed_over: bool
) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1)])
    store = Store(pool)

    claim = await _claim(store, hold_seconds=0.05 if handed_over else 60, lease_seconds=600)
    if handed_over:
        await _handed_over(claim)
    assert await claim.release("int_other") == 0
    assert await claim.release(integration) == 1
    assert not claim.holding
    again = await _claim(store)
    [[claimed]] = again.groups.values()
    assert (claimed.event_id, claimed.attempts) == ("evt_1", 0)
    # Released for later: out of claims until then, still unattempted.
    assert await again.release(integration, after_seconds=600) == 1
    assert (await _claim(store)).groups == {}
    row = (await deliveries(pool))["evt_1"]
    assert (row["attempts"], row["lease_token"]) == (0, None)


async def test_a_claim_whose_connection_dies_lets_its_rows_go_at_once(pool: asyncpg.Pool) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1), event(2)])
    store = Store(pool)

    claim = await _claim(store, lease_seconds=600)
    killed = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state = 'idle in transaction'"
    )
    assert killed == 1
    with pytest.raises(ClaimLost):
        await claim.complete(integration, [_delivered(claim, integration, "evt_1", "evt_2")])
    assert not claim.holding
    again = await _claim(store)  # no lease to wait out
    assert sorted(c.event_id for c in again.groups[integration]) == ["evt_1", "evt_2"]
    await _give_back(again)


async def test_a_hand_over_that_fails_loses_the_claim_not_the_rows(pool: asyncpg.Pool) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1)])
    store = Store(pool)

    claim = await _claim(store, hold_seconds=0.3, lease_seconds=600)
    await pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state = 'idle in transaction'"
    )
    await _handed_over(claim)
    with pytest.raises(ClaimLost):
        await claim.complete(integration, [_delivered(claim, integration, "evt_1")])
    again = await _claim(store)  # never leased: due at once
    assert [c.event_id for c in again.groups[integration]] == ["evt_1"]
    await _give_back(again)


async def test_a_claim_cut_off_from_its_relay_lets_go_after_the_lease(database_url: str) -> None:
    """PostgreSQL ends a session idle in a transaction for longer than the lease, so a relay
    that can no longer reach the database holds its rows no longer than it held a lease."""
    pool = await create_pool(database_url, max_size=3, idle_transaction_seconds=0.3)
    try:
        integration = await add_integration(pool)
        await insert_events(pool, [event(1)])
        store = Store(pool)
        claim = await _claim(store, hold_seconds=60, lease_seconds=0.3)
        await asyncio.sleep(1.0)
        again = await _claim(store)
        assert [c.event_id for c in again.groups[integration]] == ["evt_1"]
        await _give_back(again)
        with pytest.raises(ClaimLost):
            await claim.complete(integration, [_delivered(claim, integration, "evt_1")])
    finally:
        await pool.close()


async def test_claims_are_capped_per_integration_and_in_all(pool: asyncpg.Pool) -> None:
    for n in range(3):
        await add_integration(pool, app_id=f"app_{n}", write_key=f"k{n}")
    await insert_events(
        pool, [event(n * 10 + i, app_id=f"app_{n}") for n in range(3) for i in range(5)]
    )
    store = Store(pool)

    claim = await _claim(store, limit=7, per_integration=3)
    sizes = sorted(len(c) for c in claim.groups.values())
    assert sum(sizes) == 7
    assert max(sizes) == 3
    assert set(claim.integrations) == set(claim.groups)
    await _give_back(claim)


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

    two = await _claim(store, limit=100, per_integration=100, max_integrations=2)
    assert len(two.groups) == 2
    [rest] = set(ids) - set(two.groups)
    none = await _claim(store, limit=100, per_integration=100, max_integrations=5, exclude=[rest])
    assert none.groups == {}
    await _give_back(two)


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
            await _give_back(await _claim(store))
        await pool.execute(
            "INSERT INTO relay.events (id, organization_id, app_id, event_type, occurred_at,"
            " anonymous_id) SELECT 'bulk_' || g, 'org_1', 'app_1', 'Flow Viewed', now(), 'a'"
            " FROM generate_series(1, 20000) g"
        )
        before = await _sequential_scans(pool)
        claim = await _claim(store)
        assert len(claim.groups[integration]) == 10
        await _give_back(claim)
        assert await _sequential_scans(pool) == before
    finally:
        await pool.close()
