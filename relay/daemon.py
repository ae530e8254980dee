"""Wiring for `relay run` and `relay admin`: a pool, a sender, the worker and/or the HTTP server,
signal handlers, and the start-up check that keeps a relay off a schema it does not know."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import structlog
from aiohttp import web

from relay import metrics
from relay.config import Settings
from relay.errors import SettingsError
from relay.retention import purge
from relay.sender import Sender
from relay.store import SCHEMA_VERSION, Store, create_pool
from relay.web import start_http
from relay.worker import DATABASE_ERRORS, Worker

log = structlog.get_logger("relay.daemon")


async def check_schema(pool: asyncpg.Pool) -> None:
    """Refuse to run against a database that was not migrated, or migrated by another version."""
    try:
        found = await pool.fetchval("SELECT version FROM relay.schema_version")
    except asyncpg.UndefinedTableError:
        found = None
    if found is None:
        raise SettingsError("the database has no relay schema: run `relay migrate` first")
    if found < SCHEMA_VERSION:
        raise SettingsError(
            f"the relay schema is at version {found}, this relay needs {SCHEMA_VERSION}: "
            "run `relay migrate`"
        )
    if found > SCHEMA_VERSION:
        raise SettingsError(
            f"the relay schema is at version {found}, newer than this relay "
            f"({SCHEMA_VERSION}): upgrade relay"
        )


@asynccontextmanager
async def resources(
    settings: Settings, pool_size: int
) -> AsyncIterator[tuple[asyncpg.Pool, Sender]]:
    """A checked pool and an HTTP sender, closed on the way out."""
    pool = await create_pool(
        settings.require_database_url(),
        max_size=pool_size,
        idle_transaction_seconds=settings.lease_seconds,
    )
    try:
        await check_schema(pool)
        async with Sender(
            base_url=settings.base_url,
            total_timeout=settings.http_timeout_seconds,
            connect_timeout=settings.http_connect_timeout_seconds,
        ) as sender:
            yield pool, sender
    finally:
        await pool.close()


@asynccontextmanager
async def on_signals(stop: Callable[[], None]) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve_until_signalled(runner: web.AppRunner) -> None:
    """Keep an HTTP server up until SIGTERM/SIGINT, then clean it up."""
    stopped = asyncio.Event()
    try:
        async with on_signals(stopped.set):
            await stopped.wait()
    finally:
        await runner.cleanup()


async def run_worker(settings: Settings, *, until_idle: bool, serve_http: bool = False) -> Worker:
    """Run a worker until SIGTERM/SIGINT or, with until_idle, until nothing is due. As a daemon
    (not until_idle) it also runs retention and the backlog gauges; with serve_http, the HTTP
    server (admin API, /metrics, /healthz, /readyz). Returns the worker for its counts."""
    async with resources(settings, settings.database_pool_size) as (pool, sender):
        store = Store(pool)
        worker = Worker(settings, store, sender)
        runner = await start_http(settings, pool, sender, worker) if serve_http else None
        chores = [] if until_idle else [
            asyncio.create_task(_every(settings.purge_interval_seconds, purge, store, settings)),
            asyncio.create_task(_every(settings.metrics_interval_seconds, read_backlog, store)),
        ]  # fmt: skip
        try:
            async with on_signals(worker.stop):
                await worker.run(until_idle=until_idle)
            return worker
        finally:
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()


async def _every(seconds: float, job: Callable[..., Awaitable[object]], *args: object) -> None:
    """Run a background job now and then every `seconds`; a failure is logged, not fatal."""
    while True:
        try:
            await job(*args)
        except DATABASE_ERRORS as exc:
            log.warning("background_job_failed", job=job.__name__, error=str(exc))
        except Exception:
            log.exception("background_job_failed", job=job.__name__)
        await asyncio.sleep(seconds)


async def read_backlog(store: Store) -> None:
    backlog = await store.backlog()
    for state in ("due", "scheduled", "failed"):
        metrics.BACKLOG.labels(state).set(backlog[state])
    metrics.OLDEST_DUE.set(backlog["oldest_due_seconds"])


async def serve_admin(settings: Settings) -> None:
    """The HTTP server alone (no deliveries), until SIGTERM/SIGINT."""
    if settings.listen_address() is None:
        raise SettingsError("RELAY_HTTP_LISTEN is off: `relay admin` has nothing to serve")
    async with resources(settings, 4) as (pool, sender):
        runner = await start_http(settings, pool, sender, None)
        assert runner is not None
        await serve_until_signalled(runner)
