"""Event settings, integrations and outbox validation."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from relay.model import (
    JSON_COLUMNS,
    REGION_ENDPOINTS,
    Event,
    EventSettings,
    EventType,
    Integration,
    MalformedEvent,
    Region,
    describe_validation_error,
    endpoint_error,
    parse_event,
)
from relay.segment import build_track_call, encode_call


def test_unlisted_events_are_enabled_under_their_own_name() -> None:
    settings = EventSettings()
    assert [settings.name_for(e) for e in EventType] == [e.value for e in EventType]


def test_rename_and_disable() -> None:
    settings = EventSettings.model_validate(
        {"Response Submitted": {"rename": "survey_responded"}, "Flow Dismissed": {"enabled": False}}
    )
    assert settings.name_for(EventType.RESPONSE_SUBMITTED) == "survey_responded"
    assert settings.name_for(EventType.FLOW_DISMISSED) is None
    assert settings.name_for(EventType.FLOW_VIEWED) == "Flow Viewed"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"Flow Viewed": {"rename": ""}}, "non-empty"),
        ({"Flow Viewed": {"rename": "x" * 201}}, "at most 200"),
        ({"Flow Viewed": {"rename": "tab\there"}}, "printable"),
        ({"Flow Clicked": {"enabled": False}}, "Flow Clicked"),
        ({"Flow Viewed": {"rename": "Response Submitted"}}, "would both be sent as"),
        ({"Flow Viewed": {"rename": "same"}, "Flow Dismissed": {"rename": "same"}}, "'same'"),
        ({"Flow Viewed": {"colour": "red"}}, "Extra inputs"),
    ],
)
def test_bad_event_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EventSettings.model_validate(settings)


def test_a_rename_of_200_printable_characters_is_fine() -> None:
    name = "ü" * 200
    settings = EventSettings.model_validate({"Flow Viewed": {"rename": name}})
    assert settings.name_for(EventType.FLOW_VIEWED) == name


@pytest.mark.parametrize("region", list(Region))
def test_each_region_accepts_exactly_its_documented_endpoints(region: Region) -> None:
    all_endpoints = {e for es in REGION_ENDPOINTS.values() for e in es}
    for endpoint in all_endpoints:
        accepted = endpoint_error(region, endpoint) is None
        assert accepted == (endpoint in REGION_ENDPOINTS[region])


def test_integration_refuses_an_endpoint_of_another_region() -> None:
    with pytest.raises(ValidationError, match="not a documented global endpoint"):
        Integration(
            id="i",
            organization_id="o",
            app_id="a",
            write_key="k",
            region=Region.GLOBAL,
            endpoint="https://events.eu1.segmentapis.com",
        )


def test_integration_never_shows_its_write_key() -> None:
    integration = Integration(
        id="i",
        organization_id="o",
        app_id="a",
        write_key="wk_SECRET",
        region=Region.GLOBAL,
        endpoint="https://api.segment.io",
    )
    assert "wk_SECRET" not in repr(integration)
    assert "wk_SECRET" not in integration.model_dump_json()


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "evt_1",
        "organization_id": "o",
        "app_id": "a",
        "event_type": "Flow Viewed",
        "occurred_at": "2026-05-13T10:14:00Z",
        "anonymous_id": "anon",
    }
    row.update(fields)
    return row


def test_a_good_row_parses() -> None:
    event = parse_event(_row(traits={"email": "e"}, identities=None))
    assert event.event_type is EventType.FLOW_VIEWED
    assert event.traits == {"email": "e"}


def test_every_bad_field_is_named_in_one_line() -> None:
    with pytest.raises(MalformedEvent) as caught:
        parse_event(_row(event_type="Flow Clicked", anonymous_id="", traits="x"))
    message = str(caught.value)
    assert "\n" not in message
    assert (
        "event_type: Input should be 'Flow Viewed', 'Flow Dismissed' or 'Response Submitted'"
        in message
    )
    assert "anonymous_id: must not be empty" in message
    assert "traits: must be a JSON object" in message


def test_a_time_without_zone_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="occurred_at: must carry a time zone"):
        parse_event(_row(occurred_at=datetime(2026, 5, 13, 10, 14)))


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("2026-05-13T10:14:00.123Z", "2026-05-13T10:14:00.123Z"),  # as the claim writes it
        ("2026-05-13T12:14:00.123456+02:00", "2026-05-13T10:14:00.123Z"),
        (datetime(2026, 5, 13, 10, 14, 0, 123_999, tzinfo=UTC), "2026-05-13T10:14:00.123Z"),
    ],
)
def test_the_time_is_kept_in_segments_format(occurred_at: Any, expected: str) -> None:
    assert parse_event(_row(occurred_at=occurred_at)).occurred_at == expected


@pytest.mark.parametrize("text", ["infinity", "20000-01-01 00:00:00+00", "0500-01-01 00:00:00 BC"])
def test_a_time_segment_cannot_take_is_malformed(text: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        parse_event(_row(occurred_at=text))
    assert str(caught.value) == (
        f"occurred_at: {text!r} is not a time Segment can take (years 1 to 9999)"
    )


# The full validation, which parse_event's fast path must agree with.
_FULL = TypeAdapter(Event)
_good = st.one_of(st.sampled_from(["x", " y ", "evt_1"]), st.text(min_size=1).filter(str.strip))
_optional = st.one_of(st.none(), _good, st.sampled_from(["", "  "]))
_container = st.one_of(
    st.none(), st.dictionaries(st.text(), st.integers()), st.lists(st.integers())
)
_valid_rows = st.fixed_dictionaries(
    {
        **dict.fromkeys(("id", "organization_id", "app_id", "anonymous_id"), _good),
        **dict.fromkeys(
            ("user_id", "survey_id", "response_id", "page_path", "page_referrer"), _optional
        ),
        "locale": _optional,
        "event_type": st.sampled_from([e.value for e in EventType]),
        "occurred_at": st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))])),
        "traits": st.one_of(st.none(), st.dictionaries(st.text(), st.integers())),
        "identities": _container,
        "references": _container,
    }
)


_anything = st.one_of(
    st.none(),
    st.sampled_from(["", " \n", "Flow Viewed", "flow viewed", "2026-05-13T10:14:00Z", {0: "x"}]),
    st.text(max_size=3),
    st.integers(),
    st.datetimes(timezones=st.sampled_from([None, UTC])),
    st.dictionaries(st.one_of(st.text(max_size=2), st.integers()), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=2),
)
# A valid row with one or two fields replaced by anything at all.
_rows = st.tuples(
    _valid_rows,
    st.lists(
        st.tuples(st.sampled_from(sorted(f.name for f in dataclasses.fields(Event))), _anything),
        max_size=2,
    ),
).map(lambda pair: {**pair[0], **dict(pair[1])})


_BASE = {**_row(occurred_at=datetime(2026, 5, 13, tzinfo=UTC)), "locale": " "}


@settings(max_examples=500, deadline=None)
@given(_rows)
@example({**_BASE, "traits": {0: "x"}})
@example({**_BASE, "references": {0: 0}})
@example({**_BASE, "identities": "x"})
@example({**_BASE, "app_id": " "})
@example({**_BASE, "occurred_at": datetime(2026, 5, 13)})
@example({**_BASE, "event_type": {}})
@example({**_BASE, "occurred_at": "2026-05-13T10:14:00.000Z"})
@example({**_BASE, "occurred_at": "2026-05-13T10:14:00.000"})
@example({**_BASE, "occurred_at": "infinity"})
@example({**_BASE, "occurred_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2)))})
def test_the_fast_path_agrees_with_full_validation(row: dict[str, Any]) -> None:
    """parse_event skips pydantic for plain rows; it must accept and reject exactly what the
    model does, and build the same event."""
    try:
        expected: Event | str = _FULL.validate_python(row)
    except ValidationError as exc:
        expected = describe_validation_error(exc)
    try:
        got: Event | str = parse_event(row)
    except MalformedEvent as exc:
        got = str(exc)
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(_valid_rows)
def test_valid_rows_take_the_fast_path_to_the_same_event(row: dict[str, Any]) -> None:
    """The same agreement on rows the model accepts, which random rows seldom are."""
    assert parse_event(row) == _FULL.validate_python(row)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_valid_rows, st.sampled_from(sorted(JSON_COLUMNS)), _json_values)
def test_json_as_text_means_what_it_says(row: dict[str, Any], name: str, value: Any) -> None:
    """The claim hands JSON columns over as PostgreSQL's text (`traits_json`, …): accepted and
    refused exactly as the decoded value is, and sent as the same JSON."""
    decoded = {**row, **dict.fromkeys(JSON_COLUMNS), name: value}
    as_text = {**decoded, f"{name}_json": orjson.dumps(value).decode()}
    del as_text[name]
    try:
        expected: Any = _call_json(_FULL.validate_python(decoded))
    except ValidationError as exc:
        expected = describe_validation_error(exc)
    try:
        got: Any = _call_json(parse_event(as_text))
    except MalformedEvent as exc:
        got = str(exc)
    assert got == expected


def _call_json(event: Event) -> Any:
    return orjson.loads(encode_call(build_track_call(event, "E", event.id, "t")))


def test_json_text_is_sent_verbatim() -> None:
    """Decoding turned integers past 64 bits into floats; the text goes out as stored."""
    row = {**_BASE, "traits_json": '{"big": 123456789012345678901234567890}'}
    body = encode_call(build_track_call(parse_event(row), "E", "evt_1", "t"))
    assert b'"traits":{"big": 123456789012345678901234567890}' in body


def test_the_fast_path_reads_every_field_of_the_event() -> None:
    """A field added to Event but not to parse_event's fast path would silently stay None for
    every well-formed row; the property tests draw only the fields they know."""
    row = {
        **_BASE,
        **dict.fromkeys(("user_id", "survey_id", "response_id", "page_path", "page_referrer"), "v"),
        "locale": "v",
        "traits": {"t": 1},
        "identities": [1],
        "references": {"r": 2},
    }
    event = parse_event(row)
    unset = [f.name for f in dataclasses.fields(Event) if getattr(event, f.name) is None]
    assert unset == []
    assert {f.name for f in dataclasses.fields(Event)} <= set(row)
