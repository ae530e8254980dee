"""Segment's wire format: one event to one track call, messageIds, and batches that respect every
documented limit. Pure: no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson

from relay import __version__
from relay.model import Event, iso_timestamp

MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
# Over 2,500 events Segment answers 200 and drops the whole batch.
MAX_BATCH_EVENTS = 2500
MAX_MESSAGE_ID_LENGTH = 100
LIBRARY = {"name": "relay", "version": __version__}
USER_AGENT = f"relay/{__version__}"

_HASH_LENGTH = 32


def message_id(event_id: str, suffix: str | None) -> str:
    """The stable messageId of one event as sent by one integration.

    The first integration of an app sends the event id verbatim (the spec's `evt_…`); further
    integrations append their fixed suffix, because Segment dedupes messageIds across every
    workspace. Ids that would exceed Segment's 100 characters keep a readable prefix and gain a
    hash of the whole id, so two long ids never collide the way truncation would make them.
    """
    tail = f".{suffix}" if suffix else ""
    if len(event_id) + len(tail) <= MAX_MESSAGE_ID_LENGTH:
        return event_id + tail
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:_HASH_LENGTH]
    keep = MAX_MESSAGE_ID_LENGTH - len(tail) - _HASH_LENGTH - 1
    return f"{event_id[:keep]}~{digest}{tail}"


def build_track_call(event: Event, event_name: str, msg_id: str, sent_at: str) -> dict[str, Any]:
    """The track call for one event, field for field as the spec's property tables say."""
    call: dict[str, Any] = {"type": "track", "event": event_name}
    if event.user_id is not None:
        call["userId"] = event.user_id
    call["anonymousId"] = event.anonymous_id
    call["messageId"] = msg_id
    call["timestamp"] = event.occurred_at
    call["sentAt"] = sent_at

    context: dict[str, Any] = {}
    page = {}
    if event.page_path is not None:
        page["path"] = event.page_path
    if event.page_referrer is not None:
        page["referrer"] = event.page_referrer
    if page:
        context["page"] = page
    if event.locale is not None:
        context["locale"] = event.locale
    context["library"] = LIBRARY
    call["context"] = context

    properties: dict[str, Any] = {
        "app_id": event.app_id,
        "organization_id": event.organization_id,
    }
    if event.survey_id is not None:
        properties["survey_id"] = event.survey_id
    if event.response_id is not None:
        properties["response_id"] = event.response_id
    if event.traits is not None:
        properties["traits"] = event.traits
    properties["identities"] = event.identities if event.identities is not None else {}
    properties["references"] = event.references if event.references is not None else {}
    call["properties"] = properties
    return call


CHECK_EVENT = "Relay Test Event"


def build_check_call(integration_id: str, msg_id: str, sent_at: str) -> dict[str, Any]:
    """The clearly labelled call `relay integrations test` sends to check a destination."""
    return {
        "type": "track",
        "event": CHECK_EVENT,
        "anonymousId": "relay-test",
        "messageId": msg_id,
        "timestamp": sent_at,
        "sentAt": sent_at,
        "context": {"library": LIBRARY},
        "properties": {
            "relay_test": True,
            "integration_id": integration_id,
            "note": "sent by `relay integrations test` to check this source; safe to ignore",
        },
    }


def encode_call(call: dict[str, Any]) -> bytes:
    return orjson.dumps(call)


def encode_batch(calls: Sequence[bytes], write_key: str) -> bytes:
    """The /v1/batch body. The write key travels in the body as well as in Basic auth, as
    Segment's own libraries send it."""
    return b'{"batch":[%b],"writeKey":%b}' % (b",".join(calls), orjson.dumps(write_key))


def batch_overhead(write_key: str) -> int:
    """Bytes of the batch envelope around its calls."""
    return len(encode_batch((), write_key))


K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Encoded(Generic[K]):
    """An encoded call and the key of the delivery it belongs to."""

    key: K
    body: bytes


def plan_batches(
    calls: Sequence[Encoded[K]],
    *,
    overhead: int,
    max_events: int = MAX_BATCH_EVENTS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[list[Encoded[K]]]:
    """Split calls, in order, into batches within the event count and the encoded byte limit
    (envelope and separators included). Every call must already be within MAX_CALL_BYTES."""
    batches: list[list[Encoded[K]]] = []
    current: list[Encoded[K]] = []
    size = overhead
    for call in calls:
        extra = len(call.body) + (1 if current else 0)
        if current and (len(current) >= max_events or size + extra > max_bytes):
            batches.append(current)
            current, size, extra = [], overhead, len(call.body)
        current.append(call)
        size += extra
    if current:
        batches.append(current)
    return batches


def halves(items: Sequence[K]) -> tuple[Sequence[K], Sequence[K]]:
    middle = len(items) // 2
    return items[:middle], items[middle:]


def now_iso(clock: Callable[[], datetime]) -> str:
    return iso_timestamp(clock())
