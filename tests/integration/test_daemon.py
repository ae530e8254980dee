"""The daemon as ops see it: metrics, health, readiness, fairness between integrations,
retention, and the schema check at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from relay.bench.harness import free_port
from relay.config import Settings
from relay.daemon import run_worker
from relay.retention import purge
from relay.sender import Sender
from relay.sink import Fault
from relay.store import Store
from relay.web import start_http
from relay.worker import Worker
from tests.conftest import RunningSink
from tests.helpers import (
    add_integration,
    deliveries,
    event,
    insert_events,
    relay_command,
    settings_for,
    subprocess_env,
    wait_until,
)


class Daemon:
    """A worker running as `relay run` does, with its HTTP server, in this event loop."""

    def __init__(self, task: asyncio.Task[Worker], base: str) -> None:
        self.task = task
        self.base = base

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as resp:
            return resp.status, await resp.text()


@contextlib.asynccontextmanager
async def daemon(settings: Settings) -> AsyncIterator[Daemon]:
    port = free_port()
    settings = settings.model_copy(update={"http_listen": f"127.0.0.1:{port}"})
    task = asyncio.create_task(run_worker(settings, until_idle=False, serve_http=True))
    running = Daemon(task, f"http://127.0.0.1:{port}")

    async def answers() -> bool:
        try:
            return (await running.get("/healthz"))[0] == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_until(answers, seconds=10)
        yield running
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=30)
        if not done:  # name what it waits for instead of hanging until the suite's timeout
            stacks = io.StringIO()
            for other in asyncio.all_tasks():
                other.print_stack(file=stacks)
            raise AssertionError(f"the daemon did not stop within 30 s:\n{stacks.getvalue()}")
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in the Prometheus text format (0 when absent)."""
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line))
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if metric == name and all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def daemon_settings(database_url: str, sink: RunningSink, **extra: Any) -> Settings:
    return settings_for(
        database_url, sink.url, http_listen="127.0.0.1:0", metrics_interval_seconds=0.1, **extra
    )


async def test_metrics_count_outcomes_requests_latency_and_backlog(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    integration = await add_integration(pool, event_settings={"Flow Dismissed": {"enabled": False}})
    async with daemon(daemon_settings(database_url, sink)) as d:
        _, before = await d.get("/metrics")
        await insert_events(pool, [event(n) for n in range(1, 6)] + [event(6, "Flow Dismissed")])
        await wait_until(lambda: len(sink.sink.calls()) == 5, seconds=10)
        sink.sink.add_fault(Fault(status=503))
        await insert_events(pool, [event(7)])
        await wait_until(lambda: sink.sink.counts["faults_served"] == 1, seconds=10)
        await asyncio.sleep(0.3)  # a backlog refresh
        _, after = await d.get("/metrics")

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("relay_deliveries_total", outcome="delivered", region="global") == 5
    assert delta("relay_deliveries_total", outcome="skipped", region="global") == 1
    assert delta("relay_deliveries_total", outcome="retried", region="global") == 1
    assert delta("relay_segment_requests_total", status_class="2xx", region="global") >= 1
    assert delta("relay_segment_requests_total", status_class="5xx", region="global") == 1
    assert delta("relay_delivery_latency_seconds_count", region="global") == 5
    assert delta("relay_event_age_at_delivery_seconds_count", region="global") == 5
    assert delta("relay_delivery_attempts_count", outcome="delivered") == 5
    assert delta("relay_batch_events_count") >= 2
    assert sample(after, "relay_backlog_deliveries", state="scheduled") == 1
    assert sample(after, "relay_backlog_deliveries", state="due") == 0
    assert integration not in after, "no per-integration labels unless asked for"
    assert "evt_" not in after


async def test_per_integration_labels_only_when_asked(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    integration = await add_integration(pool)
    settings = daemon_settings(database_url, sink, metrics_per_integration=True)
    async with daemon(settings) as d:
        await insert_events(pool, [event(1)])
        await wait_until(lambda: len(sink.sink.calls()) == 1, seconds=10)
        _, text = await d.get("/metrics")
    assert sample(text, "relay_deliveries_total", outcome="delivered", integration=integration) == 1


async def test_health_and_readiness(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    async with daemon(daemon_settings(database_url, sink)) as d:
        status, body = await d.get("/healthz")
        assert status == 200
        assert '"status":"ok"' in body
        assert (await d.get("/readyz"))[0] == 200

        await pool.execute("UPDATE relay.schema_version SET version = 99")
        status, body = await d.get("/readyz")
        assert status == 503
        assert "schema version 99" in body
        await pool.execute("UPDATE relay.schema_version SET version = 3")


async def test_healthz_fails_when_the_claim_loop_is_stuck(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    settings = settings_for(database_url, sink.url, http_listen="127.0.0.1:0", stall_seconds=5)
    async with Sender(base_url=settings.base_url, total_timeout=5, connect_timeout=2) as sender:
        worker = Worker(settings, Store(pool), sender)
        runner = await start_http(settings, pool, sender, worker)
        assert runner is not None
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{host}:{port}/healthz") as resp:
                    assert resp.status == 200
                worker._heartbeat -= 6  # as if the loop had not turned for 6 s
                async with session.get(f"http://{host}:{port}/healthz") as resp:
                    assert resp.status == 503
                    assert (await resp.json())["status"] == "stalled"
        finally:
            await runner.cleanup()


async def test_a_hanging_integration_does_not_delay_another(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool, write_key="key-hanging-0001", app_id="app_slow")
    await add_integration(pool, write_key="key-quiet-0002", app_id="app_quiet")
    sink.sink.add_fault(Fault(status=200, delay=30, times=-1, write_key="key-hanging-0001"))
    await insert_events(pool, [event(n, app_id="app_slow") for n in range(1, 2001)])
    settings = daemon_settings(
        database_url, sink, concurrency=4, claim_per_integration=100, http_timeout_seconds=60
    )
    async with daemon(settings):
        await asyncio.sleep(0.5)  # the hanging integration now holds its slots
        await insert_events(pool, [event(n, app_id="app_quiet") for n in range(5001, 5006)])
        started = time.monotonic()
        await wait_until(lambda: len(sink.sink.calls("…0002")) == 5, seconds=10)
        waited = time.monotonic() - started
    assert waited < 10
    assert sink.sink.calls("…0001") == []


async def test_a_wake_up_while_every_slot_is_busy_waits_for_a_free_slot(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    """A notification that arrives while the worker is at capacity must not make the claim
    loop spin: it starved every other task of the process (a CI run hung), or, when each turn
    still yielded, burnt a core until a slot freed."""
    await add_integration(pool)
    sink.sink.add_fault(Fault(status=200, delay=2.0))  # the first batch holds the only slot
    async with daemon(daemon_settings(database_url, sink)):  # concurrency 1
        await insert_events(pool, [event(1)])
        await wait_until(lambda: sink.sink.counts["requests"] >= 1, seconds=10)
        await insert_events(pool, [event(2)])  # notifies while the slot is busy
        cpu = time.process_time()
        await asyncio.wait_for(asyncio.sleep(1.0), timeout=10)
        spent = time.process_time() - cpu
        await wait_until(lambda: len(sink.sink.calls()) == 2, seconds=10)
    assert spent < 0.5, f"the process used {spent:.2f} s of CPU in 1 s while waiting"


async def test_a_big_backlog_does_not_delay_fresh_events_of_another_integration(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool, write_key="key-backlog-0001", app_id="app_big")
    await add_integration(pool, write_key="key-quiet-0002", app_id="app_quiet")
    await insert_events(pool, [event(n, app_id="app_big") for n in range(1, 20_001)])
    settings = daemon_settings(database_url, sink, concurrency=4, claim_per_integration=500)
    async with daemon(settings):
        await wait_until(lambda: len(sink.sink.calls("…0001")) > 0, seconds=10)
        await insert_events(pool, [event(n, app_id="app_quiet") for n in range(50_001, 50_006)])
        await wait_until(lambda: len(sink.sink.calls("…0002")) == 5, seconds=10)
        backlog_left = await pool.fetchval(
            "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
        )
    assert backlog_left > 0, "the quiet integration was served before the backlog was drained"


async def test_retention_purges_old_finished_events_and_keeps_the_rest(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 9)] + [event(9, app_id="no_integration")])
    statuses = {
        1: "delivered", 2: "delivered", 3: "skipped", 4: "pending", 5: "failed", 6: "failed",
        7: "delivered", 8: "delivered",
    }  # fmt: skip
    for n, status in statuses.items():
        await pool.execute(
            "UPDATE relay.deliveries SET status = $2 WHERE event_id = $1", f"evt_{n}", status
        )
    day = 86400
    await pool.execute(
        "UPDATE relay.events SET created_at = now() - interval '10 days' WHERE id <> ALL($1)",
        ["evt_7", "evt_8"],
    )
    await pool.execute(
        "UPDATE relay.deliveries SET updated_at = now() - interval '40 days' "
        "WHERE event_id = 'evt_6'"
    )
    settings = settings_for(
        database_url, sink.url, retention=7 * day, failed_retention=30 * day, purge_batch=2
    )
    deleted = await purge(Store(pool), settings)

    remaining = {r["id"] for r in await pool.fetch("SELECT id FROM relay.events")}
    assert remaining == {"evt_4", "evt_5", "evt_7", "evt_8"}
    assert deleted == 5
    assert set(await deliveries(pool, integration)) == remaining
    assert await purge(Store(pool), settings) == 0


async def test_retention_also_drops_the_attempt_log(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1)])
    sink.sink.add_fault(Fault(status=500))
    settings = settings_for(database_url, sink.url)
    await run_worker(settings, until_idle=True)
    await pool.execute("UPDATE relay.deliveries SET status = 'delivered'")
    await pool.execute("UPDATE relay.events SET created_at = now() - interval '8 days'")
    assert await pool.fetchval("SELECT count(*) FROM relay.attempts") == 1
    assert await purge(Store(pool), settings) == 1
    assert await pool.fetchval("SELECT count(*) FROM relay.attempts") == 0


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (1, "the relay schema is at version 1, this relay needs 3: run `relay migrate`"),
        (99, "the relay schema is at version 99, newer than this relay (3): upgrade relay"),
    ],
)
async def test_run_refuses_another_schema_version(
    pool: asyncpg.Pool, database_url: str, version: int, message: str
) -> None:
    await pool.execute("UPDATE relay.schema_version SET version = $1", version)
    process = await asyncio.create_subprocess_exec(
        *relay_command("run"),
        env=subprocess_env(RELAY_DATABASE_URL=database_url),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert err.decode().strip() == f"relay: error: {message}"
