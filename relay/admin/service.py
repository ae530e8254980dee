"""Every admin operation, shared by the CLI and the HTTP API. Each change runs in one
transaction together with its audit record, and takes effect at the next send."""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from pydantic import ValidationError

from relay.admin.models import (
    Attempt,
    AuditEntry,
    Changed,
    CheckResult,
    DeletedIntegration,
    DeliveryView,
    DiscardRequest,
    EventDeliveries,
    IntegrationCreate,
    IntegrationStats,
    IntegrationUpdate,
    IntegrationView,
    ReplayRequest,
    event_settings_with,
    resolve_endpoint,
)
from relay.errors import Conflict, NotFound
from relay.model import (
    EventSettings,
    IntegrationStatus,
    Region,
    describe_validation_error,
    iso_timestamp,
)
from relay.retry import describe_check
from relay.segment import build_check_call, encode_batch, encode_call, message_id
from relay.sender import Sender
from relay.store import Conn, insert_integration, sql

SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
SUFFIX_LENGTH = 6


def new_suffix() -> str:
    return "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))


def _settings_json(settings: EventSettings) -> Any:
    return orjson.loads(settings.model_dump_json())


class AdminService:
    """Admin operations on behalf of `actor` (a token name, or `cli:<user>`)."""

    def __init__(self, pool: asyncpg.Pool, actor: str) -> None:
        self.pool = pool
        self.actor = actor

    async def _audit(
        self, conn: Conn, action: str, integration_id: str | None, **details: Any
    ) -> None:
        await conn.execute(sql("admin_audit"), self.actor, action, integration_id, details)

    # -- integrations ------------------------------------------------------------------------

    async def create(self, new: IntegrationCreate) -> IntegrationView:
        """Only the first integration of an organization+app sends bare event ids as
        messageIds; the others get a fixed random suffix, chosen here and never changed."""
        name = new.name or f"Segment ({new.region.value})"
        async with self.pool.acquire() as conn, conn.transaction():
            integration_id = await insert_integration(
                conn,
                (
                    "int_" + secrets.token_hex(8),
                    new.organization_id,
                    new.app_id,
                    name,
                    new.write_key.get_secret_value(),
                    new.region.value,
                    new.endpoint,
                    _settings_json(new.events),
                    new_suffix(),
                ),
            )
            view = await self._view(conn, integration_id)
            await self._audit(
                conn,
                "integration.create",
                integration_id,
                organization_id=new.organization_id,
                app_id=new.app_id,
                name=name,
                region=new.region.value,
                endpoint=new.endpoint,
                events=_settings_json(new.events),
                write_key_hint=view.write_key_hint,
            )
        return view

    async def list_integrations(
        self, organization_id: str | None = None, app_id: str | None = None
    ) -> list[IntegrationView]:
        rows = await self.pool.fetch(sql("admin_integrations"), organization_id, app_id)
        return [IntegrationView.from_row(dict(r.items())) for r in rows]

    async def get(self, integration_id: str) -> IntegrationView:
        async with self.pool.acquire() as conn:
            return await self._view(conn, integration_id)

    async def _row(self, conn: Conn, integration_id: str, lock: bool = False) -> dict[str, Any]:
        query = sql("admin_integration") + (" FOR UPDATE" if lock else "")
        row = await conn.fetchrow(query, integration_id)
        if row is None:
            raise NotFound(f"no integration {integration_id!r}")
        return dict(row.items())

    async def _view(self, conn: Conn, integration_id: str) -> IntegrationView:
        return IntegrationView.from_row(await self._row(conn, integration_id))

    async def update(self, integration_id: str, patch: IntegrationUpdate) -> IntegrationView:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._row(conn, integration_id, lock=True)
            changes: dict[str, Any] = {}
            region = patch.region or Region(row["region"])
            endpoint = patch.endpoint
            if endpoint is None and region.value == row["region"]:
                endpoint = row["endpoint"]  # a new region without one gets its default
            try:
                endpoint = resolve_endpoint(region, endpoint)
            except ValueError as exc:
                raise Conflict(str(exc), field="endpoint") from None
            settings = EventSettings.model_validate(row["event_settings"])
            if patch.events:
                try:
                    settings = event_settings_with(settings, patch.events)
                except ValidationError as exc:
                    raise Conflict(describe_validation_error(exc), field="events") from None
            new = {
                "name": patch.name if patch.name is not None else row["name"],
                "write_key": (
                    patch.write_key.get_secret_value() if patch.write_key else row["write_key"]
                ),
                "region": region.value,
                "endpoint": endpoint,
                "status": (patch.status or IntegrationStatus(row["status"])).value,
                "event_settings": _settings_json(settings),
            }
            for field, value in new.items():
                if value != row[field]:
                    changes[field] = (
                        "changed" if field == "write_key" else {"from": row[field], "to": value}
                    )
            if changes:
                await conn.execute(
                    sql("admin_update_integration"),
                    integration_id,
                    new["name"],
                    new["write_key"],
                    new["region"],
                    new["endpoint"],
                    new["status"],
                    new["event_settings"],
                )
                await self._audit(conn, _update_action(changes), integration_id, changes=changes)
                await conn.execute(sql("notify"))
            return await self._view(conn, integration_id)

    async def delete(self, integration_id: str) -> DeletedIntegration:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(sql("admin_delete_integration"), integration_id)
            if row is None:
                raise NotFound(f"no integration {integration_id!r}")
            result = DeletedIntegration(
                id=integration_id,
                dropped_deliveries=row["deliveries"],
                dropped_pending=row["pending"],
            )
            await self._audit(
                conn, "integration.delete", integration_id, **result.model_dump(exclude={"id"})
            )
        return result

    async def check(
        self,
        integration_id: str,
        sender: Sender,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> CheckResult:
        """Send one clearly labelled test track call and say what Segment answered."""
        async with self.pool.acquire() as conn:
            row = await self._row(conn, integration_id)
        msg_id = f"relay-test-{uuid.uuid4().hex}"
        call = build_check_call(integration_id, msg_id, iso_timestamp(clock()))
        body = encode_batch([encode_call(call)], row["write_key"])
        response = await sender.post_batch(row["endpoint"], row["write_key"], body)
        ok, message = describe_check(response, row["endpoint"], row["write_key"], msg_id)
        return CheckResult(ok=ok, status_code=response.status, message_id=msg_id, message=message)

    # -- deliveries --------------------------------------------------------------------------

    async def stats(self, integration_id: str | None = None) -> list[IntegrationStats]:
        if integration_id is not None:
            await self.get(integration_id)
        rows = await self.pool.fetch(sql("admin_stats"), integration_id)
        return [IntegrationStats.model_validate(dict(r.items())) for r in rows]

    async def event_deliveries(self, event_id: str) -> EventDeliveries:
        async with self.pool.acquire() as conn:
            event = await conn.fetchrow(sql("admin_event"), event_id)
            if event is None:
                raise NotFound(f"no event {event_id!r} in relay.events")
            rows = await conn.fetch(sql("admin_event_deliveries"), event_id)
            attempts = await conn.fetch(sql("admin_event_attempts"), event_id)
        views = []
        for row in rows:
            history = [
                Attempt(
                    attempt=a["attempt"],
                    at=a["attempted_at"],
                    status_code=a["status_code"],
                    error=a["error"],
                    duration_ms=a["duration_ms"],
                    outcome=a["outcome"],
                )
                for a in attempts
                if a["integration_id"] == row["integration_id"]
            ]
            if row["status"] == "delivered":
                history.append(
                    Attempt(
                        attempt=row["attempts"],
                        at=row["last_attempt_at"],
                        status_code=row["last_status_code"],
                        error=None,
                        duration_ms=row["last_duration_ms"],
                        outcome="delivered",
                    )
                )
            views.append(
                DeliveryView(
                    integration_id=row["integration_id"],
                    integration_name=row["integration_name"],
                    message_id=message_id(event_id, row["message_id_suffix"]),
                    status=row["status"],
                    attempts=row["attempts"],
                    next_attempt_at=row["next_attempt_at"],
                    last_error=row["last_error"],
                    delivered_at=row["delivered_at"],
                    history=history,
                )
            )
        return EventDeliveries(**dict(event.items()), event_id=event["id"], deliveries=views)

    async def replay(self, request: ReplayRequest) -> Changed:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._row(conn, request.integration_id)
            count: int = await conn.fetchval(
                sql("admin_replay"),
                request.integration_id,
                request.status,
                request.since,
                request.event_ids,
            )
            if count:
                await conn.execute(sql("notify"))
            await self._audit(
                conn,
                "deliveries.replay",
                request.integration_id,
                count=count,
                **request.model_dump(mode="json", exclude={"integration_id"}, exclude_none=True),
            )
        return Changed(count=count)

    async def discard(self, request: DiscardRequest) -> Changed:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._row(conn, request.integration_id)
            reason = f"discarded by {self.actor} at {iso_timestamp(datetime.now(UTC))}"
            count = await conn.fetchval(
                sql("admin_discard"), request.integration_id, request.status, reason
            )
            await self._audit(
                conn,
                "deliveries.discard",
                request.integration_id,
                count=count,
                status=request.status,
            )
        return Changed(count=count)

    async def audit_log(
        self, integration_id: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        rows = await self.pool.fetch(sql("admin_audit_log"), integration_id, limit)
        return [AuditEntry.model_validate(dict(r.items())) for r in rows]


def _update_action(changes: dict[str, Any]) -> str:
    """A name for the change, e.g. integration.pause, for reading the audit log at a glance."""
    if set(changes) == {"status"}:
        return "integration.pause" if changes["status"]["to"] == "paused" else "integration.resume"
    if set(changes) == {"event_settings"}:
        return "integration.events"
    if set(changes) == {"write_key"}:
        return "integration.write_key"
    return "integration.update"
