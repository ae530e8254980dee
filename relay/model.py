"""The domain vocabulary: event types, regions and their endpoints, statuses, and the validated
shapes of an outbox event and an integration. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Protocol

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    SecretStr,
    StrictBool,
    TypeAdapter,
    ValidationError,
    model_validator,
)


class EventType(StrEnum):
    """The three lifecycle events the product emits (spec: "Event payload")."""

    FLOW_VIEWED = "Flow Viewed"
    FLOW_DISMISSED = "Flow Dismissed"
    RESPONSE_SUBMITTED = "Response Submitted"


class Region(StrEnum):
    GLOBAL = "global"
    EU = "eu"


# Segment never forwards across regions, so each region accepts only its own documented hosts.
# The first endpoint of a region is its default: Segment's HTTP API docs name events.eu1 as the
# EU tracking host; eu1.api.segmentapis.com is allowed by the spec but is the management API host.
REGION_ENDPOINTS: Mapping[Region, tuple[str, ...]] = {
    Region.GLOBAL: ("https://api.segment.io",),
    Region.EU: ("https://events.eu1.segmentapis.com", "https://eu1.api.segmentapis.com"),
}
EU_MANAGEMENT_API_ENDPOINT = "https://eu1.api.segmentapis.com"
ALL_ENDPOINTS: tuple[str, ...] = tuple(e for es in REGION_ENDPOINTS.values() for e in es)


class IntegrationStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    SKIPPED = "skipped"
    FAILED = "failed"


RENAME_MAX_LENGTH = 200
# Printable: no control characters (C0, DEL, C1) and no line or paragraph separators, with at
# least one visible character. One pattern for validation and for the published JSON schema.
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029"
RENAME_PATTERN = f"^[^{_CONTROL}]*[^\\s{_CONTROL}][^{_CONTROL}]*$"
_RENAME = re.compile(RENAME_PATTERN)


def endpoint_error(region: Region, endpoint: str) -> str | None:
    """Why `endpoint` cannot serve `region`, or None when it can."""
    allowed = REGION_ENDPOINTS[region]
    if endpoint.rstrip("/") in allowed:
        return None
    return (
        f"endpoint {endpoint!r} is not a documented {region.value} endpoint; "
        f"use one of: {', '.join(allowed)}"
    )


def _check_rename(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("a rename must be a non-empty name")
    if len(value) > RENAME_MAX_LENGTH:
        raise ValueError(f"a rename is at most {RENAME_MAX_LENGTH} characters")
    if not _RENAME.match(value):
        raise ValueError("a rename must be printable: no control characters or line breaks")
    return value


Rename = Annotated[
    str,
    AfterValidator(_check_rename),
    Field(json_schema_extra={"maxLength": RENAME_MAX_LENGTH, "pattern": RENAME_PATTERN}),
]


class EventSetting(BaseModel):
    """How one lifecycle event is forwarded by one integration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: StrictBool = True
    rename: Rename | None = None


class EventSettings(RootModel[dict[EventType, EventSetting]]):
    """Per-event renames and disables of one integration, stored as
    `{"Response Submitted": {"rename": "survey_responded"}}`; unlisted events use the defaults."""

    model_config = ConfigDict(frozen=True)

    root: dict[EventType, EventSetting] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_names(self) -> EventSettings:
        seen: dict[str, EventType] = {}
        for event_type in EventType:
            name = self.setting(event_type).rename or event_type.value
            if name in seen:
                raise ValueError(
                    f"{event_type.value!r} and {seen[name].value!r} would both be sent as {name!r}"
                )
            seen[name] = event_type
        return self

    def setting(self, event_type: EventType) -> EventSetting:
        return self.root.get(event_type, _DEFAULT_SETTING)

    def name_for(self, event_type: EventType) -> str | None:
        """The event name sent to Segment, or None when the event is disabled."""
        setting = self.setting(event_type)
        if not setting.enabled:
            return None
        return setting.rename or event_type.value


_DEFAULT_SETTING = EventSetting()


class Integration(BaseModel):
    """One Segment destination of one organization+app, as the worker sees it at send time."""

    model_config = ConfigDict(frozen=True)

    id: str
    organization_id: str
    app_id: str
    name: str = ""
    write_key: SecretStr
    region: Region
    endpoint: str
    status: IntegrationStatus = IntegrationStatus.ACTIVE
    event_settings: EventSettings = Field(default_factory=EventSettings)
    message_id_suffix: str | None = None

    @model_validator(mode="after")
    def _endpoint_matches_region(self) -> Integration:
        error = endpoint_error(self.region, self.endpoint)
        if error:
            raise ValueError(error)
        return self


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


# The schema says what the validator enforces, so API clients (and schemathesis) can know it.
NonEmpty = Annotated[
    str, AfterValidator(_non_empty), Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})
]


def _blank_is_absent(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


_SECONDS_Z = orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS
# Segment's time format, as the spec's example writes it: `2026-05-13T10:14:00.000Z`.
_SEGMENT_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def iso_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as in the spec's example (`2026-05-13T10:14:00.000Z`).
    Formatted by orjson: half the cost of datetime.isoformat."""
    seconds = orjson.dumps(moment.astimezone(UTC), option=_SECONDS_Z)  # b'"…T10:14:00Z"'
    return f"{seconds[1:-2].decode()}.{moment.microsecond // 1000:03d}Z"


def _segment_time(value: Any) -> Any:
    """An event's time in Segment's format. The claim has PostgreSQL write it (to_char), which
    is taken as written; an aware datetime or an ISO 8601 string is converted. PostgreSQL also
    keeps times no datetime can hold (years past 9999 or BC, infinity): the claim hands those
    over as PostgreSQL's text, and they are refused here, by value."""
    given = value
    if isinstance(value, str):
        if _SEGMENT_TIME.fullmatch(value):
            return value
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("must carry a time zone")
        value = _utc_text(value)
    if value is None:
        raise ValueError(f"{given!r} is not a time Segment can take (years 1 to 9999)")
    return value  # the str type check names anything else


def _utc_text(moment: datetime) -> str | None:
    """Segment's format of an aware datetime, or None when it falls outside years 1 to 9999 in
    UTC (year 1 at +02:00 does)."""
    try:
        return iso_timestamp(moment)
    except OverflowError:
        return None


OptionalText = Annotated[str | None, BeforeValidator(_blank_is_absent)]


_IS_STR = str.__instancecheck__
_CONTAINERS = (list, orjson.Fragment)


def _is_object(value: Any) -> bool:
    """A decoded JSON object: a dict with string keys."""
    return type(value) is dict and all(map(_IS_STR, value))


def _is_json_object(value: Any) -> bool:
    """What a JSON object column accepts: nothing, a decoded object, or PostgreSQL's text."""
    return value is None or type(value) is orjson.Fragment or _is_object(value)


def _is_json_container(value: Any) -> bool:
    """What a column that may also hold an array accepts."""
    return value is None or type(value) in _CONTAINERS or _is_object(value)


def _json_object(value: Any) -> Any:
    if _is_json_object(value):
        return value
    raise ValueError("must be a JSON object")


def _json_container(value: Any) -> Any:
    if _is_json_container(value):
        return value
    raise ValueError("must be a JSON object or array")


# A JSON column's value: decoded, or PostgreSQL's own JSON text wrapped as an orjson.Fragment,
# which orjson writes out verbatim (see parse_event).
JsonObject = Annotated[dict[str, Any] | orjson.Fragment | None, PlainValidator(_json_object)]
JsonContainer = Annotated[
    dict[str, Any] | list[Any] | orjson.Fragment | None, PlainValidator(_json_container)
]


@dataclass(slots=True, kw_only=True)
class Event:
    """One outbox row, validated. The outbox is permissive so the product's inserts never fail;
    this is where a malformed row is caught and named. A plain dataclass validated by pydantic
    (`parse_event`), so a row the database already typed costs no validation machinery; not
    frozen, which would double its construction cost (treat it as read-only)."""

    id: NonEmpty
    organization_id: NonEmpty
    app_id: NonEmpty
    event_type: EventType
    occurred_at: Annotated[str, BeforeValidator(_segment_time)]  # Segment's format, in UTC
    user_id: OptionalText = None
    anonymous_id: NonEmpty
    survey_id: OptionalText = None
    response_id: OptionalText = None
    page_path: OptionalText = None
    page_referrer: OptionalText = None
    locale: OptionalText = None
    traits: JsonObject = None
    identities: JsonContainer = None
    references: JsonContainer = None


_EVENT = TypeAdapter(Event)


class MalformedEvent(ValueError):
    """An outbox row that cannot become a track call; the message names each bad field."""


class Row(Protocol):
    """An outbox row as the database driver hands it over (a dict or an asyncpg Record): read
    by name, never copied on the fast path."""

    def get(self, key: str) -> Any | None: ...

    def items(self) -> Iterator[tuple[str, Any]]: ...


_OPTIONAL_TEXT = ("user_id", "survey_id", "response_id", "page_path", "page_referrer", "locale")
_EVENT_TYPES: Mapping[str, EventType] = {t.value: t for t in EventType}


# Each JSON column, and whether it may hold an array as well as an object.
JSON_COLUMNS = {"traits": False, "identities": True, "references": True}


def parse_event(row: Row | Mapping[str, Any]) -> Event:
    """Validate an outbox row, raising MalformedEvent with one readable line on failure.

    The claim reads the JSON columns as text (`traits_json`, …): an object or array is then
    sent exactly as stored, never decoded and re-encoded. Decoding lost what PostgreSQL keeps
    and Python does not (integers past 64 bits became floats), and it failed the whole claim on
    values orjson refuses (1e400, nesting deeper than 1024). It also cost more. Rows that carry
    decoded values under the plain names (tests, the demo, the bench baselines) are read as
    they are."""
    event = _well_formed(row)
    if event is not None:
        return event
    values = dict(row.items())
    for name, arrays in JSON_COLUMNS.items():
        text = values.pop(f"{name}_json", None)
        if text is not None:
            values[name] = _raw_json(text, arrays)
    try:
        return _EVENT.validate_python(values)
    except ValidationError as exc:
        raise MalformedEvent(describe_validation_error(exc)) from None


def _raw_json(text: str, arrays: bool) -> Any:
    """PostgreSQL's JSON text of one value: an object (or an array, where allowed) as a
    Fragment, null as None, and anything else as the text itself, which validation refuses."""
    first = text[:1]
    if first == "{" or (arrays and first == "["):
        return orjson.Fragment(text)
    return None if text == "null" else text


def _json_column(get: Any, name: str, arrays: bool) -> Any:
    text = get(f"{name}_json")
    return get(name) if text is None else _raw_json(text, arrays)


def _well_formed(row: Row | Mapping[str, Any]) -> Event | None:
    """The common case without pydantic's per-field machinery (a sixth of the relay's CPU when
    draining): plain types the database already guarantees, checked exactly as `Event` checks
    them. Anything unusual returns None and takes the full validation, which names the fault;
    a property test holds the two paths to the same answer."""
    get = row.get
    required: tuple[Any, ...] = (
        get("id"), get("organization_id"), get("app_id"), get("anonymous_id")
    )  # fmt: skip
    for value in required:
        if type(value) is not str or not value.strip():
            return None
    optional = [get(name) for name in _OPTIONAL_TEXT]
    for index, value in enumerate(optional):
        if value is not None:
            if type(value) is not str:
                return None
            if not value.strip():
                optional[index] = None
    event_id, organization_id, app_id, anonymous_id = required
    user_id, survey_id, response_id, page_path, page_referrer, locale = optional
    raw_type = get("event_type")
    event_type = _EVENT_TYPES.get(raw_type) if type(raw_type) is str else None
    occurred_at = get("occurred_at")
    if type(occurred_at) is datetime and occurred_at.tzinfo is not None:
        occurred_at = _utc_text(occurred_at)
    traits, identities, references = [
        _json_column(get, name, arrays) for name, arrays in JSON_COLUMNS.items()
    ]
    if (
        event_type is None
        or type(occurred_at) is not str
        or not _SEGMENT_TIME.fullmatch(occurred_at)
        or not _is_json_object(traits)
        or not _is_json_container(identities)
        or not _is_json_container(references)
    ):
        return None
    return Event(
        id=event_id,
        organization_id=organization_id,
        app_id=app_id,
        event_type=event_type,
        occurred_at=occurred_at,
        user_id=user_id,
        anonymous_id=anonymous_id,
        survey_id=survey_id,
        response_id=response_id,
        page_path=page_path,
        page_referrer=page_referrer,
        locale=locale,
        traits=traits,
        identities=identities,
        references=references,
    )


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every failing field, e.g. `event_type: Input should be 'Flow Viewed', …`."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "value"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
