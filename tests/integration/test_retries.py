"""Segment's answers, classified as the spec says, and the documented retry schedule."""

from __future__ import annotations

import asyncpg
import pytest

from relay.retry import DEFAULT_SCHEDULE
from relay.sink import Fault
from tests.conftest import RunningSink
from tests.helpers import (
    EU_MANAGEMENT,
    add_integration,
    deliveries,
    event,
    fast_forward,
    insert_events,
    run_until_idle,
    settings_for,
)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_retryable_status_schedules_the_first_retry_one_minute_later(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink, status: int
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=status, body="try later"))
    await run_until_idle(settings_for(database_url, sink.url))

    row = (await deliveries(pool))["evt_1"]
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert row["last_status_code"] == status
    assert row["wait_seconds"] == pytest.approx(60, abs=0.01)
    assert f"HTTP {status}" in row["last_error"]
    assert "try later" in row["last_error"]
    assert row["lease_token"] is None


async def test_timeout_is_retryable(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=200, delay=2.0))
    await run_until_idle(settings_for(database_url, sink.url, http_timeout_seconds=0.3))

    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
    assert "timed out after 0.3s" in row["last_error"]
    assert row["wait_seconds"] == pytest.approx(60, abs=0.01)


async def test_connection_refused_is_retryable(pool: asyncpg.Pool, database_url: str) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    await run_until_idle(settings_for(database_url, "http://127.0.0.1:9"))

    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
    assert "no answer from api.segment.io" in row["last_error"]


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (401, "refused the write key"),
        (403, "another region"),
        (404, "check the integration's region and endpoint"),
        (422, "HTTP 422"),
    ],
)
async def test_permanent_4xx_fails_at_once_with_a_plain_reason(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink, status: int, cause: str
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2)])
    sink.sink.add_fault(Fault(status=status, body="nope"))
    await run_until_idle(settings_for(database_url, sink.url))

    rows = await deliveries(pool)
    for row in rows.values():
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 1, status)
        assert cause in row["last_error"]
        assert "nope" in row["last_error"]
        assert row["next_attempt_at"] is None
    assert sink.sink.stats()["faults_served"] == 1


async def test_the_schedule_is_exactly_the_documented_one_then_the_delivery_fails(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=503, times=-1))
    settings = settings_for(database_url, sink.url)

    waits = []
    for attempt in range(1, 10):
        await run_until_idle(settings)
        row = (await deliveries(pool))["evt_1"]
        assert row["attempts"] == attempt
        if attempt < 9:
            assert row["status"] == "pending"
            waits.append(row["wait_seconds"])
            await fast_forward(pool)

    assert waits == pytest.approx([60, 120, 240, 480, 960, 1920, 3840, 21600], abs=0.01)
    assert tuple(waits) == pytest.approx(DEFAULT_SCHEDULE, abs=0.01)
    row = (await deliveries(pool))["evt_1"]
    assert row["status"] == "failed"
    assert row["next_attempt_at"] is None
    assert row["last_error"].startswith("gave up after 9 attempts; last: HTTP 503")
    assert sink.sink.stats()["faults_served"] == 9


async def test_a_retry_that_succeeds_is_delivered_and_clears_the_error(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=500))
    settings = settings_for(database_url, sink.url)
    await run_until_idle(settings)
    await fast_forward(pool)
    await run_until_idle(settings)

    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == (
        "delivered",
        2,
        200,
        None,
    )
    assert [c["messageId"] for c in sink.sink.calls()] == ["evt_1"]


async def test_custom_schedule_is_honoured(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=500, times=-1))
    settings = settings_for(database_url, sink.url, retry_schedule="10s")
    await run_until_idle(settings)
    assert (await deliveries(pool))["evt_1"]["wait_seconds"] == pytest.approx(10, abs=0.01)
    await fast_forward(pool)
    await run_until_idle(settings)
    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["attempts"]) == ("failed", 2)


async def test_retry_after_longer_than_the_schedule_is_honoured(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=503, retry_after=300))
    await run_until_idle(settings_for(database_url, sink.url))

    assert (await deliveries(pool))["evt_1"]["wait_seconds"] == pytest.approx(300, abs=0.01)


async def test_retry_after_shorter_than_the_schedule_does_not_shorten_it(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=503, retry_after=5))
    await run_until_idle(settings_for(database_url, sink.url))

    assert (await deliveries(pool))["evt_1"]["wait_seconds"] == pytest.approx(60, abs=0.01)


async def test_management_api_host_404_says_to_switch_to_the_tracking_host(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink, eu_sink: RunningSink
) -> None:
    await add_integration(pool, region="eu", endpoint=EU_MANAGEMENT)
    await insert_events(pool, [event(1)])
    eu_sink.sink.add_fault(Fault(status=404, body="Not Found"))
    await run_until_idle(settings_for(database_url, sink.url, eu_sink.url))

    row = (await deliveries(pool))["evt_1"]
    assert row["status"] == "failed"
    assert (
        "switch the integration's endpoint to https://events.eu1.segmentapis.com"
        in (row["last_error"])
    )
