"""The outbox contract: what the product's inserts create, with which rights, and when the relay
notices them."""

from __future__ import annotations

import asyncio
import contextlib
import os

import asyncpg
import pytest

from relay.daemon import run_worker
from relay.model import ALL_ENDPOINTS, Region, endpoint_error
from tests.conftest import RunningSink
from tests.helpers import (
    add_integration,
    event,
    insert_events,
    run_until_idle,
    settings_for,
    wait_until,
)


@pytest.mark.parametrize("region", [*list(Region), "mars"])
@pytest.mark.parametrize("endpoint", [*ALL_ENDPOINTS, "https://example.com"])
async def test_database_accepts_exactly_the_region_endpoint_pairs_the_model_does(
    pool: asyncpg.Pool, region: str, endpoint: str
) -> None:
    model_accepts = region in set(Region) and endpoint_error(Region(region), endpoint) is None
    try:
        await pool.execute(
            "INSERT INTO relay.integrations (id, organization_id, app_id, write_key, region, "
            "endpoint) VALUES ('i', 'o', 'a', 'k', $1, $2)",
            region,
            endpoint,
        )
        database_accepts = True
    except asyncpg.CheckViolationError:
        database_accepts = False
    assert database_accepts == model_accepts


async def test_each_insert_creates_one_delivery_per_integration_of_the_app(
    pool: asyncpg.Pool,
) -> None:
    first = await add_integration(pool, write_key="k1")
    second = await add_integration(pool, write_key="k2")
    await add_integration(pool, write_key="k3", app_id="other_app")
    await insert_events(pool, [event(1), event(2)])
    await insert_events(pool, [event(3)])

    rows = await pool.fetch(
        "SELECT integration_id, event_id, status, attempts FROM relay.deliveries ORDER BY 1, 2"
    )
    assert [tuple(r.values()) for r in rows] == sorted(
        (i, f"evt_{n}", "pending", 0) for i in (first, second) for n in (1, 2, 3)
    )


async def test_the_product_needs_only_insert_on_the_outbox(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_integration(pool)
    role = f"relay_test_product_{os.getpid()}"
    await pool.execute(f"DROP ROLE IF EXISTS {role}")
    await pool.execute(f"CREATE ROLE {role}")
    try:
        await pool.execute(f"GRANT USAGE ON SCHEMA relay TO {role}")
        await pool.execute(f"GRANT INSERT ON relay.events TO {role}")
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            await conn.execute(
                "INSERT INTO relay.events (id, organization_id, app_id, event_type, occurred_at, "
                "anonymous_id) VALUES ('evt_p', 'org_1', 'app_1', 'Flow Viewed', now(), 'a')"
            )
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SELECT write_key FROM relay.integrations")
        assert await pool.fetchval("SELECT count(*) FROM relay.deliveries") == 1
    finally:
        await pool.execute(f"REVOKE ALL ON relay.events FROM {role}")
        await pool.execute(f"REVOKE ALL ON SCHEMA relay FROM {role}")
        await pool.execute(f"DROP ROLE {role}")


async def test_an_event_committed_late_is_not_skipped(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    settings = settings_for(database_url, sink.url)
    late = await pool.acquire()
    try:
        transaction = late.transaction()
        await transaction.start()
        await late.execute(
            "INSERT INTO relay.events (id, organization_id, app_id, event_type, occurred_at, "
            "anonymous_id) VALUES ('evt_late', 'org_1', 'app_1', 'Flow Viewed', now(), 'a')"
        )
        await insert_events(pool, [event(2)])
        await run_until_idle(settings)
        assert [c["messageId"] for c in sink.sink.calls()] == ["evt_2"]
        await transaction.commit()
    finally:
        await pool.release(late)
    await run_until_idle(settings)
    assert sorted(c["messageId"] for c in sink.sink.calls()) == ["evt_2", "evt_late"]


async def test_a_new_event_wakes_an_idle_worker_without_waiting_for_the_poll(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    settings = settings_for(database_url, sink.url, poll_interval_seconds=60.0)
    worker = asyncio.create_task(run_worker(settings, until_idle=False))
    try:
        await asyncio.sleep(0.5)  # let it find nothing and settle into its 60 s wait
        await insert_events(pool, [event(1)])
        await wait_until(lambda: bool(sink.sink.calls()), seconds=10)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert [c["messageId"] for c in sink.sink.calls()] == ["evt_1"]


@pytest.mark.parametrize(
    ("setting", "notifies"),
    [(None, True), ("off", False), ("FALSE", False), ("on", True), ("maybe", True)],
)
async def test_relay_notify_off_skips_the_notification_and_nothing_else(
    pool: asyncpg.Pool, database_url: str, setting: str | None, notifies: bool
) -> None:
    """`relay.notify = off` spares the product's commit the notification; the deliveries are
    created all the same, and a mistyped value notifies rather than fail the insert."""
    await add_integration(pool)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    product = await asyncpg.connect(database_url)
    try:
        await listener.add_listener("relay_deliveries", lambda *args: heard.put_nowait(args[3]))
        async with product.transaction():
            if setting is not None:
                await product.execute("SELECT set_config('relay.notify', $1, true)", setting)
            await insert_events(product, [event(1)])
        # Notifications arrive in commit order: once this marker is heard, so is the insert's.
        await product.execute("SELECT pg_notify('relay_deliveries', 'marker')")
        payloads = [await asyncio.wait_for(heard.get(), timeout=10)]
        while payloads[-1] != "marker":
            payloads.append(await asyncio.wait_for(heard.get(), timeout=10))
    finally:
        await listener.close()
        await product.close()
    assert payloads == ([""] if notifies else []) + ["marker"]
    assert await pool.fetchval("SELECT count(*) FROM relay.deliveries") == 1
