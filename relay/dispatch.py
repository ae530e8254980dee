"""Turns one integration's claimed deliveries into outcomes: validate, rename or skip, build,
size-check, batch, send through the injected sender, isolate a rejected call, decide retries.
No I/O of its own: the sender is a port, so this runs the same against Segment, the sink, or
an in-memory twin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
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


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this worker holds a lease on, with its outbox row."""

    event_id: str
    attempts: int
    row: Row | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The new state of one delivery. `sent` says whether it records a send (attempt count,
    last_attempt_at and last_status_code change) or only a decision made without sending."""

    event_id: str
    status: DeliveryStatus
    attempts: int
    sent: bool
    delay: float | None = None
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None


SendBatch = Callable[[bytes], Awaitable[Response]]


@dataclass
class GroupResult:
    outcomes: list[Outcome] = field(default_factory=list)
    requests: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    # Set when Segment answered 429: how long this integration must stay quiet.
    rate_limited_for: float | None = None


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
    for item in claimed:
        try:
            events.append((item, parse_event(item.row)))
        except MalformedEvent as exc:
            result.outcomes.append(_failed_unsent(item, f"malformed event: {exc}"))
    # Chronological batches: Segment does not promise order, but downstream readers like it.
    events.sort(key=lambda pair: pair[1].occurred_at)
    ready: list[Encoded[Claimed]] = []
    for item, event in events:
        name = integration.event_settings.name_for(event.event_type)
        if name is None:
            result.outcomes.append(
                Outcome(item.event_id, DeliveryStatus.SKIPPED, item.attempts, sent=False)
            )
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

    def judge(batch: Sequence[Encoded[Claimed]], response: Response, verdict: Verdict) -> None:
        for call in batch:
            result.outcomes.append(_after_send(call.key, response, verdict, integration, schedule))

    async def send_isolating(batch: Sequence[Encoded[Claimed]]) -> None:
        if result.rate_limited_for is not None:
            result.outcomes.extend(hold(c.key, result.rate_limited_for) for c in batch)
            return
        response = await send(encode_batch([c.body for c in batch], write_key))
        result.requests += 1
        result.batch_sizes.append(len(batch))
        verdict = classify(response.status)
        if verdict is Verdict.ISOLATE and len(batch) > 1:
            left, right = halves(batch)
            await send_isolating(left)
            await send_isolating(right)
            return
        if response.status == 429:
            result.rate_limited_for = response.retry_after or DEFAULT_RATE_LIMIT_WAIT
        judge(batch, response, verdict)

    overhead = batch_overhead(write_key)
    for batch in plan_batches(ready, overhead=overhead, max_events=max_events):
        await send_isolating(batch)
    return result


def _after_send(
    item: Claimed,
    response: Response,
    verdict: Verdict,
    integration: Integration,
    schedule: RetrySchedule,
) -> Outcome:
    attempts = item.attempts + 1
    code, took = response.status, response.duration_ms
    if verdict is Verdict.DELIVERED:
        return Outcome(
            item.event_id, DeliveryStatus.DELIVERED, attempts, True, None, code, None, took
        )
    secret = integration.write_key.get_secret_value()
    reason = describe_failure(response, integration.endpoint, secret)
    if verdict is Verdict.RETRY:
        delay = retry_delay(schedule, attempts, response.retry_after)
        if delay is not None:
            return Outcome(
                item.event_id, DeliveryStatus.PENDING, attempts, True, delay, code, reason, took
            )
        reason = f"gave up after {attempts} attempts; last: {reason}"
    return Outcome(item.event_id, DeliveryStatus.FAILED, attempts, True, None, code, reason, took)


def _failed_unsent(item: Claimed, reason: str) -> Outcome:
    return Outcome(item.event_id, DeliveryStatus.FAILED, item.attempts, False, error=reason)


def hold(item: Claimed, wait: float, reason: str | None = None) -> Outcome:
    """Put a claimed delivery back, unsent and uncounted, due again after `wait` seconds."""
    return Outcome(
        item.event_id, DeliveryStatus.PENDING, item.attempts, sent=False, delay=wait, error=reason
    )
