"""Creating integrations: the validation both the CLI and (later) the admin API share."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Annotated

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from relay.model import REGION_ENDPOINTS, EventSettings, NonEmpty, Region, endpoint_error
from relay.store import Store

SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
SUFFIX_LENGTH = 6


def _usable_key(value: SecretStr) -> SecretStr:
    key = value.get_secret_value()
    if not key.strip():
        raise ValueError("must not be empty")
    if any(c.isspace() for c in key):
        raise ValueError("must not contain spaces or line breaks (was it pasted whole?)")
    return value


class NewIntegration(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    organization_id: NonEmpty
    app_id: NonEmpty
    write_key: Annotated[SecretStr, AfterValidator(_usable_key)]
    region: Region
    # Defaults to the region's first documented endpoint; must be one of the region's.
    endpoint: str = Field(None, validate_default=True)
    name: str | None = Field(None, max_length=200)
    event_settings: EventSettings = Field(default_factory=EventSettings)

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint_for_region(cls, value: str | None, info: ValidationInfo) -> str | None:
        region = info.data.get("region")
        if region is None:
            return value  # the region itself is invalid and reported
        if value is None:
            return REGION_ENDPOINTS[region][0]
        error = endpoint_error(region, value)
        if error:
            raise ValueError(error)
        return value.rstrip("/")


@dataclass(frozen=True)
class CreatedIntegration:
    id: str
    message_id_suffix: str | None


def new_suffix() -> str:
    return "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))


async def create_integration(store: Store, new: NewIntegration) -> CreatedIntegration:
    """Insert the integration. Only the first one of an organization+app sends bare event ids
    as messageIds; the others get a fixed random suffix, chosen here and never changed."""
    integration_id = "int_" + secrets.token_hex(8)
    name = new.name or f"Segment ({new.region.value})"
    settings = orjson.loads(new.event_settings.model_dump_json())
    row = await store.insert_integration(
        (
            integration_id,
            new.organization_id,
            new.app_id,
            name,
            new.write_key.get_secret_value(),
            new.region.value,
            new.endpoint,
            settings,
            new_suffix(),
        )
    )
    return CreatedIntegration(*row)
