"""The alternatives `relay bench` compares against, on the same events, database and sink:

- naive: the simplest correct outbox worker: claim one row (FOR UPDATE SKIP LOCKED), POST it
  to /v1/track, mark it delivered, commit; a few loops in parallel.
- procrastinate: one job per delivery on procrastinate (a PostgreSQL task queue); each job
  loads its event, POSTs it to /v1/track and marks it delivered.
- segment: the official segment-analytics-python client fed the same events from memory (it
  batches in a background thread; not durable: a crash loses its queue).

Each runs as `python -m relay.bench.baselines NAME --database-url URL --sink URL` and prints one
JSON line with the seconds and CPU seconds of its measured phase (set-up, such as deferring
procrastinate's jobs or loading events into memory, is not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from relay import eventloop
from relay.model import EventSettings, EventType, iso_timestamp, parse_event
from relay.segment import build_track_call
from relay.sender import basic_auth
from relay.store import create_pool

PENDING = """
SELECT d.integration_id, d.event_id, i.write_key, i.event_settings,
       e.id, e.organization_id, e.app_id, e.event_type, e.occurred_at, e.user_id, e.anonymous_id,
       e.survey_id, e.response_id, e.page_path, e.page_referrer, e.locale, e.traits,
       e.identities, e."references"
FROM relay.deliveries d
JOIN relay.events e ON e.id = d.event_id
JOIN relay.integrations i ON i.id = d.integration_id
"""
CLAIM_ONE = (
    PENDING
    + "WHERE d.status = 'pending' ORDER BY d.next_attempt_at LIMIT 1 FOR UPDATE OF d SKIP LOCKED"
)
ONE = PENDING + "WHERE d.integration_id = $1 AND d.event_id = $2"
FINISH = """
UPDATE relay.deliveries SET status = $3, attempts = attempts + 1, last_attempt_at = now(),
       last_status_code = $4, delivered_at = CASE WHEN $3 = 'delivered' THEN now() END
WHERE integration_id = $1 AND event_id = $2
"""


def _call(row: Any) -> tuple[str, dict[str, Any]] | None:
    """The track call for a delivery row, or None when its event is disabled."""
    event = parse_event(row)
    name = EventSettings.model_validate(row["event_settings"]).name_for(EventType(event.event_type))
    if name is None:
        return None
    now = iso_timestamp(datetime.now(UTC))
    return row["write_key"], build_track_call(event, name, event.id, now)


async def _post_track(session: aiohttp.ClientSession, sink: str, key: str, call: Any) -> int:
    body = orjson.dumps({**call, "writeKey": key})
    headers = {"Authorization": basic_auth(key), "Content-Type": "application/json"}
    async with session.post(f"{sink}/v1/track", data=body, headers=headers) as response:
        await response.read()
        return response.status


# The index the naive worker's claim needs (set up untimed): without it every claim sorts the
# whole backlog, and the baseline would measure our schema's fit rather than its design.
NAIVE_INDEX = """
CREATE INDEX IF NOT EXISTS bench_naive_due ON relay.deliveries (next_attempt_at)
WHERE status = 'pending'
"""


async def naive_setup(url: str) -> None:
    pool = await create_pool(url, max_size=1)
    try:
        await pool.execute(NAIVE_INDEX)
        await pool.execute("ANALYZE relay.deliveries")
    finally:
        await pool.close()


async def naive(url: str, sink: str, concurrency: int) -> int:
    pool = await create_pool(url, max_size=concurrency)
    sent = 0

    async def loop(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while True:
            async with pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(CLAIM_ONE)
                if row is None:
                    return
                made = _call(row)
                if made is None:
                    await conn.execute(
                        FINISH, row["integration_id"], row["event_id"], "skipped", None
                    )
                    continue
                status = await _post_track(session, sink, *made)
                outcome = "delivered" if 200 <= status < 300 else "pending"
                await conn.execute(FINISH, row["integration_id"], row["event_id"], outcome, status)
                sent += 1

    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(loop(session) for _ in range(concurrency)))
    finally:
        await pool.close()
    return sent


async def procrastinate_jobs(
    url: str, sink: str, concurrency: int
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Set up (untimed): procrastinate's schema and one job per pending delivery. Returns the
    number of jobs and the timed part (a worker run until the queue is empty)."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    pool = await create_pool(url, max_size=concurrency + 1)
    session = aiohttp.ClientSession()

    @app.task(name="deliver")
    async def deliver(integration_id: str, event_id: str) -> None:
        row = await pool.fetchrow(ONE, integration_id, event_id)
        made = _call(row)
        if made is None:
            await pool.execute(FINISH, integration_id, event_id, "skipped", None)
            return
        status = await _post_track(session, sink, *made)
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status}")  # procrastinate retries failed jobs
        await pool.execute(FINISH, integration_id, event_id, "delivered", status)

    await app.open_async()
    await app.schema_manager.apply_schema_async()
    pending = await pool.fetch("SELECT integration_id, event_id FROM relay.deliveries")
    for start in range(0, len(pending), 1000):
        await deliver.batch_defer_async(
            *({"integration_id": r[0], "event_id": r[1]} for r in pending[start : start + 1000])
        )

    async def work() -> None:
        try:
            await app.run_worker_async(
                concurrency=concurrency, wait=False, install_signal_handlers=False
            )
        finally:
            await session.close()
            await pool.close()
            await app.close_async()

    return len(pending), work


async def segment_client_calls(url: str) -> list[tuple[str, dict[str, Any]]]:
    """Set up (untimed): every pending delivery as (write key, track call), in memory."""
    pool = await create_pool(url, max_size=2)
    try:
        rows = await pool.fetch(PENDING + "WHERE d.status = 'pending'")
    finally:
        await pool.close()
    return [made for made in map(_call, rows) if made is not None]


# Tuned in the client's favour: batches as large as the relay's (500 KB holds ~500 bench
# events) and a short wait for more items, so its fixed end-of-queue wait does not dominate.
UPLOAD_SIZE = 500
UPLOAD_INTERVAL = 0.05


def segment_client(calls: list[tuple[str, dict[str, Any]]], sink: str) -> int:
    """Feed the official client (one per write key, as one per Segment source) and wait for
    every queue to be flushed."""
    from segment.analytics import Client

    clients: dict[str, Any] = {}
    for key, call in calls:
        client = clients.get(key)
        if client is None:
            client = clients[key] = Client(
                write_key=key,
                host=sink,
                max_queue_size=len(calls) + 1,
                upload_size=UPLOAD_SIZE,
                upload_interval=UPLOAD_INTERVAL,
            )
        client.track(
            user_id=call.get("userId"),
            anonymous_id=call["anonymousId"],
            event=call["event"],
            properties=call["properties"],
            context=call["context"],
            timestamp=datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00")),
            message_id=call["messageId"],
        )
    for client in clients.values():
        client.flush()
        client.join()
    return len(calls)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m relay.bench.baselines")
    parser.add_argument("name", choices=["naive", "procrastinate", "segment"])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    if args.name == "naive":
        eventloop.run(naive_setup(args.database_url))
        cpu, started = _cpu(), time.perf_counter()
        sent = eventloop.run(naive(args.database_url, args.sink, args.concurrency))
    elif args.name == "procrastinate":

        async def timed() -> tuple[int, float, float]:
            jobs, work = await procrastinate_jobs(args.database_url, args.sink, args.concurrency)
            cpu, started = _cpu(), time.perf_counter()
            await work()
            return jobs, cpu, started

        sent, cpu, started = eventloop.run(timed())
    else:
        calls = eventloop.run(segment_client_calls(args.database_url))
        cpu, started = _cpu(), time.perf_counter()
        sent = segment_client(calls, args.sink)
    print(
        json.dumps(
            {"seconds": time.perf_counter() - started, "cpu_seconds": _cpu() - cpu, "items": sent}
        )
    )


if __name__ == "__main__":
    main()
