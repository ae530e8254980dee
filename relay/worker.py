"""The daemon loop: claim due deliveries, deliver each integration's share, record outcomes.

One claim loop takes work while there is capacity (RELAY_CONCURRENCY shares in flight, at most
RELAY_CONCURRENCY_PER_INTEGRATION of them per integration) and starts one task per
integration's share. A slow or hanging endpoint therefore holds only its own slots: other
integrations keep being claimed and delivered. Any number of processes may share a database:
claims lock their rows with SKIP LOCKED (relay.store.Claim), so nothing is sent twice in normal
operation, and nothing is lost when a process dies (its locks go with its connections, its
leases expire, and another worker re-sends the same messageIds). An integration's settings are
read at every claim, so renames, disables, pauses and key changes apply to the next send without
a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from pydantic import ValidationError

from relay import metrics
from relay.config import Settings
from relay.dispatch import Claimed, GroupResult, Outcome, deliver_group, hold
from relay.model import (
    DeliveryStatus,
    Integration,
    IntegrationStatus,
    describe_validation_error,
    iso_timestamp,
)
from relay.ratelimit import RateLimiter
from relay.retry import Response
from relay.sender import Sender
from relay.store import Claim, ClaimLost, Store, listen

log = structlog.get_logger("relay.worker")

# How long to wait before retrying an integration whose stored settings do not validate.
INVALID_INTEGRATION_DELAY = 60.0
# After an unexpected error while delivering, the share is released this much later.
ROUND_ERROR_DELAY = 30.0
# With --until-idle and work in flight, how often to look again.
IDLE_CHECK = 0.05
# Dead letters named in one log line.
LOGGED_EVENT_IDS = 20
# Everything a lost or refusing database can raise; InternalClientError covers protocol errors
# when a connection dies mid-message (e.g. PostgreSQL restarted).
DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Share:
    """One integration's part of a claim."""

    claim: Claim
    integration_id: str
    row: Mapping[str, Any] | None  # the integration as read at claim time; None once deleted
    claims: list[Claimed]
    sent_at: str


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
        self._wake = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], tuple[str, float]] = {}
        self._per_integration: Counter[str] = Counter()
        self._failing: dict[str, float] = {}
        self._started = time.monotonic()
        self._heartbeat = time.monotonic()

    def stop(self) -> None:
        """Stop claiming; shares in flight finish (within the grace period) or are released."""
        self._stopping.set()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """Alive and not stuck: the claim loop turns, and no share outlives its lease."""
        now = time.monotonic()
        since_heartbeat = now - self._heartbeat
        oldest = max((now - started for _, started in self._in_flight.values()), default=0.0)
        stalled = since_heartbeat > self.settings.stall_seconds
        overdue = oldest > self.settings.lease_seconds
        return {
            "status": "stalled" if stalled or overdue else "ok",
            "seconds_since_claim_loop": round(since_heartbeat, 3),
            "in_flight": len(self._in_flight),
            "oldest_in_flight_seconds": round(oldest, 3),
            "uptime_seconds": round(now - self._started, 3),
        }

    async def run(self, *, until_idle: bool = False) -> Counter[str]:
        """Run until stop() (SIGTERM) or, with until_idle, until nothing is due."""
        log.info(
            "worker_started",
            worker_id=self.settings.worker_id,
            concurrency=self.settings.concurrency,
            until_idle=until_idle,
        )
        listener = asyncio.create_task(self._listen())
        try:
            await self._claim_loop(until_idle)
            await self._drain()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        log.info("worker_stopped", worker_id=self.settings.worker_id, **dict(self.counts))
        return self.counts

    async def _claim_loop(self, until_idle: bool) -> None:
        s = self.settings
        backoff = Backoff()
        while not self._stopping.is_set():
            self._heartbeat = time.monotonic()
            free = s.concurrency - len(self._in_flight)
            if free <= 0:
                # Wait for a slot. A wake-up that came meanwhile (a notification) is dropped:
                # left set, it made this loop spin, and a freed slot wakes it anyway.
                self._wake.clear()
                await self._sleep(s.poll_interval_seconds)
                continue
            full = [
                i for i, n in self._per_integration.items() if n >= s.concurrency_per_integration
            ]
            self._wake.clear()
            try:
                claim = await self.store.claim(
                    limit=s.claim_limit,
                    per_integration=s.claim_per_integration,
                    max_integrations=free,
                    hold_seconds=s.claim_hold_seconds,
                    lease_seconds=s.lease_seconds,
                    exclude=full,
                )
            except DATABASE_ERRORS as exc:
                wait = backoff.next()
                log.warning("database_unavailable", error=str(exc), retry_in_seconds=wait)
                await self._sleep(wait)
                continue
            except Exception:
                # A bug must not stop deliveries: log it, back off, claim again.
                wait = backoff.next()
                log.exception("claim_failed", retry_in_seconds=wait)
                await self._sleep(wait)
                continue
            backoff.reset()
            groups = claim.groups
            if groups:
                sent_at = iso_timestamp(self.clock())
                for integration_id, claims in groups.items():
                    row = claim.integrations.get(integration_id)
                    self._start(Share(claim, integration_id, row, claims, sent_at))
                if _maybe_more(groups, s.claim_limit, s.claim_per_integration, free):
                    continue
                # Everything due was taken: wait for a notification instead of asking again.
            if until_idle and not self._in_flight:
                return
            await self._sleep(IDLE_CHECK if until_idle else s.poll_interval_seconds)

    def _start(self, share: Share) -> None:
        task = asyncio.create_task(self._deliver(share))
        self._in_flight[task] = (share.integration_id, time.monotonic())
        self._per_integration[share.integration_id] += 1
        metrics.IN_FLIGHT.set(len(self._in_flight))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        """Free the share's slots, and wake the claim loop only if it may be waiting for them:
        waking on every finished share cost a claim query each under steady traffic."""
        s = self.settings
        integration_id, _ = self._in_flight.pop(task)
        was_full = (
            len(self._in_flight) + 1 >= s.concurrency
            or self._per_integration[integration_id] >= s.concurrency_per_integration
        )
        self._per_integration[integration_id] -= 1
        if not self._per_integration[integration_id]:
            del self._per_integration[integration_id]
        metrics.IN_FLIGHT.set(len(self._in_flight))
        if was_full:
            self.wake()

    async def _drain(self) -> None:
        """After stop: let shares in flight finish within the grace period, cancel the rest
        (each releases its rows at once)."""
        tasks = list(self._in_flight)
        if not tasks:
            return
        _done, unfinished = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        """Wait for a wake-up or `seconds`; returns at once, without yielding, if the wake-up
        is already set. asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        cancellation that arrives as the wake-up does."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _deliver(self, share: Share) -> None:
        claim, integration_id, claims = share.claim, share.integration_id, share.claims
        bound = log.bind(integration_id=integration_id)
        try:
            await self._deliver_share(share, bound)
        except asyncio.CancelledError:
            released = await _quietly(asyncio.shield(claim.release(integration_id)))
            self.counts["released"] += released or 0
            raise
        except (*DATABASE_ERRORS, ClaimLost) as exc:
            bound.warning(
                "share_abandoned",
                error=str(exc),
                events=len(claims),
                note="the events are due again and are sent again with the same messageIds",
            )
        except Exception:
            bound.exception("delivery_round_failed", events=len(claims))
            await _quietly(claim.release(integration_id, after_seconds=ROUND_ERROR_DELAY))

    async def _deliver_share(self, share: Share, bound: Any) -> None:
        claim, integration_id, claims = share.claim, share.integration_id, share.claims
        if share.row is None:  # deleted before the claim; its deliveries go with it
            await claim.release(integration_id)
            return
        try:
            integration = Integration.model_validate(share.row)
        except ValidationError as exc:
            reason = f"integration settings are invalid: {describe_validation_error(exc)}"
            bound.error("integration_invalid", error=reason, held=len(claims))
            held = hold(claims, INVALID_INTEGRATION_DELAY, reason)
            await claim.complete(integration_id, [held])
            return
        if integration.status is IntegrationStatus.PAUSED:
            await claim.complete(integration_id, [hold(claims, 0.0)])
            return

        write_key = integration.write_key.get_secret_value()
        region = integration.region.value
        label = integration_id if self.settings.metrics_per_integration else ""

        async def send(body: bytes) -> Response:
            await self._limiter.acquire(integration_id)
            response = await self.sender.post_batch(integration.endpoint, write_key, body)
            metrics.REQUESTS.labels(metrics.status_class(response.status), region, label).inc()
            if response.duration_ms is not None:
                metrics.REQUEST_SECONDS.labels(region).observe(response.duration_ms / 1000)
            return response

        started = time.monotonic()
        result = await deliver_group(
            integration,
            claims,
            send,
            schedule=self.settings.retry_schedule,
            sent_at=share.sent_at,
            max_events=self.settings.batch_max_events,
        )
        await self._record(claim, integration_id, result, bound)
        tally: Counter[str] = Counter()
        for o in result.outcomes:
            tally[_outcome(o)] += len(o.deliveries)
        self._observe(integration, result, tally, label)
        self._report(bound, integration_id, result, tally, time.monotonic() - started)

    async def _record(
        self, claim: Claim, integration_id: str, result: GroupResult, bound: Any
    ) -> None:
        """Write the outcomes. A share handed over to a lease retries through a database
        outage: Segment already has these events, and the worker is the only one that knows.
        (If the lease expired meanwhile and another worker took the rows over, the lease token
        turns this write into a no-op.) A share whose claim lost its transaction raises
        ClaimLost: its rows are free again, and another claim sends them again."""
        backoff = Backoff()
        while True:
            try:
                await claim.complete(integration_id, result.outcomes)
                if result.rate_limited_for is not None:
                    await self.store.rate_limit(integration_id, result.rate_limited_for)
                    bound.warning("integration_rate_limited", wait_seconds=result.rate_limited_for)
                return
            except DATABASE_ERRORS as exc:
                wait = backoff.next()
                bound.warning(
                    "outcomes_not_recorded_yet",
                    error=str(exc),
                    events=sum(len(o.deliveries) for o in result.outcomes),
                    retry_in_seconds=wait,
                )
                await asyncio.sleep(wait)

    def _observe(
        self, integration: Integration, result: GroupResult, tally: Counter[str], label: str
    ) -> None:
        """Metrics for one share: label lookups and histogram updates once per share, not per
        event."""
        region = integration.region.value
        metrics.observe_many(metrics.BATCH_EVENTS, result.batch_sizes)
        for outcome, count in tally.items():
            metrics.DELIVERIES.labels(outcome, region, label).inc(count)
        now = self.clock().timestamp()
        latencies: list[float] = []
        ages: list[float] = []
        attempts: dict[DeliveryStatus, list[int]] = {s: [] for s in DONE}
        for o in result.outcomes:
            if o.status is DeliveryStatus.DELIVERED:
                for item in o.deliveries:
                    get = item.row.get
                    created, occurred = get("created_epoch"), get("occurred_epoch")
                    if isinstance(created, float) and math.isfinite(created):
                        latencies.append(now - created)
                    if isinstance(occurred, float):  # finite: the event was delivered
                        ages.append(max(now - occurred, 0.0))
            if o.sent and o.status in attempts:
                attempts[o.status].extend(map(o.attempts, o.deliveries))
        metrics.observe_many(metrics.LATENCY.labels(region), latencies)
        metrics.observe_many(metrics.EVENT_AGE.labels(region), ages)
        for status, counts in attempts.items():
            metrics.observe_many(metrics.ATTEMPTS.labels(status.value), counts)

    def _report(
        self,
        bound: Any,
        integration_id: str,
        result: GroupResult,
        tally: Counter[str],
        seconds: float,
    ) -> None:
        """One line per share; one per batch of retries and of dead letters; one when an
        integration starts failing and one when it recovers."""
        retries = [o for o in result.outcomes if _outcome(o) == "retried"]
        dead = [o for o in result.outcomes if o.status is DeliveryStatus.FAILED]
        if retries:
            first = retries[0]
            item = first.deliveries[0]
            bound.warning(
                "delivery_retry_scheduled",
                events=sum(len(o.deliveries) for o in retries),
                event_id=item.event_id,
                attempt=first.attempts(item),
                status_code=first.status_code,
                retry_in_seconds=first.delay,
                error=first.error,
            )
        if dead:
            event_ids = [c.event_id for o in dead for c in o.deliveries]
            bound.error(
                "deliveries_failed",
                events=len(event_ids),
                event_ids=event_ids[:LOGGED_EVENT_IDS],
                attempt=dead[0].attempts(dead[0].deliveries[0]),
                status_code=dead[0].status_code,
                error=dead[0].error,
            )
        sent_failures = [o for o in retries + dead if o.sent]
        if tally["delivered"] and integration_id in self._failing:
            since = self._failing.pop(integration_id)
            bound.info(
                "integration_recovered", failed_for_seconds=round(time.monotonic() - since, 1)
            )
        elif sent_failures and not tally["delivered"] and integration_id not in self._failing:
            self._failing[integration_id] = time.monotonic()
            bound.warning(
                "integration_failing",
                status_code=sent_failures[0].status_code,
                error=sent_failures[0].error,
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
            except Exception as exc:
                wait = backoff.next()
                log.warning(
                    "listen_failed", error=f"{type(exc).__name__}: {exc}", retry_in_seconds=wait
                )
                await asyncio.sleep(wait)
                continue
            backoff.reset()
            try:
                await lost.wait()
                log.warning("listen_connection_lost")
            finally:
                if not conn.is_closed():
                    conn.terminate()


DONE = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)


def _maybe_more(
    groups: Mapping[str, list[Claimed]], limit: int, per_integration: int, max_integrations: int
) -> bool:
    """Whether a claim may have left due work behind: it hit one of its caps."""
    return (
        sum(map(len, groups.values())) >= limit
        or len(groups) >= max_integrations
        or any(len(claims) >= per_integration for claims in groups.values())
    )


def _outcome(o: Outcome) -> str:
    if o.status is DeliveryStatus.PENDING:
        return "retried" if o.sent else "held"
    return o.status.value


async def _quietly(awaitable: Any) -> int | None:
    """Best effort: a release that fails leaves the rows to their lease, or to no one."""
    try:
        result: int = await awaitable
    except (*DATABASE_ERRORS, ClaimLost):
        return None
    return result
