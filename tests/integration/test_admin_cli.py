"""`relay integrations …`, `relay deliveries …` and `relay audit` as an admin types them."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import asyncpg
import pytest

from relay.sink import Fault
from tests.conftest import RunningSink
from tests.helpers import (
    GLOBAL,
    deliveries,
    event,
    insert_events,
    relay_command,
    run_until_idle,
    settings_for,
    subprocess_env,
)

KEY = "wk_cli_SECRET_abcdef9876"


def relay(
    database_url: str, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        relay_command(*args),
        env=subprocess_env(RELAY_DATABASE_URL=database_url, **env),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )
    assert KEY not in result.stdout + result.stderr, "a write key was printed"
    assert "Traceback" not in result.stderr
    return result


async def relay_async(
    database_url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Like relay(), without blocking the event loop that serves the in-process sink."""
    process = await asyncio.create_subprocess_exec(
        *relay_command(*args),
        env=subprocess_env(RELAY_DATABASE_URL=database_url, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    result = subprocess.CompletedProcess(args, process.returncode or 0, out.decode(), err.decode())
    assert KEY not in result.stdout + result.stderr, "a write key was printed"
    return result


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    return line


def create(database_url: str, *extra: str) -> str:
    return ok(
        relay(
            database_url, "integrations", "create", "--organization-id", "org_1", "--app-id",
            "app_1", "--region", "global", "--write-key", "-", *extra, stdin=KEY + "\n",
        )
    ).strip()  # fmt: skip


def test_integration_lifecycle(database_url: str) -> None:
    iid = create(database_url, "--name", "Prod")
    assert iid.startswith("int_")

    listed = ok(relay(database_url, "integrations", "list"))
    assert iid in listed
    assert "…9876" in listed

    shown = as_json(relay(database_url, "integrations", "show", iid, "--json"))
    assert (shown["name"], shown["write_key_hint"], shown["status"]) == ("Prod", "…9876", "active")

    view = as_json(relay(database_url, "integrations", "update", iid, "--region", "eu", "--json"))
    assert (view["region"], view["endpoint"]) == ("eu", "https://events.eu1.segmentapis.com")
    view = as_json(
        relay(
            database_url, "integrations", "update", iid, "--endpoint",
            "https://eu1.api.segmentapis.com", "--json",
        )
    )  # fmt: skip
    assert view["endpoint"] == "https://eu1.api.segmentapis.com"

    renamed = as_json(
        relay(
            database_url, "integrations", "rename-event", iid, "Response Submitted",
            "survey_responded", "--json",
        )
    )  # fmt: skip
    assert renamed["events"]["Response Submitted"]["sent_as"] == "survey_responded"
    disabled = as_json(
        relay(database_url, "integrations", "disable-event", iid, "Flow Dismissed", "--json")
    )
    assert disabled["events"]["Flow Dismissed"]["sent_as"] is None
    enabled = as_json(
        relay(database_url, "integrations", "enable-event", iid, "Flow Dismissed", "--json")
    )
    assert enabled["events"]["Flow Dismissed"]["sent_as"] == "Flow Dismissed"
    back = as_json(
        relay(
            database_url, "integrations", "rename-event", iid, "Response Submitted",
            "Response Submitted", "--json",
        )
    )  # fmt: skip
    assert back["events"]["Response Submitted"]["rename"] is None

    assert (
        as_json(relay(database_url, "integrations", "pause", iid, "--json"))["status"] == "paused"
    )
    assert (
        as_json(relay(database_url, "integrations", "resume", iid, "--json"))["status"] == "active"
    )

    audit = as_json(relay(database_url, "audit", "--integration", iid, "--json"))
    assert [e["action"] for e in audit] == [
        "integration.resume",
        "integration.pause",
        "integration.events",
        "integration.events",
        "integration.events",
        "integration.events",
        "integration.update",
        "integration.update",
        "integration.create",
    ]
    assert {e["actor"] for e in audit} == {audit[0]["actor"]}
    assert audit[0]["actor"].startswith("cli")

    assert "deleted" in ok(relay(database_url, "integrations", "delete", iid))
    assert error_line(relay(database_url, "integrations", "show", iid), 1) == (
        f"relay: error: no integration '{iid}'"
    )


def test_write_key_change_is_audited_without_the_key(database_url: str) -> None:
    iid = create(database_url)
    ok(relay(database_url, "integrations", "update", iid, "--write-key", "-", stdin=KEY + "x\n"))
    [entry, _] = as_json(relay(database_url, "audit", "--integration", iid, "--json"))
    assert entry["details"] == {"changes": {"write_key": "changed"}}
    shown = as_json(relay(database_url, "integrations", "show", iid, "--json"))
    assert shown["write_key_hint"] == "…876x"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["update", "ID", "--endpoint", "https://events.eu1.segmentapis.com"],
            "not a documented global endpoint",
        ),
        (["update", "ID"], "nothing to change"),
        (["update", "ID", "--write-key", ""], "invalid --write-key: must not be empty"),
        (
            ["rename-event", "ID", "Flow Viewed", "x" * 201],
            "invalid NEW_NAME: a rename is at most 200",
        ),
        (
            ["rename-event", "ID", "Flow Viewed", "Flow Dismissed"],
            "would both be sent as 'Flow Dismissed'",
        ),
        (
            ["rename-event", "ID", "Flow Viewed", "   "],
            "invalid NEW_NAME: a rename must be a non-empty name",
        ),
    ],
)
def test_bad_changes_are_refused_in_one_line(
    database_url: str, args: list[str], message: str
) -> None:
    iid = create(database_url)
    argv = [iid if a == "ID" else a for a in args]
    assert message in error_line(relay(database_url, "integrations", *argv))


def test_unknown_event_is_refused_by_the_parser(database_url: str) -> None:
    result = relay(database_url, "integrations", "disable-event", "int_x", "Flow Clicked")
    assert result.returncode == 2
    assert "invalid choice: 'Flow Clicked'" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["integrations", "show", "int_nope"],
        ["integrations", "pause", "int_nope"],
        ["integrations", "delete", "int_nope"],
        ["integrations", "test", "int_nope"],
        ["deliveries", "stats", "--integration", "int_nope"],
        ["deliveries", "show", "evt_nope"],
        ["deliveries", "replay", "--integration", "int_nope"],
        ["deliveries", "discard", "--integration", "int_nope", "--status", "pending"],
    ],
)
def test_unknown_ids_exit_1_with_one_line(database_url: str, args: list[str]) -> None:
    line = error_line(relay(database_url, *args), 1)
    assert line.startswith("relay: error: no ")
    assert "_nope" in line


async def test_deliveries_stats_show_replay_and_discard(
    database_url: str, sink: RunningSink, pool: asyncpg.Pool
) -> None:
    iid = create(database_url)
    await insert_events(pool, [event(n) for n in range(1, 5)])
    sink.sink.add_fault(Fault(status=401, times=-1, body="bad key"))
    await run_until_idle(settings_for(database_url, sink.url))

    [stats] = as_json(relay(database_url, "deliveries", "stats", "--json"))
    assert (stats["failed"], stats["delivered"], stats["pending"]) == (4, 0, 0)
    assert "refused the write key" in stats["last_error"]
    table = ok(relay(database_url, "deliveries", "stats"))
    assert table.splitlines()[0].split()[:3] == ["INTEGRATION", "STATUS", "PENDING"]

    shown = ok(relay(database_url, "deliveries", "show", "evt_1"))
    assert "failed" in shown
    assert "HTTP 401" in shown
    assert "messageId evt_1" in shown

    sink.sink.faults.clear()
    replayed = ok(
        relay(
            database_url,
            "deliveries",
            "replay",
            "--integration",
            iid,
            "--event",
            "evt_1",
            "--event",
            "evt_2",
        )
    )
    assert replayed.strip() == "re-queued 2 failed deliveries"
    await run_until_idle(settings_for(database_url, sink.url))
    rows = await deliveries(pool)
    assert [rows[f"evt_{n}"]["status"] for n in range(1, 5)] == [
        "delivered",
        "delivered",
        "failed",
        "failed",
    ]

    discarded = ok(
        relay(database_url, "deliveries", "discard", "--integration", iid, "--status", "failed")
    )
    assert discarded.startswith("discarded 2 failed deliveries")
    rows = await deliveries(pool)
    assert rows["evt_3"]["status"] == "skipped"

    history = as_json(relay(database_url, "deliveries", "show", "evt_1", "--json"))
    [delivery] = history["deliveries"]
    assert [(a["outcome"], a["status_code"]) for a in delivery["history"]] == [
        ("failed", 401),
        ("delivered", 200),
    ]


def test_replay_refuses_a_bad_time(database_url: str) -> None:
    iid = create(database_url)
    line = error_line(
        relay(database_url, "deliveries", "replay", "--integration", iid, "--since", "yesterday")
    )
    assert line.startswith("relay: error: invalid --since: Input should be a valid datetime")


async def test_integrations_test_says_what_segment_answered(
    database_url: str, sink: RunningSink
) -> None:
    iid = create(database_url)
    overrides = json.dumps({GLOBAL: sink.url})
    accepted = await relay_async(
        database_url, "integrations", "test", iid, RELAY_ENDPOINT_OVERRIDES=overrides
    )
    assert accepted.returncode == 0
    assert "accepted the test call (HTTP 200)" in accepted.stdout
    assert "does not prove the write key is right" in accepted.stdout
    assert "debugger" in accepted.stdout

    sink.sink.add_fault(Fault(status=403))
    refused = await relay_async(
        database_url, "integrations", "test", iid, RELAY_ENDPOINT_OVERRIDES=overrides
    )
    assert refused.returncode == 1
    assert "Segment refused the write key" in refused.stdout
    assert "another region" in refused.stdout

    unreachable = await relay_async(
        database_url, "integrations", "test", iid,
        RELAY_ENDPOINT_OVERRIDES=json.dumps({GLOBAL: "http://127.0.0.1:9"}),
    )  # fmt: skip
    assert unreachable.returncode == 1
    assert unreachable.stdout.startswith("no answer from api.segment.io")


@pytest.mark.parametrize(
    "command",
    [
        ["integrations", "list"], ["integrations", "show"], ["integrations", "update"],
        ["integrations", "delete"], ["integrations", "rename-event"],
        ["integrations", "enable-event"], ["integrations", "disable-event"],
        ["integrations", "pause"], ["integrations", "resume"], ["integrations", "test"],
        ["deliveries"], ["deliveries", "stats"], ["deliveries", "show"],
        ["deliveries", "replay"], ["deliveries", "discard"], ["audit"], ["admin"],
    ],
)  # fmt: skip
def test_every_admin_command_has_help(database_url: str, command: list[str]) -> None:
    out = ok(relay(database_url, *command, "--help"))
    assert out.startswith("usage: relay")
    assert len(out.splitlines()) > 6
