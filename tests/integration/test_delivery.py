"""End to end through real PostgreSQL and real HTTP: what arrives at Segment, and when."""

from __future__ import annotations

import asyncpg

from relay import __version__
from tests.conftest import RunningSink
from tests.helpers import (
    EU,
    add_integration,
    deliveries,
    event,
    insert_events,
    run_until_idle,
    settings_for,
)


async def test_track_call_carries_every_field_of_the_spec(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(
        pool,
        [
            event(
                1,
                "Response Submitted",
                user_id="user_123",
                anonymous_id="anon_abc",
                survey_id="srv_1",
                response_id="resp_1",
                page_path="/checkout",
                page_referrer="https://example.com/cart",
                locale="en-US",
                traits={"email": "user@example.com"},
                identities={"userId": "user_123"},
                references={"flow": "f_1"},
            )
        ],
    )
    await run_until_idle(settings_for(database_url, sink.url))

    [call] = sink.sink.calls()
    sent_at = call.pop("sentAt")
    assert call == {
        "type": "track",
        "event": "Response Submitted",
        "userId": "user_123",
        "anonymousId": "anon_abc",
        "messageId": "evt_1",
        "timestamp": "2026-05-13T10:14:01.000Z",
        "context": {
            "page": {"path": "/checkout", "referrer": "https://example.com/cart"},
            "locale": "en-US",
            "library": {"name": "relay", "version": __version__},
        },
        "properties": {
            "app_id": "app_1",
            "organization_id": "org_1",
            "survey_id": "srv_1",
            "response_id": "resp_1",
            "traits": {"email": "user@example.com"},
            "identities": {"userId": "user_123"},
            "references": {"flow": "f_1"},
        },
    }
    assert sent_at.endswith("Z")
    assert len(sent_at) == len("2026-05-13T10:14:00.000Z")


async def test_optional_fields_are_omitted_and_always_fields_present(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1, anonymous_id="anon_only", user_id="")])
    await run_until_idle(settings_for(database_url, sink.url))

    [call] = sink.sink.calls()
    assert "userId" not in call
    assert call["anonymousId"] == "anon_only"
    assert call["context"] == {"library": {"name": "relay", "version": __version__}}
    assert call["properties"] == {
        "app_id": "app_1",
        "organization_id": "org_1",
        "identities": {},
        "references": {},
    }


async def test_batches_authenticate_like_segment_libraries(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool, write_key="wk-abc-1234")
    await insert_events(pool, [event(1), event(2)])
    await run_until_idle(settings_for(database_url, sink.url))

    [request] = sink.sink.requests
    assert request.path == "/v1/batch"
    assert request.status == 200
    assert request.events == 2
    assert request.basic_auth
    assert request.basic_auth_has_colon
    assert request.body_write_key_matches
    assert request.key_hint == "…1234"
    assert request.content_type == "application/json"
    assert request.user_agent == f"relay/{__version__}"


async def test_renamed_event_is_sent_under_its_new_name_and_disabled_one_is_skipped(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    integration = await add_integration(
        pool,
        event_settings={
            "Response Submitted": {"rename": "survey_responded"},
            "Flow Dismissed": {"enabled": False},
        },
    )
    await insert_events(
        pool, [event(1, "Flow Viewed"), event(2, "Flow Dismissed"), event(3, "Response Submitted")]
    )
    await run_until_idle(settings_for(database_url, sink.url))

    assert [c["event"] for c in sink.sink.calls()] == ["Flow Viewed", "survey_responded"]
    rows = await deliveries(pool, integration)
    assert rows["evt_2"]["status"] == "skipped"
    assert rows["evt_2"]["attempts"] == 0
    assert rows["evt_3"]["status"] == "delivered"
    assert rows["evt_3"]["delivered_at"] is not None


async def test_settings_are_read_at_send_time(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    integration = await add_integration(pool)
    await insert_events(pool, [event(1, "Flow Viewed")])
    await pool.execute(
        "UPDATE relay.integrations SET event_settings = "
        """'{"Flow Viewed": {"rename": "survey_seen"}}' WHERE id = $1""",
        integration,
    )
    await run_until_idle(settings_for(database_url, sink.url))

    assert [c["event"] for c in sink.sink.calls()] == ["survey_seen"]


async def test_paused_integration_holds_events_and_delivers_them_on_resume(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    integration = await add_integration(pool)
    await pool.execute("UPDATE relay.integrations SET status = 'paused' WHERE id = $1", integration)
    await insert_events(pool, [event(1), event(2)])
    settings = settings_for(database_url, sink.url)

    await run_until_idle(settings)
    assert sink.sink.calls() == []
    assert {r["status"] for r in (await deliveries(pool)).values()} == {"pending"}

    await pool.execute("UPDATE relay.integrations SET status = 'active' WHERE id = $1", integration)
    await run_until_idle(settings)
    assert sorted(c["messageId"] for c in sink.sink.calls()) == ["evt_1", "evt_2"]
    assert {r["status"] for r in (await deliveries(pool)).values()} == {"delivered"}


async def test_each_region_is_sent_to_its_own_endpoint(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink, eu_sink: RunningSink
) -> None:
    await add_integration(pool, write_key="key-global-0001", organization_id="org_us", app_id="a")
    await add_integration(
        pool, write_key="key-eu-0002", region="eu", organization_id="org_eu", app_id="a"
    )
    await insert_events(
        pool,
        [
            event(1, organization_id="org_us", app_id="a"),
            event(2, organization_id="org_eu", app_id="a"),
        ],
    )
    await run_until_idle(settings_for(database_url, sink.url, eu_sink.url))

    assert [c["messageId"] for c in sink.sink.calls()] == ["evt_1"]
    assert [c["messageId"] for c in eu_sink.sink.calls()] == ["evt_2"]
    assert {r.key_hint for r in eu_sink.sink.requests} == {"…0002"}


async def test_eu_integration_defaults_to_the_tracking_host(pool: asyncpg.Pool) -> None:
    integration = await add_integration(pool, region="eu")
    endpoint = await pool.fetchval(
        "SELECT endpoint FROM relay.integrations WHERE id = $1", integration
    )
    assert endpoint == EU


async def test_events_of_other_apps_are_not_delivered(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    await add_integration(pool)
    await insert_events(pool, [event(1), event(2, app_id="app_other")])
    await run_until_idle(settings_for(database_url, sink.url))

    assert [c["messageId"] for c in sink.sink.calls()] == ["evt_1"]
    assert await pool.fetchval("SELECT count(*) FROM relay.deliveries") == 1
