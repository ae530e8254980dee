"""Real `relay run` processes sharing one database: no duplicate sends in normal operation,
nothing lost to kill -9, a clean exit on SIGTERM, and no secret in any log line."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter

import asyncpg
import pytest

from relay.sink import Fault
from tests.conftest import RunningSink
from tests.helpers import (
    GLOBAL,
    add_integration,
    deliveries,
    event,
    insert_events,
    relay_command,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.slow


def _env(database_url: str, sink_url: str, **extra: str) -> dict[str, str]:
    return subprocess_env(
        RELAY_DATABASE_URL=database_url,
        RELAY_ENDPOINT_OVERRIDES=json.dumps({GLOBAL: sink_url}),
        RELAY_POLL_INTERVAL_SECONDS="0.1",
        **extra,
    )


async def _start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *relay_command("run", *args),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _all_settled(pool: asyncpg.Pool) -> bool:
    pending: int = await pool.fetchval(
        "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
    )
    return pending == 0


async def test_two_workers_in_parallel_send_each_event_once(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 3001)])
    # Slow answers (60 batches of 50, 0.1 s each) keep the first worker from finishing alone
    # before the second has started.
    sink.sink.add_fault(Fault(status=200, delay=0.1, times=-1))
    env = _env(
        database_url, sink.url, RELAY_CLAIM_PER_INTEGRATION="100", RELAY_BATCH_MAX_EVENTS="50"
    )
    workers = [await _start(env, "--until-idle") for _ in range(2)]
    results = [await w.communicate() for w in workers]

    assert [w.returncode for w in workers] == [0, 0]
    stats = sink.sink.stats()
    assert (stats["accepted"], stats["unique_message_ids"], stats["duplicates"]) == (3000, 3000, 0)
    assert await _all_settled(pool)
    delivered_by = [
        Counter(json.loads(line).get("event") for line in err.decode().splitlines())
        for _out, err in results
    ]
    assert all(c["deliveries_recorded"] > 0 for c in delivered_by), "both workers did work"


async def test_kill_9_mid_batch_loses_nothing_and_duplicates_keep_their_message_id(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    ids = [f"evt_{n}" for n in range(1, 201)]
    await insert_events(pool, [event(n) for n in range(1, 201)])
    # The first batch is accepted by Segment, but only after the worker is dead.
    sink.sink.add_fault(Fault(status=200, delay=1.5))
    env = _env(
        database_url,
        sink.url,
        RELAY_LEASE_SECONDS="2",
        RELAY_BATCH_MAX_EVENTS="50",
        RELAY_CONCURRENCY="1",
    )
    doomed = await _start(env)
    await wait_until(lambda: sink.sink.counts["requests"] >= 1, seconds=30)
    doomed.kill()
    await doomed.wait()
    assert doomed.returncode == -signal.SIGKILL

    survivor = await _start(env)
    await wait_until(lambda: _all_settled(pool), seconds=30)
    # The survivor need not wait out a lease (the dead worker's row locks went with its
    # connection), so it may finish before the sink accepts the dead worker's slow batch.
    await wait_until(lambda: len(sink.sink.calls()) >= len(ids) + 50, seconds=10)
    survivor.send_signal(signal.SIGTERM)
    await survivor.communicate()

    rows = await deliveries(pool)
    assert {r["status"] for r in rows.values()} == {"delivered"}
    received = [c["messageId"] for c in sink.sink.calls()]
    assert set(received) == set(ids)
    duplicates = [m for m, n in Counter(received).items() if n > 1]
    assert 0 < len(duplicates) <= 50, "only the batch in flight at the kill is sent again"


async def test_sigterm_finishes_the_send_in_flight_and_exits_0(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 11)])
    sink.sink.add_fault(Fault(status=200, delay=1.0))
    worker = await _start(_env(database_url, sink.url, RELAY_SHUTDOWN_GRACE_SECONDS="10"))
    await wait_until(lambda: sink.sink.counts["requests"] >= 1, seconds=30)
    worker.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(worker.communicate(), 15)

    assert worker.returncode == 0
    rows = await deliveries(pool)
    assert {r["status"] for r in rows.values()} == {"delivered"}
    assert all(r["lease_token"] is None for r in rows.values())
    summary = [json.loads(line) for line in err.decode().splitlines()][-1]
    assert summary["event"] == "worker_stopped"
    assert summary["delivered"] == 10


async def test_sigterm_past_the_grace_period_releases_the_lease_at_once(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 6)])
    sink.sink.add_fault(Fault(status=200, delay=5.0))
    env = _env(
        database_url, sink.url, RELAY_SHUTDOWN_GRACE_SECONDS="0.5", RELAY_LEASE_SECONDS="600"
    )
    worker = await _start(env)
    await wait_until(lambda: sink.sink.counts["requests"] >= 1, seconds=30)
    worker.send_signal(signal.SIGTERM)
    await asyncio.wait_for(worker.communicate(), 10)

    assert worker.returncode == 0
    rows = await pool.fetch(
        "SELECT status, attempts, lease_token, next_attempt_at <= now() AS due "
        "FROM relay.deliveries"
    )
    assert [(r["status"], r["attempts"], r["lease_token"], r["due"]) for r in rows] == [
        ("pending", 0, None, True)
    ] * 5


async def test_no_write_key_in_logs_or_recorded_errors(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    key = "wk_SECRET_9f8e7d6c5b4a"
    await add_integration(pool, write_key=key)
    await insert_events(pool, [event(1), event(2)])
    sink.sink.add_fault(Fault(status=401, body=f"invalid write key {key}"))
    worker = await _start(_env(database_url, sink.url, RELAY_LOG_LEVEL="debug"), "--until-idle")
    out, err = await worker.communicate()

    assert worker.returncode == 0
    assert b"deliveries_failed" in err
    assert key.encode() not in out + err
    errors = [r["last_error"] for r in (await deliveries(pool)).values()]
    assert all("invalid write key ****" in e and key not in e for e in errors)
