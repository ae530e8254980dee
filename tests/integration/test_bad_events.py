"""One bad event never fails its batch-mates, never crashes the worker, and says what is wrong."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from relay.sink import Fault
from tests.conftest import RunningSink
from tests.helpers import (
    add_integration,
    deliveries,
    event,
    insert_events,
    run_until_idle,
    settings_for,
)


async def test_batch_rejected_with_400_is_split_until_the_culprit_stands_alone(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 9)])
    sink.sink.add_fault(Fault(status=400, times=-1, message_id="evt_6", body="bad call"))
    await run_until_idle(settings_for(database_url, sink.url, concurrency=1))

    rows = await deliveries(pool)
    assert rows.pop("evt_6")["status"] == "failed"
    assert {r["status"] for r in rows.values()} == {"delivered"}
    assert {r["attempts"] for r in rows.values()} == {1}
    assert sorted(c["messageId"] for c in sink.sink.calls()) == sorted(rows)
    # 8 → 4+4 → 2+2 → 1+1: the good halves are sent once each.
    assert len(sink.sink.requests) == 7


async def test_culprit_of_a_400_fails_permanently_with_the_reason(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2)])
    sink.sink.add_fault(Fault(status=400, times=-1, message_id="evt_2", body="invalid payload"))
    await run_until_idle(settings_for(database_url, sink.url))

    row = (await deliveries(pool))["evt_2"]
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 1, 400)
    assert "rejected this event as invalid or too large: invalid payload" in row["last_error"]


async def test_event_over_32_kb_fails_before_sending_and_its_batch_mates_go(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2, traits={"essay": "x" * 40_000}), event(3)])
    await run_until_idle(settings_for(database_url, sink.url))

    rows = await deliveries(pool)
    assert rows["evt_2"]["status"] == "failed"
    assert rows["evt_2"]["attempts"] == 0
    assert "over Segment's limit of 32768 bytes per call" in rows["evt_2"]["last_error"]
    assert sorted(c["messageId"] for c in sink.sink.calls()) == ["evt_1", "evt_3"]
    assert sink.sink.stats()["rejected"] == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event_type": "Flow Clicked"}, "event_type: Input should be 'Flow Viewed'"),
        ({"anonymous_id": None}, "anonymous_id: Input should be a valid string"),
        ({"anonymous_id": "  "}, "anonymous_id: must not be empty"),
        ({"traits": ["not", "an", "object"]}, "traits: must be a JSON object"),
        ({"identities": "a string"}, "identities"),
    ],
)
async def test_malformed_outbox_row_fails_with_a_precise_reason_and_others_flow(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink, fields: dict[str, Any], reason: str
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2, **fields), event(3)])
    await run_until_idle(settings_for(database_url, sink.url))

    rows = await deliveries(pool)
    assert rows["evt_2"]["status"] == "failed"
    assert rows["evt_2"]["last_error"].startswith("malformed event: ")
    assert reason in rows["evt_2"]["last_error"]
    assert sorted(c["messageId"] for c in sink.sink.calls()) == ["evt_1", "evt_3"]


async def test_outbox_accepts_malformed_rows_so_the_product_transaction_never_fails(
    pool: asyncpg.Pool,
) -> None:
    await add_integration(pool)
    await pool.execute(
        "INSERT INTO relay.events (id, organization_id, app_id, event_type, occurred_at, traits, "
        "identities, \"references\") VALUES ('evt_odd', 'org_1', 'app_1', 'Something Else', now(), "
        "'42', '\"text\"', 'null')"
    )
    assert await pool.fetchval("SELECT count(*) FROM relay.deliveries") == 1


async def test_integration_with_invalid_stored_settings_holds_its_events(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    integration = await add_integration(pool)
    await pool.execute(
        """UPDATE relay.integrations SET event_settings = '{"Flow Viewed": {"rename": ""}}' """
        "WHERE id = $1",
        integration,
    )
    await insert_events(pool, [event(1)])
    await run_until_idle(settings_for(database_url, sink.url))

    row = (await deliveries(pool))["evt_1"]
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert "integration settings are invalid" in row["last_error"]
    assert sink.sink.calls() == []


@pytest.mark.parametrize(
    ("occurred_at", "shown"),
    [("20000-01-01 12:00:00+00", "'20000-01-01 "), ("0500-01-01 12:00:00+00 BC", "'0500-01-01 "),
     ("infinity", "'infinity'"), ("-infinity", "'-infinity'")],
)  # fmt: skip
async def test_a_time_python_cannot_hold_fails_that_event_alone(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink, occurred_at: str, shown: str
) -> None:
    """PostgreSQL keeps times that Python's datetime cannot (years past 9999 or BC, infinity):
    such a row once failed every claim it was part of, so nothing behind it was ever sent."""
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2), event(3)])
    await pool.execute(
        "UPDATE relay.events SET occurred_at = $1::text::timestamptz WHERE id = 'evt_2'",
        occurred_at,
    )
    await run_until_idle(settings_for(database_url, sink.url))

    rows = await deliveries(pool)
    assert rows["evt_2"]["status"] == "failed"
    error = rows["evt_2"]["last_error"]
    assert error.startswith(f"malformed event: occurred_at: {shown}")
    assert error.endswith("is not a time Segment can take (years 1 to 9999)")
    assert sorted(c["messageId"] for c in sink.sink.calls()) == ["evt_1", "evt_3"]


async def test_a_creation_time_python_cannot_hold_does_not_stop_the_event(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    """created_at feeds only the latency metric; an odd one (set by the product) must not fail
    the claim as it once did, when the claim decoded it."""
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2)])
    await pool.execute("UPDATE relay.events SET created_at = '20000-01-01' WHERE id = 'evt_2'")
    await run_until_idle(settings_for(database_url, sink.url))

    rows = await deliveries(pool)
    assert {r["status"] for r in rows.values()} == {"delivered"}
    assert sorted(c["messageId"] for c in sink.sink.calls()) == ["evt_1", "evt_2"]


@pytest.mark.parametrize(
    "traits",
    ['{"n": 1e400}', '{"deep": ' + "[" * 1100 + "]" * 1100 + "}"],
    ids=["a number past a double", "nesting past 1024"],
)
async def test_json_that_python_cannot_decode_fails_that_event_alone(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink, traits: str
) -> None:
    """Valid jsonb that orjson refuses once failed every claim it was part of. The claim now
    reads JSON as text and sends it verbatim, so it reaches the endpoint, which rejects it (as
    the sink does with 400), and bisection fails that event alone."""
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2), event(3)])
    await pool.execute(
        "UPDATE relay.events SET traits = $1::text::jsonb WHERE id = 'evt_2'", traits
    )
    await run_until_idle(settings_for(database_url, sink.url))

    rows = await deliveries(pool)
    assert (rows["evt_2"]["status"], rows["evt_2"]["last_status_code"]) == ("failed", 400)
    assert sorted(c["messageId"] for c in sink.sink.calls()) == ["evt_1", "evt_3"]
