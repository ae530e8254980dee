"""The `relay` command as people type it: one-line errors, no tracebacks, --help everywhere."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.store import SCHEMA_VERSION, with_database
from tests.conftest import _admin
from tests.helpers import relay_command, subprocess_env


def relay(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        relay_command(*args),
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
async def empty_database_url(server_url: str) -> AsyncIterator[str]:
    name = f"relay_empty_{os.getpid()}"
    await _admin(server_url, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    yield with_database(server_url, name)
    await _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_migrate_creates_the_schema_and_is_idempotent(empty_database_url: str) -> None:
    for _ in range(2):
        result = relay("migrate", "--database-url", empty_database_url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"schema relay is at version {SCHEMA_VERSION}"
    conn = await asyncpg.connect(empty_database_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'relay' "
            "ORDER BY 1"
        )
    finally:
        await conn.close()
    assert [t["table_name"] for t in tables] == [
        "attempts",
        "audit_log",
        "deliveries",
        "events",
        "integrations",
        "schema_version",
    ]


async def test_run_refuses_an_unmigrated_database(empty_database_url: str) -> None:
    result = relay("run", "--until-idle", RELAY_DATABASE_URL=empty_database_url)
    assert one_error_line(result) == (
        "relay: error: the database has no relay schema: run `relay migrate` first"
    )


async def test_run_on_a_taken_port_names_the_listen_setting(database_url: str) -> None:
    """A taken port is a settings problem: it used to be reported as PostgreSQL unreachable."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = relay(
            "run", RELAY_DATABASE_URL=database_url, RELAY_HTTP_LISTEN=listen,
            RELAY_LOG_LEVEL="error",
        )  # fmt: skip
    line = one_error_line(result)
    assert line.startswith(
        f"relay: error: invalid setting RELAY_HTTP_LISTEN: cannot listen on {listen}"
    )
    assert "PostgreSQL" not in line


def test_run_without_a_database_url_says_which_setting_is_missing() -> None:
    assert one_error_line(relay("run")) == (
        "relay: error: RELAY_DATABASE_URL is not set: give the PostgreSQL URL in "
        "RELAY_DATABASE_URL or --database-url"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "RELAY_LEASE_SECONDS",
            "soon",
            "invalid setting RELAY_LEASE_SECONDS: 'soon' is not a duration",
        ),
        (
            "RELAY_CONCURRENCY",
            "0",
            "invalid setting RELAY_CONCURRENCY: Input should be greater than",
        ),
        ("RELAY_RETRY_SCHEDULE", "1m,later", "invalid setting RELAY_RETRY_SCHEDULE: 'later'"),
        ("RELAY_ENDPOINT_OVERRIDES", "{not json", "invalid setting RELAY_ENDPOINT_OVERRIDES"),
        (
            "RELAY_ENDPOINT_OVERRIDES",
            '{"https://example.com": "http://127.0.0.1:1"}',
            "'https://example.com' is not an official Segment endpoint",
        ),
        ("RELAY_BATCH_MAX_EVENTS", "3000", "invalid setting RELAY_BATCH_MAX_EVENTS"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(variable: str, value: str, message: str) -> None:
    line = one_error_line(
        relay("run", **{"RELAY_DATABASE_URL": "postgresql://x/y", variable: value})
    )
    assert message in line


async def test_integrations_create_prints_the_id_and_never_the_key(database_url: str) -> None:
    key = "wk_create_SECRET_1234"
    common = ["--organization-id", "org_1", "--app-id", "app_1", "--write-key", key]
    plain = relay(
        "integrations", "create", *common, "--region", "eu", RELAY_DATABASE_URL=database_url
    )
    as_json = relay(
        "integrations",
        "create",
        *common,
        "--region",
        "global",
        "--json",
        "--rename",
        "Response Submitted=survey_responded",
        "--disable",
        "Flow Dismissed",
        RELAY_DATABASE_URL=database_url,
    )
    assert plain.returncode == 0
    assert as_json.returncode == 0
    assert plain.stdout.strip().startswith("int_")
    created = json.loads(as_json.stdout)
    assert created["id"].startswith("int_")
    assert created["write_key_hint"] == "…1234"
    assert key not in plain.stdout + plain.stderr + as_json.stdout + as_json.stderr

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT region, endpoint, event_settings::text FROM relay.integrations WHERE id = $1",
            created["id"],
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["region"], row["endpoint"]) == ("global", "https://api.segment.io")
    assert json.loads(row["event_settings"]) == {
        "Response Submitted": {"enabled": True, "rename": "survey_responded"},
        "Flow Dismissed": {"enabled": False, "rename": None},
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--region", "eu", "--endpoint", "https://api.segment.io"],
            "relay: error: invalid --endpoint: endpoint 'https://api.segment.io' is not a "
            "documented eu endpoint; use one of: https://events.eu1.segmentapis.com, "
            "https://eu1.api.segmentapis.com",
        ),
        (
            ["--region", "global", "--endpoint", "https://events.eu1.segmentapis.com"],
            "is not a documented global endpoint",
        ),
        (
            ["--region", "global", "--write-key", " "],
            "relay: error: invalid --write-key: must not be empty",
        ),
        (
            ["--region", "global", "--write-key", "two words"],
            "invalid --write-key: must be visible ASCII characters without spaces",
        ),
        (
            ["--region", "global", "--rename", "Flow Clicked=x"],
            "--rename: unknown event 'Flow Clicked'",
        ),
        (["--region", "global", "--rename", "Flow Viewed"], "write it as EVENT=NEW_NAME"),
        (["--region", "global", "--rename", "Flow Viewed="], "a rename must be a non-empty name"),
        (["--region", "global", "--rename", "Flow Viewed=" + "n" * 201], "at most 200 characters"),
        (
            ["--region", "global", "--rename", "Flow Viewed=Flow Dismissed"],
            "would both be sent as 'Flow Dismissed'",
        ),
        (["--region", "global", "--disable", "Flow Skipped"], "--disable: unknown event"),
    ],
)
def test_integrations_create_refuses_bad_input_in_one_line(
    database_url: str, extra: list[str], message: str
) -> None:
    args = ["integrations", "create", "--organization-id", "o", "--app-id", "a"]
    if "--write-key" not in extra:
        args += ["--write-key", "wk"]
    assert message in one_error_line(relay(*args, *extra, RELAY_DATABASE_URL=database_url))


def test_an_unknown_region_is_refused_by_the_parser() -> None:
    result = relay(
        "integrations",
        "create",
        "--organization-id",
        "o",
        "--app-id",
        "a",
        "--write-key",
        "k",
        "--region",
        "us",
    )
    assert result.returncode == 2
    assert "invalid choice: 'us'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["migrate"], ["run"], ["integrations"], ["integrations", "create"], ["sink"], ["demo"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = relay(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: relay")
    assert len(result.stdout.splitlines()) > 5


def test_demo_on_a_given_database_prints_what_segment_received(database_url: str) -> None:
    result = relay("demo", RELAY_DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Segment (the sink) received 3 track calls" in out
    assert '"event": "survey_responded"' in out
    assert '"event": "Flow Dismissed"' not in out
    assert "skipped" in out


def test_demo_with_no_database_starts_an_embedded_one() -> None:
    result = relay("demo")
    assert result.returncode == 0, result.stderr
    assert "Starting an embedded PostgreSQL" in result.stdout
    assert "Segment (the sink) received 3 track calls" in result.stdout


@pytest.mark.parametrize(
    "command", [["migrate"], ["run", "--until-idle"], ["integrations", "list"]]
)
def test_an_unreachable_database_is_one_line(command: list[str]) -> None:
    result = relay(*command, RELAY_DATABASE_URL="postgresql://postgres@127.0.0.1:9/relay")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("relay: error: cannot reach PostgreSQL (")
    assert line.endswith("): check RELAY_DATABASE_URL")
