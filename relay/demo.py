"""`relay demo`: the whole path on a throwaway database, in one command."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson

from relay import eventloop
from relay.admin.models import IntegrationCreate
from relay.admin.service import AdminService
from relay.config import Settings
from relay.daemon import run_worker
from relay.embedded import embedded_postgres
from relay.logging import configure_logging
from relay.outbox import insert_events
from relay.sink import Sink, start_sink
from relay.store import connect, create_pool, migrate

DEMO_WRITE_KEY = "demo-write-key-0001"
SAMPLE_EVENTS: list[dict[str, Any]] = [
    {
        "event_type": "Flow Viewed",
        "user_id": "user_123",
        "anonymous_id": "anon_abc",
        "survey_id": "srv_nps",
        "page_path": "/checkout",
        "page_referrer": "https://example.com/cart",
        "locale": "en-US",
        "traits": {"email": "user@example.com"},
    },
    {
        "event_type": "Flow Dismissed",
        "anonymous_id": "anon_def",
        "survey_id": "srv_nps",
        "page_path": "/pricing",
    },
    {
        "event_type": "Response Submitted",
        "user_id": "user_123",
        "anonymous_id": "anon_abc",
        "survey_id": "srv_nps",
        "response_id": "resp_42",
        "page_path": "/checkout",
        "locale": "en-US",
        "traits": {"email": "user@example.com", "plan": "trial"},
        "identities": {"userId": "user_123", "anonymousId": "anon_abc"},
        "references": {"flow_version": "v3"},
    },
    {
        "event_type": "Flow Viewed",
        "anonymous_id": "anon_ghi",
        "survey_id": "srv_csat",
        "locale": "de-DE",
    },
]


@contextlib.contextmanager
def _database(settings: Settings, out: TextIO) -> Iterator[str]:
    if settings.database_url:
        out.write(f"Using RELAY_DATABASE_URL ({_host_of(settings.database_url)}).\n")
        yield settings.database_url
        return
    out.write("Starting an embedded PostgreSQL (pgserver)...\n")
    out.flush()
    with embedded_postgres() as url:
        yield url


def _host_of(url: str) -> str:
    return url.split("@")[-1]


def run_demo(settings: Settings, out: TextIO) -> None:
    configure_logging("warning", settings.log_format)
    with _database(settings, out) as url:
        eventloop.run(_demo(settings, url, out))


async def _demo(settings: Settings, url: str, out: TextIO) -> None:
    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    out.write("Schema applied.\n")

    sink = Sink(write_keys={DEMO_WRITE_KEY})
    runner, sink_url = await start_sink(sink)
    out.write(f"Local Segment-compatible sink listening on {sink_url}.\n")
    try:
        run = f"demo_{secrets.token_hex(3)}"
        org, app = f"org_{run}", f"app_{run}"
        pool = await create_pool(url, max_size=2)
        try:
            new = IntegrationCreate.model_validate(
                {
                    "organization_id": org,
                    "app_id": app,
                    "write_key": DEMO_WRITE_KEY,
                    "region": "global",
                    "name": "Demo source",
                    "events": {
                        "Response Submitted": {"rename": "survey_responded"},
                        "Flow Dismissed": {"enabled": False},
                    },
                }
            )
            created = await AdminService(pool, "demo").create(new)
            out.write(
                f"Integration {created.id} for {org}/{app}: 'Response Submitted' renamed to "
                "'survey_responded', 'Flow Dismissed' disabled.\n"
            )
            ids = await _insert_samples(pool, run, org, app)
            out.write(f"Inserted {len(ids)} events into relay.events.\n\nRelaying...\n")

            worker_settings = settings.model_copy(
                update={
                    "database_url": url,
                    "endpoint_overrides": {"https://api.segment.io": sink_url},
                    "shutdown_grace_seconds": 5.0,
                }
            )
            await run_worker(worker_settings, until_idle=True)

            out.write(f"\nSegment (the sink) received {len(sink.received)} track calls:\n")
            for received in sink.received:
                out.write(orjson.dumps(received.call, option=orjson.OPT_INDENT_2).decode())
                out.write("\n")
            rows = await pool.fetch(
                "SELECT d.event_id, e.event_type, d.status, d.attempts, d.last_status_code "
                "FROM relay.deliveries d JOIN relay.events e ON e.id = d.event_id "
                "WHERE d.integration_id = $1 ORDER BY e.occurred_at",
                created.id,
            )
            out.write("\nrelay.deliveries:\n")
            out.write(f"  {'event_id':<28} {'event_type':<20} {'status':<10} attempts  http\n")
            for r in rows:
                out.write(
                    f"  {r['event_id']:<28} {r['event_type']:<20} {r['status']:<10} "
                    f"{r['attempts']:<9} {r['last_status_code'] or '-'}\n"
                )
        finally:
            await pool.close()
    finally:
        await runner.cleanup()


async def _insert_samples(pool: Any, run: str, org: str, app: str) -> list[str]:
    start = datetime.now(UTC) - timedelta(minutes=5)
    rows = []
    for n, sample in enumerate(SAMPLE_EVENTS, 1):
        row = {
            "id": f"evt_{run}_{n}",
            "organization_id": org,
            "app_id": app,
            "occurred_at": start + timedelta(seconds=30 * n),
            **sample,
        }
        rows.append(row)
    await insert_events(pool, rows)
    return [row["id"] for row in rows]
