"""Wiring for `relay run`: a pool, a sender, a worker, signal handlers, and the start-up
checks that keep a relay from running against a schema it does not understand."""

from __future__ import annotations

import asyncio
import signal

import asyncpg

from relay.config import Settings, SettingsError
from relay.sender import Sender
from relay.store import SCHEMA_VERSION, Store, create_pool
from relay.worker import Worker


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


async def run_worker(settings: Settings, *, until_idle: bool) -> Worker:
    """Run a worker until stopped (SIGTERM/SIGINT) or idle; returns it for its counts."""
    pool = await create_pool(settings.require_database_url(), max_size=settings.concurrency + 2)
    try:
        await check_schema(pool)
        async with Sender(
            base_url=settings.base_url,
            total_timeout=settings.http_timeout_seconds,
            connect_timeout=settings.http_connect_timeout_seconds,
        ) as sender:
            worker = Worker(settings, Store(pool), sender)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            try:
                await worker.run(until_idle=until_idle)
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            return worker
    finally:
        await pool.close()
