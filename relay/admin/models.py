"""What the admin CLI and HTTP API accept and return: one set of pydantic models for both.

A write key is write-only: it goes in through IntegrationCreate/IntegrationUpdate and comes out
only as `write_key_hint` (its last 4 characters)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from relay.model import (
    ALL_ENDPOINTS,
    REGION_ENDPOINTS,
    DeliveryStatus,
    EventSetting,
    EventSettings,
    EventType,
    IntegrationStatus,
    NonEmpty,
    Region,
    Rename,
    endpoint_error,
)

# Segment write keys are letters and digits; allow any visible ASCII, refuse what a paste adds.
WRITE_KEY_PATTERN = r"^[!-~]+$"
WRITE_KEY_MAX_LENGTH = 200


def _usable_key(value: SecretStr) -> SecretStr:
    key = value.get_secret_value()
    if not key.strip():
        raise ValueError("must not be empty")
    if len(key) > WRITE_KEY_MAX_LENGTH:
        raise ValueError(f"must be at most {WRITE_KEY_MAX_LENGTH} characters")
    if not re.match(WRITE_KEY_PATTERN, key):
        raise ValueError(
            "must be visible ASCII characters without spaces or line breaks (was it pasted whole?)"
        )
    return value


WriteKey = Annotated[
    SecretStr,
    AfterValidator(_usable_key),
    Field(
        json_schema_extra={
            "minLength": 1,
            "maxLength": WRITE_KEY_MAX_LENGTH,
            "pattern": WRITE_KEY_PATTERN,
            "writeOnly": True,
        }
    ),
]


def key_hint(write_key: str) -> str:
    """How a write key is shown anywhere: its last 4 characters, or nothing of a short key."""
    return f"…{write_key[-4:]}" if len(write_key) >= 12 else "…"


def storable_text_error(value: str) -> str | None:
    """Why PostgreSQL could not store this text, or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        error = storable_text_error(value)
        if error:
            raise ValueError(error)
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _storable(item)
    elif isinstance(value, list):
        for item in value:
            _storable(item)
    return value


class _Strict(BaseModel):
    """Request bodies: unknown fields refused, text trimmed and storable in PostgreSQL."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        return _storable(value)


# Documented endpoints, with or without a trailing slash.
EndpointText = Annotated[
    str,
    Field(json_schema_extra={"enum": sorted({*ALL_ENDPOINTS, *(e + "/" for e in ALL_ENDPOINTS)})}),
]


def _region_endpoint_rules(schema: dict[str, Any]) -> None:
    """Publish which endpoints each region accepts, as JSON Schema if/then rules."""
    schema["allOf"] = [
        {
            "if": {"properties": {"region": {"const": region.value}}, "required": ["region"]},
            "then": {
                "properties": {
                    "endpoint": {"enum": [*endpoints, *(e + "/" for e in endpoints), None]}
                }
            },
        }
        for region, endpoints in REGION_ENDPOINTS.items()
    ]


class IntegrationCreate(_Strict):
    """A new integration. The endpoint defaults to the region's first documented one."""

    model_config = ConfigDict(json_schema_extra=_region_endpoint_rules)

    organization_id: NonEmpty
    app_id: NonEmpty
    write_key: WriteKey
    region: Region
    endpoint: EndpointText | None = Field(None, validate_default=True)
    name: str | None = Field(None, max_length=200)
    events: EventSettings = Field(default_factory=EventSettings)

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint_for_region(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not isinstance(value, str):
            return value  # not text: the type check reports it
        return _check_endpoint(info.data.get("region"), value)


class EventPatch(_Strict):
    """Change one event's setting; `rename: null` goes back to the original name."""

    enabled: StrictBool | None = None
    rename: Rename | None = None


class IntegrationUpdate(_Strict):
    """Fields to change. A new region without an endpoint takes the region's default endpoint;
    events are merged into the current settings, event by event."""

    model_config = ConfigDict(json_schema_extra=_region_endpoint_rules)

    name: str | None = Field(None, max_length=200)
    write_key: WriteKey | None = None
    region: Region | None = None
    endpoint: EndpointText | None = None
    status: IntegrationStatus | None = None
    events: dict[EventType, EventPatch] | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint_of_given_region(cls, value: str | None, info: ValidationInfo) -> str | None:
        region = info.data.get("region")
        if value is not None and region is not None:
            _check_endpoint(region, value)
        return value


def _check_endpoint(region: Region | None, endpoint: str | None) -> str | None:
    if region is None:
        return endpoint  # the region is missing or invalid, and reported on its own
    if endpoint is None:
        return REGION_ENDPOINTS[region][0]
    error = endpoint_error(region, endpoint)
    if error:
        raise ValueError(error)
    return endpoint.rstrip("/")


def resolve_endpoint(region: Region, endpoint: str | None) -> str:
    """The endpoint an update ends with, or ValueError naming why it cannot serve the region."""
    resolved = _check_endpoint(region, endpoint)
    assert resolved is not None
    return resolved


class EventView(BaseModel):
    enabled: bool
    rename: str | None
    sent_as: str | None = Field(description="the name Segment receives; null when disabled")


class IntegrationView(BaseModel):
    id: str
    organization_id: str
    app_id: str
    name: str
    write_key_hint: str = Field(description="last 4 characters of the write key")
    region: Region
    endpoint: str
    status: IntegrationStatus
    events: dict[EventType, EventView]
    message_id_suffix: str | None = Field(
        description="appended to event ids in messageIds; null for the app's first integration"
    )
    rate_limited_until: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> IntegrationView:
        settings = EventSettings.model_validate(row["event_settings"])
        events = {
            e: EventView(
                enabled=settings.setting(e).enabled,
                rename=settings.setting(e).rename,
                sent_as=settings.name_for(e),
            )
            for e in EventType
        }
        return cls(
            **{k: v for k, v in row.items() if k in cls.model_fields},
            write_key_hint=key_hint(row["write_key"]),
            events=events,
        )


class DeletedIntegration(BaseModel):
    id: str
    dropped_deliveries: int = Field(description="deliveries removed with it, by status")
    dropped_pending: int


class IntegrationStats(BaseModel):
    integration_id: str
    name: str
    status: IntegrationStatus
    pending: int
    due: int = Field(description="pending and due now")
    scheduled: int = Field(description="pending, waiting for a retry or a lease")
    delivered: int
    skipped: int
    failed: int
    oldest_pending_at: datetime | None
    oldest_pending_age_seconds: float | None
    last_error: str | None
    last_error_at: datetime | None


class Attempt(BaseModel):
    attempt: int
    at: datetime | None
    status_code: int | None
    error: str | None
    duration_ms: int | None
    outcome: Literal["delivered", "retry", "failed"]


class DeliveryView(BaseModel):
    integration_id: str
    integration_name: str
    message_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    history: list[Attempt]


class EventDeliveries(BaseModel):
    event_id: str
    event_type: str
    organization_id: str
    app_id: str
    occurred_at: datetime
    deliveries: list[DeliveryView]


class ReplayRequest(_Strict):
    """Re-queue dead letters (or skipped events) of one integration, attempts reset to 0."""

    integration_id: NonEmpty
    status: Literal["failed", "skipped"] = "failed"
    since: AwareDatetime | None = Field(
        None, description="only deliveries last changed at or after this time"
    )
    event_ids: list[NonEmpty] | None = Field(None, max_length=10_000)


class DiscardRequest(_Strict):
    """Drop a backlog on purpose: the deliveries become `skipped`, with who and when in
    last_error (a replay with status=skipped brings them back)."""

    integration_id: NonEmpty
    status: Literal["pending", "failed"]


class Changed(BaseModel):
    count: int


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    integration_id: str | None
    details: dict[str, Any]


class CheckResult(BaseModel):
    ok: bool = Field(description="Segment accepted the call (which does not prove the key)")
    status_code: int | None
    message_id: str
    message: str


def event_settings_with(
    current: EventSettings, patches: dict[EventType, EventPatch]
) -> EventSettings:
    """Apply per-event patches; fields a patch leaves out keep their value. Validates the result
    (distinct names across events)."""
    merged: dict[str, dict[str, Any]] = {
        e.value: current.setting(e).model_dump() for e in EventType
    }
    for event, patch in patches.items():
        merged[event.value].update(patch.model_dump(exclude_unset=True))
    return EventSettings.model_validate(
        {e: s for e, s in merged.items() if s != EventSetting().model_dump()}
    )
