"""Facts of Segment's API that silently lose data when ignored (issue 6), checked against the
sink, which enforces them the way Segment does."""

from __future__ import annotations

import aiohttp
import asyncpg
import orjson
import pytest

from relay.segment import MAX_MESSAGE_ID_LENGTH
from relay.sender import basic_auth
from relay.sink import Fault, Sink, start_sink
from tests.conftest import RunningSink
from tests.helpers import (
    add_integration,
    deliveries,
    event,
    fast_forward,
    insert_events,
    run_until_idle,
    settings_for,
)


async def test_first_integration_sends_bare_ids_and_a_second_one_suffixed_ids(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    first = await add_integration(pool, write_key="key-first-0001")
    second = await add_integration(pool, write_key="key-second-0002")
    suffix = await pool.fetchval(
        "SELECT message_id_suffix FROM relay.integrations WHERE id = $1", second
    )
    assert (
        await pool.fetchval("SELECT message_id_suffix FROM relay.integrations WHERE id = $1", first)
        is None
    )
    assert suffix
    assert len(suffix) == 6

    await insert_events(pool, [event(1), event(2)])
    sink.sink.add_fault(Fault(status=503, write_key="key-second-0002"))
    settings = settings_for(database_url, sink.url, concurrency=1)
    await run_until_idle(settings)
    await fast_forward(pool)
    await run_until_idle(settings)

    by_key = {
        hint: sorted(c["messageId"] for c in sink.sink.calls(hint)) for hint in ("…0001", "…0002")
    }
    assert by_key == {"…0001": ["evt_1", "evt_2"], "…0002": [f"evt_1.{suffix}", f"evt_2.{suffix}"]}
    assert (await deliveries(pool, second))["evt_1"]["attempts"] == 2
    assert sink.sink.stats()["duplicates"] == 0


async def test_third_integration_gets_its_own_suffix(pool: asyncpg.Pool) -> None:
    await add_integration(pool, write_key="k1")
    await add_integration(pool, write_key="k2")
    await add_integration(pool, write_key="k3")
    suffixes = [
        r["message_id_suffix"]
        for r in await pool.fetch(
            "SELECT message_id_suffix FROM relay.integrations ORDER BY created_at"
        )
    ]
    assert suffixes[0] is None
    assert len({s for s in suffixes[1:] if s}) == 2


async def test_first_integration_of_each_app_sends_bare_ids(pool: asyncpg.Pool) -> None:
    await add_integration(pool, app_id="app_a")
    await add_integration(pool, app_id="app_b")
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM relay.integrations WHERE message_id_suffix IS NULL"
        )
        == 2
    )


async def test_long_event_id_maps_to_a_stable_message_id_within_100_characters(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await add_integration(pool, write_key="key-second-0002")
    long_id = "evt_" + "x" * 146
    await insert_events(pool, [event(1, id=long_id)])
    sink.sink.add_fault(Fault(status=500))
    settings = settings_for(database_url, sink.url, concurrency=1)
    await run_until_idle(settings)
    await fast_forward(pool)
    await run_until_idle(settings)

    ids = sorted(c["messageId"] for c in sink.sink.calls())
    assert len(ids) == 2
    assert all(len(i) <= MAX_MESSAGE_ID_LENGTH and i.startswith("evt_xxx") for i in ids)
    assert sink.sink.stats()["dropped"] == {}
    assert {r["status"] for r in (await deliveries(pool)).values()} == {"delivered"}


async def test_batches_stay_within_2500_events(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 2601)])
    await run_until_idle(
        settings_for(
            database_url,
            sink.url,
            batch_max_events=2500,
            claim_per_integration=5000,
            concurrency=1,
            claim_limit=5000,
        )
    )

    # Spec-shaped calls are ~300 bytes, so 500 KB binds before 2,500 events (the count cap is
    # proven with tiny calls in tests/unit/test_segment.py).
    assert all(r.events <= 2500 for r in sink.sink.requests)
    assert sum(r.events for r in sink.sink.requests) == 2600
    assert len(sink.sink.calls()) == 2600
    assert sink.sink.stats()["rejected"] == 0
    assert sink.sink.stats()["dropped"] == {}


async def test_batches_stay_within_500_kb(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(n, traits={"bio": "y" * 30_000}) for n in range(1, 41)])
    await run_until_idle(settings_for(database_url, sink.url, concurrency=1))

    assert sink.sink.stats()["rejected"] == 0
    assert len(sink.sink.calls()) == 40
    assert len(sink.sink.requests) >= 3  # 40 x 30 KB cannot fit two 500 KB batches


async def test_429_slows_only_that_integration_and_does_not_spend_retries(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    limited = await add_integration(pool, write_key="key-limited-0001", app_id="app_a")
    quiet = await add_integration(pool, write_key="key-quiet-0002", app_id="app_b")
    await insert_events(
        pool,
        [event(n, app_id="app_a") for n in range(1, 5)]
        + [event(n, app_id="app_b") for n in range(5, 9)],
    )
    sink.sink.add_fault(Fault(status=429, rate_limit_reset=120, write_key="key-limited-0001"))
    await run_until_idle(settings_for(database_url, sink.url, batch_max_events=2, concurrency=1))

    limited_rows = await deliveries(pool, limited)
    assert sorted(r["attempts"] for r in limited_rows.values()) == [0, 0, 1, 1]
    for row in limited_rows.values():
        assert row["status"] == "pending"
        assert row["wait_seconds"] is None or row["wait_seconds"] == pytest.approx(120, abs=0.01)
    wait = await pool.fetchval(
        "SELECT extract(epoch FROM rate_limited_until - now()) "
        "FROM relay.integrations WHERE id = $1",
        limited,
    )
    assert 100 < wait <= 120
    assert {r["status"] for r in (await deliveries(pool, quiet)).values()} == {"delivered"}


async def test_requests_per_integration_are_capped_per_second(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 13)])
    rate = 4.0
    await run_until_idle(
        settings_for(
            database_url, sink.url, batch_max_events=1, concurrency=1, rate_limit_per_second=rate
        )
    )

    times = [r.received_at for r in sink.sink.requests]
    assert len(times) == 12
    burst = rate
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1


# -- the sink enforces Segment's limits the way Segment does -----------------------------------


def _call(n: int, **extra: object) -> dict[str, object]:
    return {"type": "track", "event": "E", "anonymousId": "a", "messageId": f"m{n}", **extra}


async def _post(url: str, body: bytes, key: str = "key") -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Authorization": basic_auth(key)}) as resp,
    ):
        return resp.status


async def test_sink_answers_200_and_drops_a_batch_over_2500_events(sink: RunningSink) -> None:
    body = orjson.dumps({"batch": [_call(n) for n in range(2501)]})
    assert await _post(f"{sink.url}/v1/batch", body) == 200
    assert sink.sink.calls() == []
    assert sink.sink.stats()["dropped"] == {"batch_over_2500_events": 2501}


async def test_sink_drops_message_ids_over_100_characters(sink: RunningSink) -> None:
    body = orjson.dumps({"batch": [_call(1, messageId="m" * 101), _call(2)]})
    assert await _post(f"{sink.url}/v1/batch", body) == 200
    assert [c["messageId"] for c in sink.sink.calls()] == ["m2"]
    assert sink.sink.stats()["dropped"] == {"message_id_over_100_chars": 1}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/batch", b"{not json"),
        ("/v1/track", orjson.dumps(_call(1, properties={"x": "z" * 33_000}))),
        ("/v1/batch", orjson.dumps({"batch": [_call(1, properties={"x": "z" * 33_000})]})),
        (
            "/v1/batch",
            orjson.dumps({"batch": [_call(n, properties={"x": "z" * 30_000}) for n in range(18)]}),
        ),
    ],
    ids=["invalid-json", "track-over-32kb", "call-in-batch-over-32kb", "batch-over-500kb"],
)
async def test_sink_answers_400_like_segment(sink: RunningSink, path: str, body: bytes) -> None:
    assert await _post(sink.url + path, body) == 400
    assert sink.sink.calls() == []


async def test_sink_refuses_unknown_keys_or_drops_them_when_lenient() -> None:
    strict, lenient = Sink(write_keys={"good"}), Sink(write_keys={"good"}, lenient_keys=True)
    body = orjson.dumps({"batch": [_call(1)]})
    for sink, expected in ((strict, 401), (lenient, 200)):
        runner, url = await start_sink(sink)
        try:
            assert await _post(f"{url}/v1/batch", body, key="bad") == expected
            assert await _post(f"{url}/v1/batch", body, key="good") == 200
        finally:
            await runner.cleanup()
        assert [c["messageId"] for c in sink.calls()] == ["m1"]
    assert lenient.stats()["dropped"] == {"unknown_write_key": 1}


async def test_sink_counts_duplicate_message_ids(sink: RunningSink) -> None:
    body = orjson.dumps({"batch": [_call(1)]})
    await _post(f"{sink.url}/v1/batch", body)
    await _post(f"{sink.url}/v1/batch", body)
    stats = sink.sink.stats()
    assert (stats["accepted"], stats["unique_message_ids"], stats["duplicates"]) == (2, 1, 1)
