"""Event settings, integrations and outbox validation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from relay.model import (
    REGION_ENDPOINTS,
    EventSettings,
    EventType,
    Integration,
    MalformedEvent,
    Region,
    endpoint_error,
    parse_event,
)


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
    assert "traits: Input should be a valid dictionary" in message


def test_a_time_without_zone_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="occurred_at: must carry a time zone"):
        parse_event(_row(occurred_at=datetime(2026, 5, 13, 10, 14)))
