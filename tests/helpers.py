"""What integration tests do again and again: settings pointed at the sinks, integrations,
outbox inserts, a worker run, and reading deliveries back."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from relay.admin.models import IntegrationCreate
from relay.admin.service import AdminService
from relay.config import Settings
from relay.daemon import run_worker
from relay.model import REGION_ENDPOINTS, Region
from relay.outbox import insert_events as insert_events  # re-exported for the tests
from relay.worker import Worker

GLOBAL = REGION_ENDPOINTS[Region.GLOBAL][0]
EU = REGION_ENDPOINTS[Region.EU][0]
EU_MANAGEMENT = REGION_ENDPOINTS[Region.EU][1]

BASE_TIME = datetime(2026, 5, 13, 10, 14, tzinfo=UTC)


def settings_for(
    database_url: str, global_url: str, eu_url: str | None = None, **extra: Any
) -> Settings:
    """Daemon settings for tests: every official endpoint mapped to a local sink, quick polls."""
    overrides = {GLOBAL: global_url, EU: eu_url or global_url, EU_MANAGEMENT: eu_url or global_url}
    values: dict[str, Any] = {
        "database_url": database_url,
        "endpoint_overrides": overrides,
        "poll_interval_seconds": 0.05,
        "shutdown_grace_seconds": 5.0,
        "http_timeout_seconds": 5.0,
        "rate_limit_per_second": 1000.0,
        # One lane, so faults meet the batches tests expect; subprocess tests run the default.
        "concurrency": 1,
    }
    values.update(extra)
    return Settings(**values)


async def add_integration(
    pool: asyncpg.Pool,
    *,
    write_key: str = "key-global-0001",
    region: str = "global",
    organization_id: str = "org_1",
    app_id: str = "app_1",
    endpoint: str | None = None,
    event_settings: Mapping[str, Any] | None = None,
) -> str:
    new = IntegrationCreate.model_validate(
        {
            "organization_id": organization_id,
            "app_id": app_id,
            "write_key": write_key,
            "region": region,
            "endpoint": endpoint,
            "events": event_settings or {},
        }
    )
    return (await AdminService(pool, "test").create(new)).id


def event(n: int | str, event_type: str = "Flow Viewed", **fields: Any) -> dict[str, Any]:
    """An outbox row with sensible defaults; `fields` override or add columns."""
    row: dict[str, Any] = {
        "id": f"evt_{n}",
        "organization_id": "org_1",
        "app_id": "app_1",
        "event_type": event_type,
        "occurred_at": BASE_TIME + timedelta(seconds=int(n) if str(n).isdigit() else 0),
        "anonymous_id": f"anon_{n}",
    }
    row.update(fields)
    return row


async def run_until_idle(settings: Settings) -> Worker:
    return await run_worker(settings, until_idle=True)


async def deliveries(
    pool: asyncpg.Pool, integration_id: str | None = None
) -> dict[str, dict[str, Any]]:
    """event_id → delivery row (of one integration, or of the only one)."""
    rows = await pool.fetch(
        "SELECT *, extract(epoch FROM next_attempt_at - last_attempt_at) AS wait_seconds "
        "FROM relay.deliveries WHERE $1::text IS NULL OR integration_id = $1",
        integration_id,
    )
    return {r["event_id"]: dict(r.items()) for r in rows}


async def fast_forward(pool: asyncpg.Pool) -> None:
    """Make every scheduled retry due now, instead of sleeping through the schedule."""
    await pool.execute(
        "UPDATE relay.deliveries SET next_attempt_at = now() WHERE status = 'pending'"
    )
    await pool.execute("UPDATE relay.integrations SET rate_limited_until = NULL")


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], *, seconds: float) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        await asyncio.sleep(0.05)


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def subprocess_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_LOG_FORMAT"] = "json"
    # No HTTP server unless a test asks for one: relays of tests running side by side all
    # bound the default 127.0.0.1:8080, and all but one exited at start.
    env["RELAY_HTTP_LISTEN"] = "off"
    env.update(values)
    return env
