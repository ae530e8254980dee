"""The admin HTTP API over real HTTP: auth, problem details, masking, audit, and changes that a
running worker picks up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from relay.admin.api import ROUTES
from relay.admin.openapi import openapi_document
from relay.daemon import run_worker
from relay.sender import Sender
from relay.sink import Fault
from relay.web import start_http
from tests.conftest import RunningSink
from tests.helpers import (
    deliveries,
    event,
    insert_events,
    relay_command,
    run_until_idle,
    settings_for,
    subprocess_env,
    wait_until,
)

TOKEN = "ops-token-0123456789"
KEY = "wk_api_SECRET_0123456789"


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers
        ) as resp:
            text = await resp.text()
            assert KEY not in text, "a write key leaked into a response"
            return resp.status, json.loads(text) if text else None, resp.content_type


@pytest.fixture
async def api(database_url: str, sink: RunningSink, pool: asyncpg.Pool) -> AsyncIterator[Api]:
    settings = settings_for(
        database_url,
        sink.url,
        http_listen="127.0.0.1:0",
        admin_tokens={"ops": TOKEN, "ci": "ci-token-0123456789"},
    )
    async with Sender(base_url=settings.base_url, total_timeout=5, connect_timeout=2) as sender:
        runner = await start_http(settings, pool, sender, None)
        assert runner is not None
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"http://{host}:{port}/api/v1")
        await runner.cleanup()


def _new(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "organization_id": "org_1",
        "app_id": "app_1",
        "write_key": KEY,
        "region": "global",
    }
    body.update(fields)
    return body


async def test_requests_without_the_right_token_are_refused(api: Api) -> None:
    for token in (None, "wrong-token-000000000", TOKEN + "x"):
        status, body, content_type = await api.call("GET", "/integrations", token=token)
        assert status == 401
        assert content_type == "application/problem+json"
        assert body["title"] == "Unauthorized"


async def test_the_openapi_document_is_public_and_matches_the_routes(api: Api) -> None:
    status, doc, _ = await api.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert doc == json.loads(json.dumps(openapi_document()))
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == {(method, path) for method, path, _ in ROUTES}


async def test_create_show_list_update_delete(api: Api, pool: asyncpg.Pool) -> None:
    status, created, _ = await api.call("POST", "/integrations", _new(region="eu", name="EU prod"))
    assert status == 201
    assert created["write_key_hint"] == "…6789"
    assert created["endpoint"] == "https://events.eu1.segmentapis.com"
    assert "write_key" not in created
    iid = created["id"]

    status, shown, _ = await api.call("GET", f"/integrations/{iid}")
    assert (status, shown) == (200, created)
    status, listed, _ = await api.call("GET", "/integrations?organization_id=org_1")
    assert [i["id"] for i in listed] == [iid]
    assert (await api.call("GET", "/integrations?organization_id=other"))[1] == []

    status, changed, _ = await api.call(
        "PATCH",
        f"/integrations/{iid}",
        {"region": "global", "events": {"Flow Viewed": {"rename": "survey_seen"}}},
    )
    assert status == 200
    assert changed["endpoint"] == "https://api.segment.io"
    assert changed["events"]["Flow Viewed"] == {
        "enabled": True,
        "rename": "survey_seen",
        "sent_as": "survey_seen",
    }

    status, deleted, _ = await api.call("DELETE", f"/integrations/{iid}")
    assert (status, deleted) == (200, {"id": iid, "dropped_deliveries": 0, "dropped_pending": 0})
    assert (await api.call("GET", f"/integrations/{iid}"))[0] == 404


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"region": "eu", "endpoint": "https://api.segment.io"}, "endpoint", "not a documented eu"),
        ({"region": "mars"}, "region", "Input should be 'global' or 'eu'"),
        ({"write_key": ""}, "write_key", "must not be empty"),
        ({"write_key": "two words"}, "write_key", "visible ASCII characters without spaces"),
        (
            {"events": {"Flow Clicked": {"enabled": False}}},
            "events.Flow Clicked",
            "Input should be",
        ),
        ({"events": {"Flow Viewed": {"rename": "x" * 201}}}, "events", "at most 200 characters"),
        ({"events": {"Flow Viewed": {"rename": "bell\u0007"}}}, "events", "printable"),
        (
            {"events": {"Flow Viewed": {"rename": "Flow Dismissed"}}},
            "events",
            "would both be sent as 'Flow Dismissed'",
        ),
        ({"organization_id": "  "}, "organization_id", "must not be empty"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"app_id": "nul\u0000byte"}, "app_id", "NUL"),
    ],
)
async def test_bad_input_is_a_problem_document_naming_the_field(
    api: Api, body: dict[str, Any], field: str, message: str
) -> None:
    status, problem, content_type = await api.call("POST", "/integrations", _new(**body))
    assert status == 422
    assert content_type == "application/problem+json"
    assert problem["status"] == 422
    assert any(
        e["field"].startswith(field) and message in e["message"] for e in problem["errors"]
    ), problem


async def test_invalid_json_is_a_400_problem(api: Api) -> None:
    async with api.session.post(
        f"{api.base}/integrations",
        data=b"{nope",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"


async def test_an_endpoint_that_conflicts_with_the_stored_region_is_a_409(api: Api) -> None:
    _, created, _ = await api.call("POST", "/integrations", _new(region="eu"))
    status, problem, _ = await api.call(
        "PATCH", f"/integrations/{created['id']}", {"endpoint": "https://api.segment.io"}
    )
    assert status == 409
    assert problem["errors"][0]["field"] == "endpoint"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/integrations/int_missing"),
        ("PATCH", "/integrations/int_missing"),
        ("DELETE", "/integrations/int_missing"),
        ("POST", "/integrations/int_missing/test"),
        ("GET", "/events/evt_missing/deliveries"),
        ("GET", "/stats?integration_id=int_missing"),
    ],
)
async def test_unknown_ids_are_404_problems(api: Api, method: str, path: str) -> None:
    body: dict[str, Any] | None = {} if method == "PATCH" else None
    status, problem, content_type = await api.call(method, path, body)
    assert (status, content_type) == (404, "application/problem+json")
    assert "int_missing" in problem["detail"] or "evt_missing" in problem["detail"]


async def test_every_change_is_audited_with_the_token_name_and_never_the_key(api: Api) -> None:
    _, created, _ = await api.call("POST", "/integrations", _new())
    iid = created["id"]
    await api.call("PATCH", f"/integrations/{iid}", {"status": "paused"})
    await api.call("PATCH", f"/integrations/{iid}", {"write_key": KEY + "2"})
    await api.call("PATCH", f"/integrations/{iid}", {"status": "active"})

    status, entries, _ = await api.call("GET", f"/audit?integration_id={iid}")
    assert status == 200
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("ops", "integration.resume"),
        ("ops", "integration.write_key"),
        ("ops", "integration.pause"),
        ("ops", "integration.create"),
    ]
    assert entries[1]["details"] == {"changes": {"write_key": "changed"}}
    assert KEY not in json.dumps(entries)


async def test_a_running_worker_picks_up_changes_without_restart(
    api: Api, database_url: str, sink: RunningSink, pool: asyncpg.Pool
) -> None:
    _, created, _ = await api.call("POST", "/integrations", _new())
    worker = asyncio.create_task(
        run_worker(
            settings_for(database_url, sink.url, poll_interval_seconds=0.05), until_idle=False
        )
    )
    try:
        await insert_events(pool, [event(1)])
        await wait_until(lambda: len(sink.sink.calls()) == 1, seconds=10)
        await api.call(
            "PATCH",
            f"/integrations/{created['id']}",
            {"events": {"Flow Viewed": {"rename": "survey_seen"}}},
        )
        await insert_events(pool, [event(2)])
        await wait_until(lambda: len(sink.sink.calls()) == 2, seconds=10)
        await api.call("PATCH", f"/integrations/{created['id']}", {"status": "paused"})
        await insert_events(pool, [event(3)])
        await asyncio.sleep(0.5)
        assert len(sink.sink.calls()) == 2
        await api.call("PATCH", f"/integrations/{created['id']}", {"status": "active"})
        await wait_until(lambda: len(sink.sink.calls()) == 3, seconds=10)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert [c["event"] for c in sink.sink.calls()] == ["Flow Viewed", "survey_seen", "survey_seen"]


async def test_replay_after_fixing_a_wrong_key_delivers_everything(
    api: Api, database_url: str, sink: RunningSink, pool: asyncpg.Pool
) -> None:
    sink.sink.write_keys = {KEY + "-right"}
    _, created, _ = await api.call("POST", "/integrations", _new())
    iid = created["id"]
    await insert_events(pool, [event(n) for n in range(1, 6)])
    settings = settings_for(database_url, sink.url)
    await run_until_idle(settings)
    assert {r["status"] for r in (await deliveries(pool)).values()} == {"failed"}

    _, stats, _ = await api.call("GET", f"/stats?integration_id={iid}")
    assert (stats[0]["failed"], stats[0]["pending"]) == (5, 0)
    assert "refused the write key" in stats[0]["last_error"]

    await api.call("PATCH", f"/integrations/{iid}", {"write_key": KEY + "-right"})
    status, changed, _ = await api.call(
        "POST", "/deliveries/replay", {"integration_id": iid, "status": "failed"}
    )
    assert (status, changed) == (200, {"count": 5})
    await run_until_idle(settings)
    rows = await deliveries(pool)
    assert {(r["status"], r["attempts"]) for r in rows.values()} == {("delivered", 1)}

    _, shown, _ = await api.call("GET", "/events/evt_1/deliveries")
    [delivery] = shown["deliveries"]
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in delivery["history"]] == [
        (1, "failed", 401),
        (1, "delivered", 200),
    ]
    assert all(a["duration_ms"] is not None for a in delivery["history"])
    assert delivery["message_id"] == "evt_1"


async def test_replay_can_be_narrowed_to_events_and_time(
    api: Api, database_url: str, sink: RunningSink, pool: asyncpg.Pool
) -> None:
    _, created, _ = await api.call("POST", "/integrations", _new())
    sink.sink.add_fault(Fault(status=403, times=-1))
    await insert_events(pool, [event(n) for n in range(1, 4)])
    await run_until_idle(settings_for(database_url, sink.url))
    body = {"integration_id": created["id"], "event_ids": ["evt_2"]}
    assert (await api.call("POST", "/deliveries/replay", body))[1] == {"count": 1}
    future = {"integration_id": created["id"], "since": "2999-01-01T00:00:00Z"}
    assert (await api.call("POST", "/deliveries/replay", future))[1] == {"count": 0}
    rows = await deliveries(pool)
    assert {e: r["status"] for e, r in rows.items()} == {
        "evt_1": "failed",
        "evt_2": "pending",
        "evt_3": "failed",
    }


async def test_discard_drops_a_backlog_and_replay_of_skipped_undoes_it(
    api: Api, pool: asyncpg.Pool
) -> None:
    _, created, _ = await api.call("POST", "/integrations", _new())
    await insert_events(pool, [event(n) for n in range(1, 4)])
    body = {"integration_id": created["id"], "status": "pending"}
    assert (await api.call("POST", "/deliveries/discard", body))[1] == {"count": 3}
    rows = await deliveries(pool)
    assert {r["status"] for r in rows.values()} == {"skipped"}
    assert all(r["last_error"].startswith("discarded by ops at ") for r in rows.values())

    undo = {"integration_id": created["id"], "status": "skipped"}
    assert (await api.call("POST", "/deliveries/replay", undo))[1] == {"count": 3}
    assert {r["status"] for r in (await deliveries(pool)).values()} == {"pending"}


async def test_test_call_reports_in_plain_words(api: Api, sink: RunningSink) -> None:
    _, created, _ = await api.call("POST", "/integrations", _new())
    status, result, _ = await api.call("POST", f"/integrations/{created['id']}/test")
    assert status == 200
    assert result["ok"] is True
    assert "does not prove the write key is right" in result["message"]
    [call] = sink.sink.calls()
    assert call["event"] == "Relay Test Event"
    assert call["messageId"] == result["message_id"]

    sink.sink.add_fault(Fault(status=401))
    _, result, _ = await api.call("POST", f"/integrations/{created['id']}/test")
    assert (result["ok"], result["status_code"]) == (False, 401)
    assert "Segment refused the write key" in result["message"]


async def test_the_admin_api_is_off_without_a_token(
    database_url: str, sink: RunningSink, pool: asyncpg.Pool
) -> None:
    settings = settings_for(database_url, sink.url, http_listen="127.0.0.1:0")
    async with Sender(base_url=settings.base_url, total_timeout=5, connect_timeout=2) as sender:
        with capture_logs() as logs:
            runner = await start_http(settings, pool, sender, None)
        assert runner is not None
        host, port = runner.addresses[0][:2]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{port}/api/v1/integrations") as resp,
            ):
                assert resp.status == 404
        finally:
            await runner.cleanup()
    assert [e["event"] for e in logs] == ["admin_api_disabled", "http_listening"]


def test_tokens_must_be_long_enough() -> None:
    from relay.config import load_settings
    from relay.errors import SettingsError

    with pytest.raises(SettingsError, match=r"RELAY_ADMIN_TOKEN: .*at least 16 characters"):
        load_settings(admin_token="short")


@pytest.mark.slow
async def test_schemathesis_finds_nothing(database_url: str) -> None:
    """Property-based checks of every documented operation against a live `relay admin`."""
    env = subprocess_env(
        RELAY_DATABASE_URL=database_url,
        RELAY_HTTP_LISTEN="127.0.0.1:0",
        RELAY_ADMIN_TOKEN=TOKEN,
    )
    server = await asyncio.create_subprocess_exec(
        *relay_command("admin"), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert server.stderr is not None
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = json.loads(await server.stderr.readline())
                if line["event"] == "http_listening":
                    url = line["url"]
        st = str(Path(sys.executable).parent / "st")
        result = await asyncio.create_subprocess_exec(
            st, "run", f"{url}/api/v1/openapi.json",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--checks", "all", "--max-examples", "15", "--seed", "7",
            "--generation-allow-x00", "false", "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await result.communicate()
    finally:
        server.terminate()
        await server.wait()
    report = out.decode()
    assert result.returncode == 0, report[-4000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in report, report[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", report), report[-2000:]
