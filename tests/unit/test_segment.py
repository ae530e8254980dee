"""The wire format: track calls, messageIds, and batch planning within Segment's limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.model import Event, EventType, iso_timestamp, parse_event
from relay.segment import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_ID_LENGTH,
    Encoded,
    batch_overhead,
    build_track_call,
    encode_batch,
    message_id,
    plan_batches,
)


def _event(**fields: object) -> Event:
    values: dict[str, object] = {
        "id": "evt_1",
        "organization_id": "org_1",
        "app_id": "app_1",
        "event_type": "Flow Viewed",
        "occurred_at": datetime(2026, 5, 13, 10, 14, tzinfo=UTC),
        "anonymous_id": "anon_abc",
    }
    values.update(fields)
    return parse_event(values)


def test_timestamp_is_utc_iso8601_with_milliseconds() -> None:
    moment = datetime(2026, 5, 13, 12, 14, 0, 123_999, tzinfo=timezone(timedelta(hours=2)))
    assert iso_timestamp(moment) == "2026-05-13T10:14:00.123Z"


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-11, minutes=-30))])))
def test_timestamp_matches_isoformat_in_utc(moment: datetime) -> None:
    expected = moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso_timestamp(moment) == expected


def test_track_call_uses_the_given_name_and_message_id() -> None:
    call = build_track_call(_event(), "survey_seen", "evt_1.abc123", "2026-05-13T10:15:00.000Z")
    assert call["event"] == "survey_seen"
    assert call["messageId"] == "evt_1.abc123"
    assert call["type"] == "track"
    assert call["sentAt"] == "2026-05-13T10:15:00.000Z"


def test_page_context_carries_only_what_is_known() -> None:
    call = build_track_call(_event(page_referrer="https://ref"), "E", "m", "s")
    assert call["context"]["page"] == {"referrer": "https://ref"}
    assert "locale" not in call["context"]


def test_identities_and_references_are_always_sent_and_may_be_lists() -> None:
    call = build_track_call(_event(identities=[{"type": "email"}]), "E", "m", "s")
    assert call["properties"]["identities"] == [{"type": "email"}]
    assert call["properties"]["references"] == {}


def test_blank_optional_strings_count_as_absent() -> None:
    call = build_track_call(_event(user_id="", survey_id="  ", locale=""), "E", "m", "s")
    assert "userId" not in call
    assert "survey_id" not in call["properties"]
    assert "locale" not in call["context"]


def test_message_id_is_the_event_id_for_the_first_integration() -> None:
    assert message_id("evt_123", None) == "evt_123"


def test_message_id_gains_the_integration_suffix() -> None:
    assert message_id("evt_123", "k3x9qa") == "evt_123.k3x9qa"


@pytest.mark.parametrize("suffix", [None, "k3x9qa"])
def test_long_event_ids_map_within_100_characters_without_collisions(suffix: str | None) -> None:
    a = "evt_" + "a" * 200 + "1"
    b = "evt_" + "a" * 200 + "2"
    ma, mb = message_id(a, suffix), message_id(b, suffix)
    assert len(ma) == len(mb) == MAX_MESSAGE_ID_LENGTH
    assert ma != mb
    assert ma == message_id(a, suffix)
    assert ma.startswith("evt_aaa")
    if suffix:
        assert ma.endswith(f".{suffix}")


def test_id_of_exactly_100_characters_is_kept_verbatim() -> None:
    exact = "e" * 100
    assert message_id(exact, None) == exact
    assert message_id(exact, "abcdef") != exact


def test_batch_body_is_json_with_the_write_key() -> None:
    calls = [b'{"a":1}', b'{"b":2}']
    body = orjson.loads(encode_batch(calls, 'k"ey'))
    assert body == {"batch": [{"a": 1}, {"b": 2}], "writeKey": 'k"ey'}
    assert batch_overhead("key") == len(encode_batch([], "key"))


def _calls(sizes: list[int]) -> list[Encoded[int]]:
    return [Encoded(n, b"x" * size) for n, size in enumerate(sizes)]


def test_batches_are_capped_by_event_count() -> None:
    batches = plan_batches(_calls([10] * 5001), overhead=30)
    assert [len(b) for b in batches] == [2500, 2500, 1]


def test_batches_are_capped_by_encoded_bytes_envelope_included() -> None:
    overhead = 30
    per_call = 1000
    batches = plan_batches(_calls([per_call] * 1200), overhead=overhead)
    for batch in batches:
        size = overhead + sum(len(c.body) for c in batch) + len(batch) - 1
        assert size <= MAX_BATCH_BYTES
    # As full as the limit allows: one more call would not have fitted.
    first = batches[0]
    assert overhead + (len(first) + 1) * (per_call + 1) - 1 > MAX_BATCH_BYTES
    assert sum(len(b) for b in batches) == 1200


def test_a_batch_filled_to_exactly_the_limit_is_allowed() -> None:
    overhead = 10
    # two calls: overhead + a + 1 + b == max_bytes
    a = 100
    b = 1000 - overhead - a - 1
    assert [len(x) for x in plan_batches(_calls([a, b]), overhead=overhead, max_bytes=1000)] == [2]
    assert [
        len(x) for x in plan_batches(_calls([a, b + 1]), overhead=overhead, max_bytes=1000)
    ] == [1, 1]


def test_batches_keep_the_order_of_the_calls() -> None:
    batches = plan_batches(_calls([10] * 7), overhead=0, max_events=3)
    assert [[c.key for c in b] for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


def test_every_event_type_builds() -> None:
    for event_type in EventType:
        assert build_track_call(_event(event_type=event_type), event_type.value, "m", "s")
