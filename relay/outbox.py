"""Writing to the outbox from Python: the columns of relay.events and a bulk insert in one
statement (the demo, the benchmark and the tests write events the way a product would)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson

EVENT_COLUMNS = (
    "id", "organization_id", "app_id", "event_type", "occurred_at", "user_id", "anonymous_id",
    "survey_id", "response_id", "page_path", "page_referrer", "locale", "traits", "identities",
    "references",
)  # fmt: skip
JSON_COLUMNS = frozenset({"traits", "identities", "references"})


def _insert_sql() -> str:
    columns = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
    params = ", ".join(
        f"${i}::{'timestamptz' if c == 'occurred_at' else 'text'}[]"
        for i, c in enumerate(EVENT_COLUMNS, 1)
    )
    # JSON travels as text and is cast per element: asyncpg would read a JSON array inside a
    # jsonb[] parameter as a nested SQL array.
    select = ", ".join(
        f"c{i}::jsonb" if c in JSON_COLUMNS else f"c{i}" for i, c in enumerate(EVENT_COLUMNS)
    )
    names = ", ".join(f"c{i}" for i in range(len(EVENT_COLUMNS)))
    return (
        f"INSERT INTO relay.events ({columns}) SELECT {select} FROM unnest({params}) AS u({names})"
    )


INSERT_EVENTS = _insert_sql()


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def insert_events(
    conn: asyncpg.Pool | asyncpg.Connection, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert outbox rows in one statement; missing columns are NULL."""
    values = [
        [_json_text(row.get(c)) if c in JSON_COLUMNS else row.get(c) for row in rows]
        for c in EVENT_COLUMNS
    ]
    await conn.execute(INSERT_EVENTS, *values)
