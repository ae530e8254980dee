"""Turns one integration's claimed deliveries into outcomes: validate, rename or skip, build,
size-check, batch, send through the injected sender, isolate a rejected call, decide retries.
No I/O of its own: the sender is a port, so this runs the same against Segment, the sink, or
an in-memory twin."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.model import DeliveryStatus, Event, Integration, MalformedEvent, Row, parse_event
from relay.retry import (
    Response,
    RetrySchedule,
    Verdict,
    classify,
    describe_failure,
    retry_delay,
)
from relay.segment import (
    MAX_BATCH_EVENTS,
    MAX_CALL_BYTES,
    Encoded,
    batch_overhead,
    build_track_call,
    encode_batch,
    encode_call,
    halves,
    message_id,
    plan_batches,
)

# Wait this long after a 429 that named no delay.
DEFAULT_RATE_LIMIT_WAIT = 1.0
# Parsing and building a share of 1,000 events is 10-20 ms of CPU. Pausing every so many events
# lets the event loop take in the next claim's rows and other shares' answers meanwhile: a drain
# then kept more of the machine busy (1.43 of 2 cores against 1.32, README, Benchmark).
YIELD_EVERY = 250


@dataclass(slots=True)
class Claimed:
    """A delivery this worker holds a lease on, with its outbox row. Not frozen, which would
    double its construction cost, once per claimed row (treat it as read-only)."""

    event_id: str
    attempts: int
    row: Row | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The new state of deliveries that fared alike: usually a whole batch, so recording a
    share costs one object per batch rather than one per event. `sent` says whether it records a
    send (each delivery's attempt count goes up by one, and last_attempt_at and last_status_code
    change) or only a decision made without sending."""

    deliveries: Sequence[Claimed]
    status: DeliveryStatus
    sent: bool
    delay: float | None = None
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None

    def attempts(self, item: Claimed) -> int:
        """The delivery's attempt count once this outcome is recorded."""
        return item.attempts + 1 if self.sent else item.attempts


SendBatch = Callable[[bytes], Awaitable[Response]]


@dataclass
class GroupResult:
    outcomes: list[Outcome] = field(default_factory=list)
    requests: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    # Set when Segment answered 429: how long this integration must stay quiet.
    rate_limited_for: float | None = None

    def each(self) -> Iterator[tuple[Claimed, Outcome]]:
        """Every delivery with its outcome."""
        return ((item, o) for o in self.outcomes for item in o.deliveries)


async def deliver_group(
    integration: Integration,
    claimed: Sequence[Claimed],
    send: SendBatch,
    *,
    schedule: RetrySchedule,
    sent_at: str,
    max_events: int = MAX_BATCH_EVENTS,
) -> GroupResult:
    """Send one integration's claimed deliveries and say what became of each.

    One bad event never fails its batch-mates: malformed and oversize events fail before
    sending, and a batch Segment rejects with 400/413 is halved until the culprit stands alone.
    After a 429 nothing more is sent for this integration; unsent deliveries wait, uncounted.
    """
    result = GroupResult()
    write_key = integration.write_key.get_secret_value()
    events: list[tuple[Claimed, Event]] = []
    for count, item in enumerate(claimed, 1):
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        try:
            events.append((item, parse_event(item.row)))
        except MalformedEvent as exc:
            result.outcomes.append(_failed_unsent(item, f"malformed event: {exc}"))
    # Chronological batches: Segment does not promise order, but downstream readers like it.
    events.sort(key=lambda pair: pair[1].occurred_at)
    ready: list[Encoded[Claimed]] = []
    skipped: list[Claimed] = []
    for count, (item, event) in enumerate(events, 1):
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        name = integration.event_settings.name_for(event.event_type)
        if name is None:
            skipped.append(item)
            continue
        msg_id = message_id(event.id, integration.message_id_suffix)
        body = encode_call(build_track_call(event, name, msg_id, sent_at))
        if len(body) > MAX_CALL_BYTES:
            reason = (
                f"track call is {len(body)} bytes encoded, over Segment's limit of "
                f"{MAX_CALL_BYTES} bytes per call"
            )
            result.outcomes.append(_failed_unsent(item, reason))
            continue
        ready.append(Encoded(item, body))
    if skipped:
        result.outcomes.append(Outcome(skipped, DeliveryStatus.SKIPPED, sent=False))

    # Batches to send, the next one last. A batch Segment rejects with 400/413 is halved in
    # place, left half first. A loop, not a recursive closure: such a closure is a reference
    # cycle, which kept every share's outcomes and rows alive until a full collection (peak RSS
    # 238 MB with a 1,000,000-event backlog).
    overhead = batch_overhead(write_key)
    todo: list[Sequence[Encoded[Claimed]]] = []
    todo += reversed(plan_batches(ready, overhead=overhead, max_events=max_events))
    while todo:
        batch = todo.pop()
        if result.rate_limited_for is not None:
            result.outcomes.append(hold([c.key for c in batch], result.rate_limited_for))
            continue
        response = await send(encode_batch([c.body for c in batch], write_key))
        result.requests += 1
        result.batch_sizes.append(len(batch))
        verdict = classify(response.status)
        if verdict is Verdict.ISOLATE and len(batch) > 1:
            left, right = halves(batch)
            todo += (right, left)
            continue
        if response.status == 429:
            result.rate_limited_for = response.retry_after or DEFAULT_RATE_LIMIT_WAIT
        items = [c.key for c in batch]
        result.outcomes.extend(_after_send(items, response, verdict, integration, schedule))
    return result


def _after_send(
    items: list[Claimed],
    response: Response,
    verdict: Verdict,
    integration: Integration,
    schedule: RetrySchedule,
) -> list[Outcome]:
    """What one answer means for the deliveries of its batch. A retry's delay depends on each
    delivery's attempt count, so a batch that mixes attempt counts splits by them."""
    code, took = response.status, response.duration_ms
    if verdict is Verdict.DELIVERED:
        return [Outcome(items, DeliveryStatus.DELIVERED, True, None, code, None, took)]
    secret = integration.write_key.get_secret_value()
    reason = describe_failure(response, integration.endpoint, secret)
    if verdict is not Verdict.RETRY:
        return [Outcome(items, DeliveryStatus.FAILED, True, None, code, reason, took)]
    by_attempts: dict[int, list[Claimed]] = {}
    for item in items:
        by_attempts.setdefault(item.attempts + 1, []).append(item)
    outcomes = []
    for attempts, alike in by_attempts.items():
        delay = retry_delay(schedule, attempts, response.retry_after)
        if delay is None:
            gave_up = f"gave up after {attempts} attempts; last: {reason}"
            outcomes.append(Outcome(alike, DeliveryStatus.FAILED, True, None, code, gave_up, took))
        else:
            outcomes.append(Outcome(alike, DeliveryStatus.PENDING, True, delay, code, reason, took))
    return outcomes


def _failed_unsent(item: Claimed, reason: str) -> Outcome:
    return Outcome([item], DeliveryStatus.FAILED, sent=False, error=reason)


def hold(items: Sequence[Claimed], wait: float, reason: str | None = None) -> Outcome:
    """Put claimed deliveries back, unsent and uncounted, due again after `wait` seconds."""
    return Outcome(items, DeliveryStatus.PENDING, sent=False, delay=wait, error=reason)
