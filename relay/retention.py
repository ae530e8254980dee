"""Retention: old delivered and skipped deliveries, and dead letters after a longer age, are
deleted with their events in small batches. One replica purges at a time (an advisory lock
per batch); each batch is one short statement with SKIP LOCKED, so workers never wait on it."""

from __future__ import annotations

import asyncio

import structlog

from relay import metrics
from relay.config import Settings
from relay.store import Store

log = structlog.get_logger("relay.retention")

# A breather between batches, so a large purge never crowds out the workers' statements.
BATCH_PAUSE = 0.05


async def purge(store: Store, settings: Settings) -> int:
    """Delete everything past retention, batch by batch; returns the events deleted (0 when
    another replica is purging)."""
    total = 0
    while True:
        deleted = await store.purge_batch(
            done_seconds=settings.retention,
            failed_seconds=settings.failed_retention,
            batch=settings.purge_batch,
        )
        if deleted < 0:
            break
        total += deleted
        metrics.PURGED.inc(deleted)
        if deleted < settings.purge_batch:
            break
        await asyncio.sleep(BATCH_PAUSE)
    if total:
        log.info("purged", events=total)
    return total
