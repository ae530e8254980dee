"""The daemon loop: claim due deliveries, deliver each integration's share, record outcomes.

Several loops ("lanes") run per process and any number of processes may share a database:
claims use FOR UPDATE SKIP LOCKED and a lease, so nothing is sent twice in normal operation and
nothing is lost when a process dies (its lease expires and another worker re-sends the same
messageIds). Settings of an integration are read at every claim, so renames, disables, pauses
and key changes apply to the next send without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from pydantic import ValidationError

from relay.config import Settings
from relay.dispatch import Claimed, GroupResult, Outcome, deliver_group, hold
from relay.model import DeliveryStatus, Integration, IntegrationStatus, describe_validation_error
from relay.ratelimit import RateLimiter
from relay.retry import Response
from relay.segment import iso_timestamp
from relay.sender import Sender
from relay.store import Store, listen

log = structlog.get_logger("relay.worker")

# How long to wait before retrying an integration whose stored settings do not validate.
INVALID_INTEGRATION_DELAY = 60.0
# After an unexpected error in a round, its claim is released this much later.
ROUND_ERROR_DELAY = 30.0
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class Backoff:
    """Exponential wait for reconnecting: 0.5 s doubling up to 30 s."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        wait, self.current = self.current, min(self.current * 2, self.cap)
        return wait

    def reset(self) -> None:
        self.current = self.first


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        sender: Sender,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.sender = sender
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._limiter = RateLimiter(settings.rate_limit_per_second)
        self._stopping = asyncio.Event()
        self._wakes = [asyncio.Event() for _ in range(settings.concurrency)]
        self._busy = 0
        self._until_idle = False

    def stop(self) -> None:
        """Stop claiming; lanes finish what they hold (within the grace period)."""
        self._stopping.set()
        self.wake()

    def wake(self) -> None:
        for event in self._wakes:
            event.set()

    async def run(self, *, until_idle: bool = False) -> Counter[str]:
        """Run until stop() (SIGTERM) or, with until_idle, until nothing is due."""
        self._until_idle = until_idle
        log.info(
            "worker_started",
            worker_id=self.settings.worker_id,
            concurrency=self.settings.concurrency,
            until_idle=until_idle,
        )
        listener = asyncio.create_task(self._listen())
        lanes = [asyncio.create_task(self._lane(n)) for n in range(self.settings.concurrency)]
        try:
            await self._stopping.wait()
            _done, unfinished = await asyncio.wait(
                lanes, timeout=self.settings.shutdown_grace_seconds
            )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        finally:
            for task in lanes:
                task.cancel()
            listener.cancel()
            await asyncio.gather(listener, *lanes, return_exceptions=True)
        log.info("worker_stopped", worker_id=self.settings.worker_id, **dict(self.counts))
        return self.counts

    async def _lane(self, n: int) -> None:
        wake = self._wakes[n]
        backoff = Backoff()
        while not self._stopping.is_set():
            wake.clear()
            self._busy += 1
            try:
                worked = await self._round()
                backoff.reset()
            except DATABASE_ERRORS as exc:
                worked = False
                wait = backoff.next()
                log.warning("database_unavailable", error=str(exc), retry_in_seconds=wait)
                await self._sleep(wake, wait)
                continue
            except Exception:
                worked = False
                log.exception("worker_round_failed")
                await self._sleep(wake, backoff.next())
                continue
            finally:
                self._busy -= 1
            if worked:
                continue
            if self._until_idle:
                if self._busy == 0:
                    self.stop()
                    return
                await self._sleep(wake, 0.05)
            else:
                await self._sleep(wake, self.settings.poll_interval_seconds)

    async def _sleep(self, wake: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=seconds)

    async def _round(self) -> bool:
        """Claim once and deliver everything claimed; False when nothing was due."""
        s = self.settings
        token, groups = await self.store.claim(
            limit=s.claim_limit,
            per_integration=s.claim_per_integration,
            lease_seconds=s.lease_seconds,
        )
        if not groups:
            return False
        try:
            rows = {r["id"]: r for r in await self.store.integrations(list(groups))}
            sent_at = iso_timestamp(self.clock())
            await asyncio.gather(
                *(
                    self._deliver(token, iid, rows.get(iid), claims, sent_at)
                    for iid, claims in groups.items()
                )
            )
        except asyncio.CancelledError:
            released = await asyncio.shield(self.store.release(token))
            self.counts["released"] += released
            raise
        except Exception:
            await asyncio.shield(self.store.release(token, after_seconds=ROUND_ERROR_DELAY))
            raise
        return True

    async def _deliver(
        self,
        token: uuid.UUID,
        integration_id: str,
        row: Mapping[str, Any] | None,
        claims: list[Claimed],
        sent_at: str,
    ) -> None:
        bound = log.bind(integration_id=integration_id)
        if row is None:
            return  # deleted since the claim; its deliveries went with it
        try:
            integration = Integration.model_validate(row)
        except ValidationError as exc:
            reason = f"integration settings are invalid: {describe_validation_error(exc)}"
            bound.error("integration_invalid", error=reason, held=len(claims))
            held = [hold(c, INVALID_INTEGRATION_DELAY, reason) for c in claims]
            await self.store.complete(token, [(integration_id, o) for o in held])
            return
        if integration.status is IntegrationStatus.PAUSED:
            await self.store.complete(token, [(integration_id, hold(c, 0.0)) for c in claims])
            return

        write_key = integration.write_key.get_secret_value()

        async def send(body: bytes) -> Response:
            await self._limiter.acquire(integration_id)
            return await self.sender.post_batch(integration.endpoint, write_key, body)

        started = time.monotonic()
        result = await deliver_group(
            integration,
            claims,
            send,
            schedule=self.settings.retry_schedule,
            sent_at=sent_at,
            max_events=self.settings.batch_max_events,
        )
        await self.store.complete(token, [(integration_id, o) for o in result.outcomes])
        if result.rate_limited_for is not None:
            await self.store.rate_limit(integration_id, result.rate_limited_for)
            bound.warning("integration_rate_limited", wait_seconds=result.rate_limited_for)
        self._report(bound, result, time.monotonic() - started)

    def _report(self, bound: Any, result: GroupResult, seconds: float) -> None:
        """One line per integration and round; one more per dead letter and per retry batch."""
        tally: Counter[str] = Counter()
        retries: list[Outcome] = []
        for o in result.outcomes:
            if o.status is DeliveryStatus.PENDING:
                tally["retried" if o.sent else "held"] += 1
                if o.sent:
                    retries.append(o)
            else:
                tally[o.status.value] += 1
            if o.status is DeliveryStatus.FAILED:
                bound.error(
                    "delivery_failed",
                    event_id=o.event_id,
                    attempt=o.attempts,
                    status_code=o.status_code,
                    error=o.error,
                )
        if retries:
            first = retries[0]
            bound.warning(
                "delivery_retry_scheduled",
                events=len(retries),
                event_id=first.event_id,
                attempt=first.attempts,
                status_code=first.status_code,
                retry_in_seconds=first.delay,
                error=first.error,
            )
        self.counts.update(tally)
        bound.info(
            "deliveries_recorded",
            requests=result.requests,
            duration_ms=round(seconds * 1000, 1),
            **dict(tally),
        )

    async def _listen(self) -> None:
        """Keep one LISTEN connection open; polling covers the gaps while it reconnects."""
        url = self.settings.require_database_url()
        backoff = Backoff()
        while not self._stopping.is_set():
            lost = asyncio.Event()
            try:
                conn = await listen(url, self.wake, lost.set)
            except DATABASE_ERRORS as exc:
                wait = backoff.next()
                log.warning("listen_failed", error=str(exc), retry_in_seconds=wait)
                await asyncio.sleep(wait)
                continue
            backoff.reset()
            try:
                await lost.wait()
                log.warning("listen_connection_lost")
            finally:
                if not conn.is_closed():
                    await conn.close()
